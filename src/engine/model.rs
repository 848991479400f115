//! The MLP: linear layers with ReLU between them and optional dropout, weights laid out as in
//! PyTorch (`weight: out × in`), initialised like PyTorch's `nn.Linear` from our seeded generator.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var, D};

use super::linear::Linear;
use super::rng::Rng;
use crate::spec::ArchSpec;

/// Layer widths from input to output.
pub fn widths(arch: &ArchSpec, features: usize, classes: usize) -> Vec<usize> {
    match arch {
        ArchSpec::Mlp { hidden, .. } => {
            std::iter::once(features).chain(hidden.iter().copied()).chain(std::iter::once(classes)).collect()
        }
    }
}

pub fn parameter_count(arch: &ArchSpec, features: usize, classes: usize) -> usize {
    widths(arch, features, classes).windows(2).map(|w| w[0] * w[1] + w[1]).sum()
}

/// Tensor names in exported files: `layers.{i}.weight`, `layers.{i}.bias`.
pub fn tensor_names(layers: usize) -> Vec<String> {
    (0..layers).flat_map(|i| [format!("layers.{i}.weight"), format!("layers.{i}.bias")]).collect()
}

#[derive(Debug, Clone)]
pub struct Mlp {
    /// Weight, bias per layer, in order.
    params: Vec<Tensor>,
    dropout: f32,
    /// Use the fused linear kernel where it exists (CPU, f32); off, the layers are composed of
    /// candle's ops, the reference the kernel is tested and benchmarked against.
    fused: bool,
}

impl Mlp {
    /// Fresh weights: U(-1/√fan_in, 1/√fan_in) for weights and biases, as `nn.Linear` does.
    pub fn init(arch: &ArchSpec, features: usize, classes: usize, rng: &mut Rng, device: &Device) -> Result<Self> {
        let mut params = Vec::new();
        for w in widths(arch, features, classes).windows(2) {
            let (fan_in, fan_out) = (w[0], w[1]);
            let bound = 1.0 / (fan_in as f32).sqrt();
            let weight: Vec<f32> = (0..fan_in * fan_out).map(|_| rng.uniform(-bound, bound)).collect();
            let bias: Vec<f32> = (0..fan_out).map(|_| rng.uniform(-bound, bound)).collect();
            params.push(Tensor::from_vec(weight, (fan_out, fan_in), device)?);
            params.push(Tensor::from_vec(bias, fan_out, device)?);
        }
        Ok(Self { params, dropout: dropout_of(arch), fused: true })
    }

    /// Rebuilds a model from named tensors, checking every shape against the architecture.
    pub fn from_named(
        arch: &ArchSpec,
        features: usize,
        classes: usize,
        mut named: HashMap<String, Tensor>,
        device: &Device,
    ) -> std::result::Result<Self, String> {
        let widths = widths(arch, features, classes);
        let mut params = Vec::new();
        for (i, w) in widths.windows(2).enumerate() {
            for (name, shape) in [
                (format!("layers.{i}.weight"), vec![w[1], w[0]]),
                (format!("layers.{i}.bias"), vec![w[1]]),
            ] {
                let tensor = named.remove(&name).ok_or_else(|| format!("tensor `{name}` is missing"))?;
                if tensor.dims() != shape.as_slice() {
                    let what = if i == 0 && shape.len() == 2 && tensor.dims().len() == 2 && tensor.dims()[1] != w[0] {
                        format!(" (its input width {} does not match the dataset's {features} features)", tensor.dims()[1])
                    } else {
                        String::new()
                    };
                    return Err(format!("tensor `{name}` has shape {:?}, the architecture needs {shape:?}{what}", tensor.dims()));
                }
                let tensor = tensor.to_dtype(DType::F32).and_then(|t| t.to_device(device)).map_err(|e| e.to_string())?;
                params.push(tensor);
            }
        }
        if let Some(extra) = named.keys().next() {
            return Err(format!("tensor `{extra}` is not part of the architecture {widths:?}"));
        }
        Ok(Self { params, dropout: dropout_of(arch), fused: true })
    }

    pub fn named(&self) -> Vec<(String, Tensor)> {
        tensor_names(self.params.len() / 2).into_iter().zip(self.params.iter().cloned()).collect()
    }

    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(Tensor::elem_count).sum()
    }

    /// Trainable variables over copies of these weights.
    pub fn to_vars(&self) -> Result<Vec<Var>> {
        self.params.iter().map(Var::from_tensor).collect()
    }

    /// A model reading the variables' current values; its forward records the autograd graph.
    pub fn from_vars(vars: &[Var], dropout: f32) -> Self {
        Self { params: vars.iter().map(|v| v.as_tensor().clone()).collect(), dropout, fused: true }
    }

    /// The same weights cut off from any graph, for frozen teachers and evaluation.
    pub fn detached(&self) -> Self {
        Self { params: self.params.iter().map(Tensor::detach).collect(), ..*self }
    }

    pub fn dropout(&self) -> f32 {
        self.dropout
    }

    pub fn with_fused_kernels(self, fused: bool) -> Self {
        Self { fused, ..self }
    }

    /// Logits for `x` (`batch × features`). With `dropout_rng`, hidden activations are dropped
    /// (inverted dropout); without it the model runs in evaluation mode.
    pub fn forward(&self, x: &Tensor, mut dropout_rng: Option<&mut Rng>) -> Result<Tensor> {
        let layers = self.params.len() / 2;
        let fused = self.fused && matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32;
        let mut h = x.clone();
        for i in 0..layers {
            let (w, b) = (&self.params[2 * i], &self.params[2 * i + 1]);
            let hidden = i + 1 < layers;
            h = if fused {
                Linear { relu: hidden, input_grad: h.track_op() }.forward(&h, w, b)?
            } else {
                let z = h.matmul(&w.t()?)?.broadcast_add(b)?;
                if hidden { z.relu()? } else { z }
            };
            if let (Some(rng), true) = (dropout_rng.as_deref_mut(), hidden && self.dropout > 0.0) {
                h = dropout_mask(&h, self.dropout, rng)?;
            }
        }
        Ok(h)
    }

    /// Logits for a whole split (`x` row-major), computed in batches.
    pub fn logits(&self, x: &[f32], features: usize, device: &Device) -> Result<Tensor> {
        let n = x.len() / features;
        let mut parts = Vec::new();
        for start in (0..n).step_by(1024) {
            let end = (start + 1024).min(n);
            let batch = Tensor::from_slice(&x[start * features..end * features], (end - start, features), device)?;
            parts.push(self.forward(&batch, None)?);
        }
        Tensor::cat(&parts, 0)
    }
}

fn dropout_of(arch: &ArchSpec) -> f32 {
    match arch {
        ArchSpec::Mlp { dropout, .. } => *dropout,
    }
}

fn dropout_mask(h: &Tensor, p: f32, rng: &mut Rng) -> Result<Tensor> {
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..h.elem_count()).map(|_| if rng.next_f32() < p { 0.0 } else { keep }).collect();
    h.mul(&Tensor::from_vec(mask, h.shape(), h.device())?)
}

/// Index of the largest logit per row.
pub fn predictions(logits: &Tensor) -> Result<Vec<u32>> {
    logits.argmax(D::Minus1)?.to_vec1::<u32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arch() -> ArchSpec {
        ArchSpec::Mlp { hidden: vec![5, 4], dropout: 0.0 }
    }

    #[test]
    fn parameters_and_shapes() {
        let m = Mlp::init(&arch(), 3, 2, &mut Rng::new(1), &Device::Cpu).unwrap();
        assert_eq!(m.parameter_count(), parameter_count(&arch(), 3, 2));
        assert_eq!(m.parameter_count(), 3 * 5 + 5 + 5 * 4 + 4 + 4 * 2 + 2);
        let x = Tensor::zeros((7, 3), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(m.forward(&x, None).unwrap().dims(), &[7, 2]);
    }

    #[test]
    fn named_round_trip_and_shape_errors() {
        let m = Mlp::init(&arch(), 3, 2, &mut Rng::new(1), &Device::Cpu).unwrap();
        let named: HashMap<String, Tensor> = m.named().into_iter().collect();
        let back = Mlp::from_named(&arch(), 3, 2, named.clone(), &Device::Cpu).unwrap();
        let x = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
        let diff = (m.forward(&x, None).unwrap() - back.forward(&x, None).unwrap()).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        let err = Mlp::from_named(&arch(), 4, 2, named, &Device::Cpu).unwrap_err();
        assert!(err.contains("does not match the dataset's 4 features"), "{err}");
    }

    #[test]
    fn every_parameter_gets_a_gradient() {
        let m = Mlp::init(&ArchSpec::Mlp { hidden: vec![8], dropout: 0.5 }, 3, 2, &mut Rng::new(1), &Device::Cpu).unwrap();
        let vars = m.to_vars().unwrap();
        let model = Mlp::from_vars(&vars, m.dropout());
        let x = Tensor::ones((4, 3), DType::F32, &Device::Cpu).unwrap();
        let loss = model.forward(&x, Some(&mut Rng::new(2))).unwrap().sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        for v in &vars {
            let g = grads.get(v.as_tensor()).expect("gradient");
            assert!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        }
    }
}
