//! The networks, one type per architecture (`mlp`, `conv`, `bert`), behind [`Net`], which holds
//! the tensors, their names and shapes (the [`Blueprint`]) and what training needs of any of them.
//! Weights are laid out and initialised as in PyTorch (`nn.Linear`, `nn.Conv2d`,
//! `nn.BatchNorm2d`), so exported files load there; inside, feature maps are channels-last.
//!
//! Names: `blocks.{i}.conv.weight|bias`, `blocks.{i}.bn.weight|bias|running_mean|running_var`,
//! `layers.{i}.weight|bias` (the head; the last is the classifier). The same `blocks.{i}` and
//! `layers.{i}` name a layer's output for intermediate distillation and for copying weights.

pub mod bert;
mod conv;
pub mod gguf;
pub mod llama;
mod mlp;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, TensorId, Var, D};

use crate::engine::data::ImageShape;
use crate::engine::kernels::handover::WeightGrads;
use crate::engine::rng::Rng;
use crate::spec::ArchSpec;
use bert::BertConfig;
use conv::ConvNet;
use mlp::Mlp;

/// Why a network cannot be built, or why tensors do not fit it. Callers match the cause: a
/// spec refused at submission, a checkpoint that no longer fits, a file of the wrong model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The architecture does not fit the data, or a config.json is not one this engine runs.
    #[error("{0}")]
    Architecture(String),
    /// A file is not in the format it should be (config.json, safetensors).
    #[error("{0}")]
    Format(String),
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {got:?}, the architecture needs {expected:?}{hint}")]
    Shape { name: String, got: Vec<usize>, expected: Vec<usize>, hint: String },
    #[error("tensor `{0}` is not part of the architecture")]
    UnknownTensor(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// What a network is fed: `features` per sample, laid out as an image when `image` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Input {
    pub features: usize,
    pub image: Option<ImageShape>,
}

/// Shapes derived from an architecture and its input, without any weights.
#[derive(Debug, Clone)]
pub struct Blueprint {
    /// Trainable tensors, in order.
    pub params: Vec<(String, Vec<usize>)>,
    /// Batch-norm running statistics, in order.
    pub buffers: Vec<(String, Vec<usize>)>,
    /// Each layer's output per sample: `[h, w, c]` for blocks, `[width]` for head layers.
    pub outputs: Vec<(String, Vec<usize>)>,
    /// The last block's output (h, w, c), which the head flattens.
    flatten: Option<(usize, usize, usize)>,
}

impl Blueprint {
    pub fn new(arch: &ArchSpec, input: Input, classes: usize) -> std::result::Result<Self, ModelError> {
        let mut params = Vec::new();
        let mut buffers = Vec::new();
        let mut outputs = Vec::new();
        let mut flatten = None;
        let mut width = input.features;
        if let ArchSpec::Transformer(_) = arch {
            return Err(ModelError::Architecture(
                "a transformer's shapes come from its config (Blueprint::transformer)".into(),
            ));
        }
        if let ArchSpec::Conv { blocks, .. } = arch {
            let image = input.image.ok_or_else(|| {
                ModelError::Architecture(
                    "a conv architecture needs image data (dataset source `idx` with 2-D or 3-D samples)".into(),
                )
            })?;
            let (mut h, mut w, mut c) = (image.height, image.width, image.channels);
            for (i, b) in blocks.iter().enumerate() {
                if h + 2 * b.padding < b.kernel || w + 2 * b.padding < b.kernel {
                    return Err(ModelError::Architecture(format!(
                        "blocks.{i}: its {}×{} kernel does not fit the {h}×{w} map it receives",
                        b.kernel, b.kernel
                    )));
                }
                params.push((format!("blocks.{i}.conv.weight"), vec![b.channels, c, b.kernel, b.kernel]));
                params.push((format!("blocks.{i}.conv.bias"), vec![b.channels]));
                if b.batch_norm {
                    params.push((format!("blocks.{i}.bn.weight"), vec![b.channels]));
                    params.push((format!("blocks.{i}.bn.bias"), vec![b.channels]));
                    buffers.push((format!("blocks.{i}.bn.running_mean"), vec![b.channels]));
                    buffers.push((format!("blocks.{i}.bn.running_var"), vec![b.channels]));
                }
                h = (h + 2 * b.padding - b.kernel) / b.stride + 1;
                w = (w + 2 * b.padding - b.kernel) / b.stride + 1;
                c = b.channels;
                if b.pool.is_some() {
                    if h < b.pool_size || w < b.pool_size {
                        return Err(ModelError::Architecture(format!(
                            "blocks.{i}: a {h}×{w} map is too small for {0}×{0} pooling",
                            b.pool_size
                        )));
                    }
                    h /= b.pool_size;
                    w /= b.pool_size;
                }
                outputs.push((format!("blocks.{i}"), vec![h, w, c]));
            }
            flatten = Some((h, w, c));
            width = h * w * c;
        }
        let hidden = arch.hidden();
        for (i, &out) in hidden.iter().chain(std::iter::once(&classes)).enumerate() {
            params.push((format!("layers.{i}.weight"), vec![out, width]));
            params.push((format!("layers.{i}.bias"), vec![out]));
            outputs.push((format!("layers.{i}"), vec![out]));
            width = out;
        }
        Ok(Self { params, buffers, outputs, flatten })
    }

    /// A transformer's tensors and layer outputs for sequences of `length` tokens.
    pub fn transformer(config: &BertConfig, length: usize) -> Self {
        Self { params: config.tensor_shapes(), buffers: Vec::new(), outputs: config.outputs(length), flatten: None }
    }

    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// A layer's output shape per sample, if the layer exists.
    pub fn output(&self, layer: &str) -> Option<&[usize]> {
        self.outputs.iter().find(|(n, _)| n == layer).map(|(_, s)| s.as_slice())
    }

    /// The trainable tensors of a layer (`blocks.2` → `blocks.2.conv.weight`, …).
    pub fn layer_params(&self, layer: &str) -> Vec<&(String, Vec<usize>)> {
        let prefix = format!("{layer}.");
        self.params.iter().chain(&self.buffers).filter(|(n, _)| n.starts_with(&prefix)).collect()
    }
}

#[derive(Debug, Clone)]
pub struct Net {
    arch: ArchSpec,
    input: Input,
    blueprint: Blueprint,
    params: Vec<Tensor>,
    buffers: Vec<Tensor>,
    /// Use the fused kernels where they exist (CPU, f32); off, layers are composed of candle's
    /// ops, the reference the kernels are tested and benchmarked against.
    fused: bool,
    /// What the tensors compute: one type per architecture.
    family: Family,
    /// From [`Net::frozen`]: its linear layers' weights stored for inference, by the id of the
    /// tensor each stands for. Every method that changes the tensors drops it.
    frozen: Option<Arc<FrozenWeights>>,
}

/// Tensors stored for `kernels::linear::FrozenLinear` (weights `in × out`), by the id of the
/// tensor each stands for.
type FrozenWeights = HashMap<TensorId, Tensor>;

/// The kernels a pass runs: the fused ones (CPU, f32) or candle's ops; in evaluation with
/// fused kernels a frozen net's stored weights, in training with fused kernels where they hand
/// over their weight gradients.
#[derive(Debug, Clone, Copy)]
struct Kernels<'a> {
    fused: bool,
    frozen: Option<&'a FrozenWeights>,
    handover: Option<&'a WeightGrads>,
}

impl<'a> Kernels<'a> {
    fn new(fused: bool, frozen: Option<&'a FrozenWeights>, handover: Option<&'a WeightGrads>) -> Self {
        let training = handover.is_some();
        Self { fused, frozen: frozen.filter(|_| fused && !training), handover: handover.filter(|_| fused) }
    }

    /// The stored inference copy of `tensor`, if the pass may use one and the net holds it.
    fn stored(&self, tensor: &Tensor) -> Option<&'a Tensor> {
        self.frozen?.get(&tensor.id())
    }

    /// A fused layer's destination for its weight gradients.
    fn handover(&self) -> Option<WeightGrads> {
        self.handover.cloned()
    }
}

/// The computation of each architecture, over the net's tensors in blueprint order.
#[derive(Debug, Clone)]
enum Family {
    Mlp(Mlp),
    Conv(ConvNet),
    /// A BERT-family encoder; its config comes from the teacher's folder.
    Bert(Arc<BertConfig>),
}

impl Family {
    /// The MLP or conv net an `mlp`/`conv` arch describes (its blueprint checked it fits).
    fn layered(arch: &ArchSpec, input: Input, blueprint: &Blueprint) -> Family {
        let head = Mlp { layers: arch.hidden().len() + 1, dropout: arch.dropout(), flatten: blueprint.flatten };
        match (arch, input.image) {
            (ArchSpec::Conv { blocks, .. }, Some(image)) => {
                Family::Conv(ConvNet { blocks: blocks.clone(), image, head })
            }
            _ => Family::Mlp(head),
        }
    }
}

/// One forward pass's bookkeeping: the layer outputs asked for, dropout's generator (training),
/// and the batch-norm statistics the batch updated.
struct Pass<'a, 'r> {
    want: &'a [&'a str],
    rng: Option<&'r mut Rng>,
    training: bool,
    kernels: Kernels<'a>,
    features: HashMap<String, Tensor>,
    buffers: Vec<Tensor>,
}

impl<'a, 'r> Pass<'a, 'r> {
    fn new(want: &'a [&'a str], rng: Option<&'r mut Rng>, kernels: Kernels<'a>) -> Self {
        Self { want, training: rng.is_some(), rng, kernels, features: HashMap::new(), buffers: Vec::new() }
    }

    /// Keeps a layer's output if it was asked for.
    fn keep(&mut self, name: String, output: &Tensor) {
        if self.want.contains(&name.as_str()) {
            self.features.insert(name, output.clone());
        }
    }

    /// In training the updated statistics, in evaluation the net's own.
    fn finish(self, logits: Tensor, buffers: &[Tensor], handover: WeightGrads) -> Output {
        let buffers = if self.training { self.buffers } else { buffers.to_vec() };
        Output { logits, features: self.features, buffers, handover }
    }
}

/// A forward pass's results: logits, the requested layer outputs, and, in training, the
/// batch-norm running statistics updated with this batch.
pub struct Output {
    pub logits: Tensor,
    pub features: HashMap<String, Tensor>,
    pub buffers: Vec<Tensor>,
    /// The weight gradients the pass's fused layers hand over in the backward.
    handover: WeightGrads,
}

impl Output {
    /// The gradients of `loss`, a function of this training pass: candle's backward plus the
    /// gradients the fused layers handed over. A training pass's loss must go through here,
    /// not `Tensor::backward`, or those weights get no gradient.
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        self.handover.backward(loss)
    }
}

impl Net {
    /// Fresh weights as PyTorch initialises them: U(±1/√fan_in) for linear and conv weights and
    /// biases; batch norm γ = 1, β = 0, running mean 0 and variance 1.
    pub fn init(
        arch: &ArchSpec,
        input: Input,
        classes: usize,
        rng: &mut Rng,
        device: &Device,
    ) -> std::result::Result<Self, ModelError> {
        let blueprint = Blueprint::new(arch, input, classes)?;
        let mut make = || -> Result<(Vec<Tensor>, Vec<Tensor>)> {
            let mut params = Vec::new();
            let mut fan_in = 0;
            for (name, shape) in &blueprint.params {
                let n: usize = shape.iter().product();
                let values: Vec<f32> = if name.contains(".bn.") {
                    vec![if name.ends_with("weight") { 1.0 } else { 0.0 }; n]
                } else {
                    if name.ends_with("weight") {
                        fan_in = shape[1..].iter().product();
                    }
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    (0..n).map(|_| rng.uniform(-bound, bound)).collect()
                };
                params.push(Tensor::from_vec(values, shape.as_slice(), device)?);
            }
            let buffers = blueprint
                .buffers
                .iter()
                .map(|(name, shape)| {
                    let fill = if name.ends_with("running_var") { 1.0f32 } else { 0.0 };
                    Tensor::full(fill, shape.as_slice(), device)
                })
                .collect::<Result<_>>()?;
            Ok((params, buffers))
        };
        let (params, buffers) = make()?;
        let family = Family::layered(arch, input, &blueprint);
        Ok(Self { arch: arch.clone(), input, blueprint, params, buffers, fused: true, family, frozen: None })
    }

    /// A transformer over packed text rows (`input.features` = 3 × length per input of the
    /// config's `input_slot`) from named tensors, checking every name and shape.
    pub fn transformer(
        arch: &ArchSpec,
        config: BertConfig,
        input: Input,
        named: HashMap<String, Tensor>,
        device: &Device,
    ) -> std::result::Result<Self, ModelError> {
        let blueprint = Blueprint::transformer(&config, input.features / (3 * config.input_slot.1));
        let net = Self {
            arch: arch.clone(),
            input,
            blueprint,
            params: Vec::new(),
            buffers: Vec::new(),
            fused: true,
            family: Family::Bert(Arc::new(config)),
            frozen: None,
        };
        net.with_named(named, device)
    }

    pub fn transformer_config(&self) -> Option<&BertConfig> {
        match &self.family {
            Family::Bert(config) => Some(config),
            _ => None,
        }
    }

    /// The same architecture with weights from named tensors (a file, a checkpoint, a best
    /// epoch), checking every name and shape.
    pub fn with_named(
        &self,
        mut named: HashMap<String, Tensor>,
        device: &Device,
    ) -> std::result::Result<Self, ModelError> {
        let blueprint = &self.blueprint;
        let mut take = |specs: &[(String, Vec<usize>)]| -> std::result::Result<Vec<Tensor>, ModelError> {
            specs
                .iter()
                .map(|(name, shape)| {
                    let tensor = named.remove(name).ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
                    if tensor.dims() != shape.as_slice() {
                        let hint =
                            if name == "layers.0.weight" && tensor.dims().len() == 2 && tensor.dims()[1] != shape[1] {
                                let source = match blueprint.flatten {
                                    None => format!("the dataset's {} features", shape[1]),
                                    Some(_) => format!("the {} values the conv blocks give", shape[1]),
                                };
                                format!(" (its input width {} does not match {source})", tensor.dims()[1])
                            } else {
                                String::new()
                            };
                        return Err(ModelError::Shape {
                            name: name.clone(),
                            got: tensor.dims().to_vec(),
                            expected: shape.clone(),
                            hint,
                        });
                    }
                    Ok(tensor.to_dtype(DType::F32).and_then(|t| t.to_device(device))?)
                })
                .collect()
        };
        let params = take(&blueprint.params)?;
        let buffers = take(&blueprint.buffers)?;
        if let Some(extra) = named.keys().next() {
            return Err(ModelError::UnknownTensor(extra.clone()));
        }
        Ok(Self { params, buffers, frozen: None, ..self.clone() })
    }

    /// Rebuilds a network from named tensors, checking every name and shape.
    pub fn from_named(
        arch: &ArchSpec,
        input: Input,
        classes: usize,
        named: HashMap<String, Tensor>,
        device: &Device,
    ) -> std::result::Result<Self, ModelError> {
        let blueprint = Blueprint::new(arch, input, classes)?;
        let family = Family::layered(arch, input, &blueprint);
        let (params, buffers) = (Vec::new(), Vec::new());
        let empty = Self { arch: arch.clone(), input, blueprint, params, buffers, fused: true, family, frozen: None };
        empty.with_named(named, device)
    }

    pub fn blueprint(&self) -> &Blueprint {
        &self.blueprint
    }

    pub fn arch(&self) -> &ArchSpec {
        &self.arch
    }

    pub fn input(&self) -> Input {
        self.input
    }

    /// Every tensor with its exported name: parameters, then running statistics.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        let names = self.blueprint.params.iter().chain(&self.blueprint.buffers).map(|(n, _)| n.clone());
        names.zip(self.params.iter().chain(&self.buffers).cloned()).collect()
    }

    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(Tensor::elem_count).sum()
    }

    /// Trainable variables over copies of the parameters.
    pub fn to_vars(&self) -> Result<Vec<Var>> {
        self.params.iter().map(Var::from_tensor).collect()
    }

    pub fn buffers(&self) -> &[Tensor] {
        &self.buffers
    }

    /// The same network reading `vars` (its forward records the autograd graph) and `buffers`.
    pub fn with_vars(&self, vars: &[Var], buffers: &[Tensor]) -> Self {
        let params = vars.iter().map(|v| v.as_tensor().clone()).collect();
        Self { params, buffers: buffers.to_vec(), frozen: None, ..self.clone() }
    }

    /// The same weights cut off from any graph, for frozen teachers and evaluation.
    pub fn detached(&self) -> Self {
        Self {
            params: self.params.iter().map(Tensor::detach).collect(),
            buffers: self.buffers.iter().map(Tensor::detach).collect(),
            frozen: None,
            ..self.clone()
        }
    }

    /// [`Net::detached`], with its linear layers' weights also stored transposed for inference
    /// on the CPU (`kernels::linear::FrozenLinear`; an MLP's or conv net's head, an encoder's
    /// layers): for inference whose weights stay fixed over many passes (`Net::logits` over a
    /// split, the report's latency runs).
    /// A net that is frozen already comes back as it is.
    pub fn frozen(&self) -> Result<Self> {
        if self.frozen.is_some() {
            return Ok(self.clone());
        }
        let net = self.detached();
        if !net.params.first().is_some_and(|p| p.device().is_cpu() && p.dtype() == DType::F32) {
            return Ok(net);
        }
        let weights = match &net.family {
            Family::Mlp(head) | Family::Conv(ConvNet { head, .. }) => {
                let transposed = |(i, w): (usize, &Tensor)| Ok((w.id(), head.input_weight(i, w)?.t()?.contiguous()?));
                net.head_weights().enumerate().map(transposed).collect::<Result<FrozenWeights>>()?
            }
            Family::Bert(config) => bert::frozen_weights(config, &net.named().into_iter().collect())?,
        };
        Ok(Self { frozen: Some(Arc::new(weights)), ..net })
    }

    /// The head's `layers.{i}.weight` tensors, in order.
    fn head_weights(&self) -> impl Iterator<Item = &Tensor> {
        let names = self.blueprint.params.iter().map(|(name, _)| name);
        names
            .zip(&self.params)
            .filter(|(name, _)| name.starts_with("layers.") && name.ends_with(".weight"))
            .map(|(_, t)| t)
    }

    pub fn with_fused_kernels(self, fused: bool) -> Self {
        Self { fused, ..self }
    }

    /// Replaces the tensors of the given names (used to copy layers from a teacher).
    pub fn with_tensors(mut self, replacements: &HashMap<String, Tensor>) -> Self {
        let names: Vec<String> =
            self.blueprint.params.iter().chain(&self.blueprint.buffers).map(|(n, _)| n.clone()).collect();
        let count = self.params.len();
        for (i, name) in names.iter().enumerate() {
            if let Some(t) = replacements.get(name) {
                if i < count {
                    self.params[i] = t.clone();
                } else {
                    self.buffers[i - count] = t.clone();
                }
            }
        }
        Self { frozen: None, ..self }
    }

    /// Runs `x` (`batch × features`). With `dropout_rng` the network trains: dropout is applied
    /// and batch norm uses (and updates) batch statistics; without it, evaluation mode.
    /// `want` lists layer outputs to return alongside the logits.
    pub fn forward(&self, x: &Tensor, dropout_rng: Option<&mut Rng>, want: &[&str]) -> Result<Output> {
        let fused = self.fused && matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32;
        let handover = WeightGrads::default();
        let kernels = Kernels::new(fused, self.frozen.as_deref(), dropout_rng.is_some().then_some(&handover));
        match &self.family {
            Family::Bert(config) => {
                let (logits, features) = bert::forward(config, &self.params, x, dropout_rng, want, kernels)?;
                Ok(Output { logits, features, buffers: Vec::new(), handover })
            }
            Family::Mlp(mlp) => {
                let mut pass = Pass::new(want, dropout_rng, kernels);
                let logits = mlp.forward(x.clone(), &mut self.params.iter(), &mut pass)?;
                Ok(pass.finish(logits, &self.buffers, handover.clone()))
            }
            Family::Conv(net) => {
                let mut pass = Pass::new(want, dropout_rng, kernels);
                let logits = net.forward(x, &mut self.params.iter(), &mut self.buffers.iter(), &mut pass)?;
                Ok(pass.finish(logits, &self.buffers, handover.clone()))
            }
        }
    }

    /// Logits for a whole split (`x` row-major), computed in batches.
    pub fn logits(&self, x: &[f32], device: &Device) -> Result<Tensor> {
        let net = self.frozen()?;
        let features = self.input.features;
        let n = x.len() / features;
        let mut parts = Vec::new();
        for start in (0..n).step_by(512) {
            let end = (start + 512).min(n);
            let batch = Tensor::from_slice(&x[start * features..end * features], (end - start, features), device)?;
            parts.push(net.forward(&batch, None, &[])?.logits);
        }
        Tensor::cat(&parts, 0)
    }
}

fn next<'a>(it: &mut impl Iterator<Item = &'a Tensor>) -> Result<&'a Tensor> {
    it.next().ok_or_else(|| candle_core::Error::Msg("network has fewer tensors than its architecture".into()))
}

/// Index of the largest logit per row.
pub fn predictions(logits: &Tensor) -> Result<Vec<u32>> {
    logits.argmax(D::Minus1)?.to_vec1::<u32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mlp() -> ArchSpec {
        ArchSpec::Mlp { hidden: vec![5, 4], dropout: 0.0 }
    }

    fn flat(features: usize) -> Input {
        Input { features, image: None }
    }

    fn conv() -> (ArchSpec, Input) {
        let arch: ArchSpec = serde_json::from_value(serde_json::json!({
            "kind": "conv",
            "blocks": [
                {"channels": 3, "kernel": 3, "padding": 1, "batch_norm": true, "pool": "max"},
                {"channels": 4, "kernel": 3, "stride": 2, "padding": 1, "pool": "avg"}
            ],
            "hidden": [6],
            "dropout": 0.2
        }))
        .unwrap();
        (arch, Input { features: 2 * 9 * 8, image: Some(ImageShape { channels: 2, height: 9, width: 8 }) })
    }

    #[test]
    fn parameters_and_shapes() {
        let m = Net::init(&mlp(), flat(3), 2, &mut Rng::new(1), &Device::Cpu).unwrap();
        assert_eq!(m.parameter_count(), 3 * 5 + 5 + 5 * 4 + 4 + 4 * 2 + 2);
        let x = Tensor::zeros((7, 3), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(m.forward(&x, None, &[]).unwrap().logits.dims(), &[7, 2]);
        // 9×8 → conv 9×8 → max pool 4×4 → stride-2 conv 2×2 → avg pool 1×1.
        let (arch, input) = conv();
        let bp = Blueprint::new(&arch, input, 10).unwrap();
        assert_eq!(bp.output("blocks.0"), Some(&[4usize, 4, 3][..]));
        assert_eq!(bp.output("blocks.1"), Some(&[1usize, 1, 4][..]));
        assert_eq!(bp.parameter_count(), (3 * 2 * 9 + 3 + 3 + 3) + (4 * 3 * 9 + 4) + (4 * 6 + 6) + (6 * 10 + 10));
    }

    #[test]
    fn conv_maps_too_small_are_refused_with_the_block_named() {
        let (arch, _) = conv();
        let tiny = Input { features: 2 * 5 * 5, image: Some(ImageShape { channels: 2, height: 5, width: 5 }) };
        let err = Blueprint::new(&arch, tiny, 10).unwrap_err().to_string();
        assert!(err.starts_with("blocks.1"), "{err}");
        let err = Blueprint::new(&arch, flat(72), 10).unwrap_err().to_string();
        assert!(err.contains("needs image data"), "{err}");
    }

    #[test]
    fn named_round_trip_and_shape_errors() {
        let m = Net::init(&mlp(), flat(3), 2, &mut Rng::new(1), &Device::Cpu).unwrap();
        let named: HashMap<String, Tensor> = m.named().into_iter().collect();
        let back = Net::from_named(&mlp(), flat(3), 2, named.clone(), &Device::Cpu).unwrap();
        let x = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
        let diff = (m.forward(&x, None, &[]).unwrap().logits - back.forward(&x, None, &[]).unwrap().logits).unwrap();
        assert_eq!(diff.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let err = Net::from_named(&mlp(), flat(4), 2, named, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("input width 3 does not match"), "{err}");
    }

    /// Every parameter of a conv net with batch norm, pooling and dropout gets a gradient, the
    /// A frozen net (head weights stored transposed, a conv head's flattening folded in) gives
    /// the detached net's logits; once its tensors are replaced it computes with the new ones.
    #[test]
    fn frozen_nets_match_detached_ones_and_drop_replaced_weights() {
        let (conv_arch, conv_input) = conv();
        let mlp_input = Input { features: 7, image: None };
        for (arch, input) in [(mlp(), mlp_input), (conv_arch, conv_input)] {
            let net = Net::init(&arch, input, 3, &mut Rng::new(1), &Device::Cpu).unwrap();
            let x = Tensor::randn(0f32, 1.0, (5, input.features), &Device::Cpu).unwrap();
            let logits = |n: &Net| n.forward(&x, None, &[]).unwrap().logits;
            let diff =
                |a: Tensor, b: Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let frozen = net.frozen().unwrap();
            assert_eq!(
                frozen.frozen.as_ref().map(|w| w.len()),
                Some(arch.hidden().len() + 1),
                "{arch:?}: a head layer unfrozen"
            );
            assert!(diff(logits(&frozen), logits(&net)) < 1e-5, "{arch:?}: frozen logits differ");
            let other = Net::init(&arch, input, 3, &mut Rng::new(9), &Device::Cpu).unwrap();
            let replaced: HashMap<String, Tensor> = other.named().into_iter().collect();
            let again = frozen.frozen().unwrap();
            assert!(Arc::ptr_eq(again.frozen.as_ref().unwrap(), frozen.frozen.as_ref().unwrap()), "frozen twice");
            assert!(frozen.detached().frozen.is_none(), "{arch:?}: detached kept stored weights");
            let swapped = frozen.with_tensors(&replaced);
            assert!(swapped.frozen.is_none(), "{arch:?}: replaced tensors kept stored weights");
            assert!(diff(logits(&swapped), logits(&other)) < 1e-5, "{arch:?}: a stale frozen weight was used");
        }
    }

    /// A frozen encoder stores five tensors a layer (QKV side by side and its biases, the
    /// attention output, both feed-forward weights) and gives the detached encoder's logits.
    #[test]
    fn frozen_encoders_store_their_layers_and_match_detached_ones() {
        let config = BertConfig::from_hf(&serde_json::json!({
            "model_type": "bert", "vocab_size": 30, "hidden_size": 8, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 16,
            "type_vocab_size": 2, "hidden_act": "gelu", "num_labels": 3,
        }))
        .unwrap();
        let named = config.init(&mut Rng::new(3), &Device::Cpu).unwrap();
        let (length, arch) = (6, ArchSpec::Transformer(crate::spec::TransformerArch::default()));
        let input = Input { features: 3 * length, image: None };
        let net = Net::transformer(&arch, config, input, named, &Device::Cpu).unwrap();
        let ids: Vec<u32> = (0..2 * length as u32).map(|i| i * 7 % 30).collect();
        let mask = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0];
        let x = bert::pack(&ids, &[0; 12], &mask, length);
        let x = Tensor::from_vec(x, (2, 3 * length), &Device::Cpu).unwrap();
        let frozen = net.frozen().unwrap();
        assert_eq!(frozen.frozen.as_ref().map(|w| w.len()), Some(2 * 5));
        let logits = |n: &Net| n.forward(&x, None, &[]).unwrap().logits;
        let diff = (logits(&frozen) - logits(&net)).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5, "frozen logits differ by {diff}");
    }

    /// fused and the reference paths agree, and training moves the running statistics.
    #[test]
    fn conv_net_trains_through_every_parameter() {
        let (arch, input) = conv();
        let bp = Blueprint::new(&arch, input, 3).unwrap();
        let net = Net::init(&arch, input, 3, &mut Rng::new(1), &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1.0, (5, input.features), &Device::Cpu).unwrap();
        let reference = net.clone().with_fused_kernels(false);
        let (a, b) = (net.forward(&x, None, &[]).unwrap().logits, reference.forward(&x, None, &[]).unwrap().logits);
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "fused and reference paths differ by {diff}");
        let vars = net.to_vars().unwrap();
        let model = net.with_vars(&vars, net.buffers());
        let out = model.forward(&x, Some(&mut Rng::new(2)), &["blocks.0", "layers.0"]).unwrap();
        assert_eq!(out.features["blocks.0"].dims(), &[5, 4, 4, 3]);
        assert_eq!(out.features["layers.0"].dims(), &[5, 6]);
        let moved = (&out.buffers[0] - &net.buffers()[0])
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(moved > 0.0, "running mean did not move");
        let grads = out.backward(&out.logits.sqr().unwrap().sum_all().unwrap()).unwrap();
        for (v, (name, _)) in vars.iter().zip(&bp.params) {
            let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
            assert!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "{name}: zero gradient");
        }
    }
}
