//! BERT-family encoders (BERT, RoBERTa, DistilBERT) with their sequence-classification heads,
//! read from and written as Hugging Face folders.
//!
//! Built only from ops that have a backward pass: candle's fused `layer_norm` and
//! `softmax_last_dim` have none, so a model built on them trains only its head. On the CPU the
//! encoder runs on the engine's own ops (`attention.rs`, `norm::add_layer_norm`,
//! `activation::linear_gelu`, the fused linear); elsewhere, and with fused kernels off, on
//! candle ops composed here. `tests/text.rs` checks logits, hidden states, attention maps and
//! gradients against `transformers` through both.
//!
//! A text sample enters the network as one row of `3 × length` numbers: token ids, segment ids
//! and the attention mask, packed as f32 (exact below 2²⁴), so text runs through the same
//! training loop, caches and reports as every other dataset.
//!
//! Tensor names are Hugging Face's without the base model's prefix (`bert.`, `roberta.`,
//! `distilbert.`), in the order the forward pass reads them. Layer outputs for distillation:
//! `embeddings` and `layers.{i}` (hidden states, `length × hidden`), `attentions.{i}` (attention
//! probabilities, `heads × length × length`), `pooled` (the masked mean of the last hidden state).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, TensorId, D};
use serde_json::{json, Value};

use crate::engine::files::parse_safetensors;
use crate::engine::kernels::activation::linear_gelu;
use crate::engine::kernels::attention::SelfAttention;
use crate::engine::kernels::embedding::lookup;
use crate::engine::kernels::linear::{Activation as LinearActivation, FrozenLinear, Linear};
use crate::engine::kernels::norm;
use crate::engine::models::{Kernels, ModelError};
use crate::engine::rng::dropout_multipliers;
use crate::engine::rng::Rng;
use crate::spec::{MAX_LAYERS, MAX_LAYER_WIDTH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bert,
    Roberta,
    DistilBert,
}

impl Family {
    fn prefix(self) -> &'static str {
        match self {
            Family::Bert => "bert.",
            Family::Roberta => "roberta.",
            Family::DistilBert => "distilbert.",
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
            Family::DistilBert => "distilbert",
        }
    }

    fn class_name(self) -> &'static str {
        match self {
            Family::Bert => "Bert",
            Family::Roberta => "Roberta",
            Family::DistilBert => "DistilBert",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Gelu,
    GeluTanh,
    Relu,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub max_positions: usize,
    /// 0 for DistilBERT, which has no segment embeddings.
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: u32,
    pub hidden_dropout: f32,
    pub attention_dropout: f32,
    pub classifier_dropout: f32,
    pub activation: Activation,
    pub initializer_range: f32,
    /// Classes of the sequence-classification head; 0 for an encoder without one.
    pub num_labels: usize,
    /// The config.json it was read from; exports keep its other keys.
    pub raw: Value,
    /// A student's trimmed vocabulary: inputs carry the teacher's token ids, which it maps to
    /// its own rows.
    pub trimmed: Option<Trimmed>,
    /// Which of the packed inputs in a row this model reads, of how many: a job whose teacher
    /// and student tokenise with their own tokenizers packs both, `(0, 2)` and `(1, 2)`.
    pub input_slot: (usize, usize),
}

/// A vocabulary cut to the tokens a job's training texts use.
#[derive(Debug, Clone, PartialEq)]
pub struct Trimmed {
    /// The teacher's ids of the kept tokens, in increasing order: row `i` is `kept[i]`.
    pub kept: Arc<[u32]>,
    /// Each teacher id's row; a dropped token maps to the unknown token's.
    pub map: Arc<[u32]>,
}

impl Trimmed {
    /// Keeps `used` (any order, repeats allowed) and `unknown`, out of `vocabulary` ids.
    pub fn new(used: impl IntoIterator<Item = u32>, unknown: u32, vocabulary: usize) -> Self {
        let mut keep = vec![false; vocabulary];
        for id in used.into_iter().chain([unknown]) {
            keep[id as usize] = true;
        }
        let kept: Vec<u32> = (0..vocabulary as u32).filter(|&id| keep[id as usize]).collect();
        let row = |id: u32| kept.binary_search(&id).ok().map(|r| r as u32);
        let unknown_row = row(unknown).expect("the unknown token is kept");
        let map = (0..vocabulary as u32).map(|id| row(id).unwrap_or(unknown_row)).collect();
        Self { kept: kept.into(), map }
    }
}

fn field<'a>(raw: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names.iter().find_map(|n| raw.get(*n).filter(|v| !v.is_null()))
}

const MAX_VOCABULARY: usize = 1 << 24;
const MAX_POSITIONS: usize = 1 << 16;
const MAX_TOKEN_TYPES: usize = 1 << 10;

impl BertConfig {
    /// Reads a Hugging Face `config.json`; errors say which key is missing or unsupported.
    pub fn from_hf(raw: &Value) -> std::result::Result<Self, ModelError> {
        Self::parse_hf(raw).map_err(ModelError::Architecture)
    }

    fn parse_hf(raw: &Value) -> std::result::Result<Self, String> {
        let model_type = raw.get("model_type").and_then(Value::as_str).ok_or("config.json has no `model_type`")?;
        let family = match model_type {
            "bert" => Family::Bert,
            "roberta" => Family::Roberta,
            "distilbert" => Family::DistilBert,
            other => {
                return Err(format!("model_type `{other}` is not supported; expected bert, roberta or distilbert"))
            }
        };
        let usize_of = |names: &[&str]| -> std::result::Result<usize, String> {
            field(raw, names)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| format!("config.json lacks `{}`", names[0]))
        };
        let f32_or = |names: &[&str], default: f64| field(raw, names).and_then(Value::as_f64).unwrap_or(default) as f32;
        let distil = family == Family::DistilBert;
        let act = field(raw, &["hidden_act", "activation"]).and_then(Value::as_str).unwrap_or("gelu");
        let activation = match act {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => return Err(format!("activation `{other}` is not supported; expected gelu, gelu_new or relu")),
        };
        let hidden_dropout = f32_or(&["hidden_dropout_prob", "dropout"], 0.1);
        let num_labels = match raw.get("id2label").and_then(Value::as_object) {
            Some(map) => map.len(),
            None => field(raw, &["num_labels"]).and_then(Value::as_u64).unwrap_or(0) as usize,
        };
        let config = Self {
            family,
            vocab_size: usize_of(&["vocab_size"])?,
            hidden_size: usize_of(if distil { &["dim"] } else { &["hidden_size"] })?,
            num_layers: usize_of(if distil { &["n_layers"] } else { &["num_hidden_layers"] })?,
            num_heads: usize_of(if distil { &["n_heads"] } else { &["num_attention_heads"] })?,
            intermediate_size: usize_of(if distil { &["hidden_dim"] } else { &["intermediate_size"] })?,
            max_positions: usize_of(&["max_position_embeddings"])?,
            type_vocab_size: if distil {
                0
            } else {
                field(raw, &["type_vocab_size"]).and_then(Value::as_u64).unwrap_or(2) as usize
            },
            layer_norm_eps: if distil {
                1e-12
            } else {
                field(raw, &["layer_norm_eps"]).and_then(Value::as_f64).unwrap_or(1e-12)
            },
            pad_token_id: field(raw, &["pad_token_id"])
                .and_then(Value::as_u64)
                .unwrap_or(if family == Family::Roberta { 1 } else { 0 }) as u32,
            hidden_dropout,
            attention_dropout: f32_or(&["attention_probs_dropout_prob", "attention_dropout"], 0.1),
            classifier_dropout: f32_or(&["classifier_dropout", "seq_classif_dropout"], hidden_dropout as f64),
            activation,
            initializer_range: f32_or(&["initializer_range"], 0.02),
            num_labels,
            raw: raw.clone(),
            trimmed: None,
            input_slot: (0, 1),
        };
        config.check_sizes()?;
        Ok(config)
    }

    /// Sizes that fit together; for a student config built from overrides too.
    pub fn check(&self) -> std::result::Result<(), ModelError> {
        self.check_sizes().map_err(ModelError::Architecture)
    }

    fn check_sizes(&self) -> std::result::Result<(), String> {
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(format!(
                "hidden size {} is not a multiple of the {} attention heads",
                self.hidden_size, self.num_heads
            ));
        }
        if self.num_layers == 0 || self.hidden_size == 0 || self.intermediate_size == 0 || self.vocab_size == 0 {
            return Err("layers, hidden size, intermediate size and vocabulary must be positive".into());
        }
        // A config.json is user input: sizes past any real encoder would only make the service
        // loop over or allocate for them before the memory estimate could refuse the job.
        let limits = [
            ("layers", self.num_layers, MAX_LAYERS),
            ("hidden size", self.hidden_size, MAX_LAYER_WIDTH),
            ("intermediate size", self.intermediate_size, MAX_LAYER_WIDTH),
            ("vocabulary", self.vocab_size, MAX_VOCABULARY),
            ("positions", self.max_positions, MAX_POSITIONS),
            ("token types", self.type_vocab_size, MAX_TOKEN_TYPES),
        ];
        if let Some((what, value, max)) = limits.into_iter().find(|(_, value, max)| value > max) {
            return Err(format!("{what} {value} is more than the {max} this service supports"));
        }
        Ok(())
    }

    /// Positions a sequence of `length` tokens needs (RoBERTa's start after the padding index).
    pub fn positions_needed(&self, length: usize) -> usize {
        match self.family {
            Family::Roberta => length + self.pad_token_id as usize + 1,
            _ => length,
        }
    }

    /// Every tensor (name, shape) in the order `forward` reads them.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let mut out: Vec<(String, Vec<usize>)> = vec![
            ("embeddings.word_embeddings.weight".into(), vec![self.vocab_size, h]),
            ("embeddings.position_embeddings.weight".into(), vec![self.max_positions, h]),
        ];
        if self.type_vocab_size > 0 {
            out.push(("embeddings.token_type_embeddings.weight".into(), vec![self.type_vocab_size, h]));
        }
        out.push(("embeddings.LayerNorm.weight".into(), vec![h]));
        out.push(("embeddings.LayerNorm.bias".into(), vec![h]));
        for layer in 0..self.num_layers {
            let names = self.layer_names(layer);
            let shapes = [[h, h], [h, h], [h, h], [h, h]].into_iter().flat_map(|s| [s.to_vec(), vec![s[0]]]);
            let shapes = shapes.chain([vec![h], vec![h], vec![i, h], vec![i], vec![h, i], vec![h], vec![h], vec![h]]);
            out.extend(names.into_iter().zip(shapes));
        }
        if self.num_labels > 0 {
            let c = self.num_labels;
            let head: [(&str, Vec<usize>); 4] = match self.family {
                Family::Bert => [
                    ("pooler.dense.weight", vec![h, h]),
                    ("pooler.dense.bias", vec![h]),
                    ("classifier.weight", vec![c, h]),
                    ("classifier.bias", vec![c]),
                ],
                Family::Roberta => [
                    ("classifier.dense.weight", vec![h, h]),
                    ("classifier.dense.bias", vec![h]),
                    ("classifier.out_proj.weight", vec![c, h]),
                    ("classifier.out_proj.bias", vec![c]),
                ],
                Family::DistilBert => [
                    ("pre_classifier.weight", vec![h, h]),
                    ("pre_classifier.bias", vec![h]),
                    ("classifier.weight", vec![c, h]),
                    ("classifier.bias", vec![c]),
                ],
            };
            out.extend(head.into_iter().map(|(n, s)| (n.to_string(), s)));
        }
        out
    }

    /// The 16 tensors of encoder layer `layer`: query, key, value, attention output, its layer
    /// norm, the two feed-forward linears and their layer norm (weights before biases).
    pub fn layer_names(&self, layer: usize) -> Vec<String> {
        let parts: [&str; 8] = match self.family {
            Family::DistilBert => [
                "attention.q_lin",
                "attention.k_lin",
                "attention.v_lin",
                "attention.out_lin",
                "sa_layer_norm",
                "ffn.lin1",
                "ffn.lin2",
                "output_layer_norm",
            ],
            _ => [
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
                "attention.output.dense",
                "attention.output.LayerNorm",
                "intermediate.dense",
                "output.dense",
                "output.LayerNorm",
            ],
        };
        let stem = match self.family {
            Family::DistilBert => format!("transformer.layer.{layer}"),
            _ => format!("encoder.layer.{layer}"),
        };
        parts.iter().flat_map(|p| [format!("{stem}.{p}.weight"), format!("{stem}.{p}.bias")]).collect()
    }

    /// The per-sample shapes of the layer outputs distillation can pair.
    pub fn outputs(&self, length: usize) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden_size;
        let mut out = vec![("embeddings".to_string(), vec![length, h])];
        for i in 0..self.num_layers {
            out.push((format!("layers.{i}"), vec![length, h]));
            out.push((format!("attentions.{i}"), vec![self.num_heads, length, length]));
        }
        out.push(("pooled".into(), vec![h]));
        out
    }

    /// Whether `name` (prefix already removed) belongs to the classification head.
    pub fn is_head(&self, name: &str) -> bool {
        is_classifier(name) || (self.family == Family::Bert && name.starts_with("pooler."))
    }

    /// Fresh tensors as `transformers` initialises them: N(0, initializer_range) for linear and
    /// embedding weights (the padding row zeroed), zero biases, layer norms 1 and 0.
    pub fn init(&self, rng: &mut Rng, device: &Device) -> Result<HashMap<String, Tensor>> {
        let std = self.initializer_range;
        let mut out = HashMap::new();
        for (name, shape) in self.tensor_shapes() {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if name.contains("LayerNorm.weight") || name.contains("layer_norm.weight") {
                vec![1.0; n]
            } else if name.ends_with(".bias") || name.contains("LayerNorm") || name.contains("layer_norm") {
                vec![0.0; n]
            } else {
                let mut v: Vec<f32> = (0..n).map(|_| rng.normal(std)).collect();
                let pad = self.pad_token_id as usize;
                if name == "embeddings.word_embeddings.weight" && pad < shape[0] {
                    v[pad * shape[1]..(pad + 1) * shape[1]].fill(0.0);
                }
                v
            };
            out.insert(name, Tensor::from_vec(values, shape, device)?);
        }
        Ok(out)
    }

    /// config.json for an exported model: the source's keys, with this model's sizes and labels.
    pub fn to_hf(&self, label_names: &[String]) -> Value {
        let mut raw = self.raw.clone();
        let keys = match self.family {
            Family::DistilBert => ["dim", "n_layers", "n_heads", "hidden_dim"],
            _ => ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"],
        };
        let values = [self.hidden_size, self.num_layers, self.num_heads, self.intermediate_size];
        let object = raw.as_object_mut().expect("config.json is an object");
        for (key, value) in keys.iter().zip(values) {
            object.insert(key.to_string(), json!(value));
        }
        if self.trimmed.is_some() {
            object.insert("vocab_size".into(), json!(self.vocab_size));
            object.insert("pad_token_id".into(), json!(self.pad_token_id));
        }
        object.remove("id2label");
        object.remove("label2id");
        object.remove("num_labels");
        let class = self.family.class_name();
        if self.num_labels > 0 {
            let id2label: serde_json::Map<String, Value> =
                label_names.iter().enumerate().map(|(i, n)| (i.to_string(), json!(n))).collect();
            let label2id: serde_json::Map<String, Value> =
                label_names.iter().enumerate().map(|(i, n)| (n.clone(), json!(i))).collect();
            object.insert("id2label".into(), Value::Object(id2label));
            object.insert("label2id".into(), Value::Object(label2id));
            object.insert("architectures".into(), json!([format!("{class}ForSequenceClassification")]));
        } else {
            object.insert("architectures".into(), json!([format!("{class}Model")]));
        }
        raw
    }

    /// The tensor name Hugging Face uses in `model.safetensors` for our `name`: with a head, all
    /// but the classifier's sit under the base model's prefix.
    pub fn hf_name(&self, name: &str) -> String {
        match self.num_labels > 0 && !is_classifier(name) {
            true => format!("{}{name}", self.family.prefix()),
            false => name.to_string(),
        }
    }

    /// Our name for a tensor read from a Hugging Face file: the base prefix dropped, and the old
    /// `gamma`/`beta` spelling of layer norms renamed.
    pub fn our_name(&self, hf: &str) -> String {
        let name = hf.strip_prefix(self.family.prefix()).unwrap_or(hf);
        if let Some(stem) = name.strip_suffix(".gamma") {
            format!("{stem}.weight")
        } else if let Some(stem) = name.strip_suffix(".beta") {
            format!("{stem}.bias")
        } else {
            name.to_string()
        }
    }
}

/// The head's layers that sit outside the base model (BERT's pooler sits inside it), and that a
/// head for other classes replaces.
pub fn is_classifier(name: &str) -> bool {
    name.starts_with("classifier.") || name.starts_with("pre_classifier.")
}

/// Packs tokenised samples as network input rows (ids, segment ids, mask).
pub fn pack(ids: &[u32], type_ids: &[u32], mask: &[u32], length: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(ids.len() * 3);
    for ((i, t), m) in ids.chunks(length).zip(type_ids.chunks(length)).zip(mask.chunks(length)) {
        out.extend(i.iter().chain(t).chain(m).map(|&v| v as f32));
    }
    out
}

/// LayerNorm(dropout(x) + residual), with dropout probability `p` (in training).
fn add_norm(
    x: Tensor,
    residual: &Tensor,
    norm: (&Tensor, &Tensor),
    eps: f64,
    p: f32,
    rng: &mut Option<&mut Rng>,
    fused: bool,
) -> Result<Tensor> {
    if fused {
        return norm::add_layer_norm(&x, residual, norm.0, norm.1, eps, dropout_draw(x.elem_count(), p, rng));
    }
    let x = (dropout(x, p, rng)? + residual)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred.broadcast_div(&(variance + eps)?.sqrt()?)?.broadcast_mul(norm.0)?.broadcast_add(norm.1)
}

fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor, kernels: Kernels) -> Result<Tensor> {
    match (kernels.stored(weight), kernels.fused) {
        (Some(w_t), _) => FrozenLinear { activation: LinearActivation::Identity }.forward(x, w_t, bias),
        (None, true) => {
            Linear { relu: false, input_grad: x.track_op(), handover: kernels.handover() }.forward(x, weight, bias)
        }
        (None, false) => x.matmul(&weight.t()?)?.broadcast_add(bias),
    }
}

/// The rows of an embedding table for `ids`: the fused lookup (whose table gradient a training
/// pass takes directly) or candle's.
fn embed(table: &Tensor, ids: Vec<u32>, kernels: Kernels) -> Result<Tensor> {
    if kernels.fused {
        return lookup(table, ids.into(), kernels.handover());
    }
    let tokens = ids.len();
    table.embedding(&Tensor::from_vec(ids, tokens, table.device())?)
}

/// The query, key and value projections side by side (`tokens × 3h`), for the fused attention.
fn qkv(
    x: &Tensor,
    q: (&Tensor, &Tensor),
    k: (&Tensor, &Tensor),
    v: (&Tensor, &Tensor),
    kernels: Kernels,
) -> Result<Tensor> {
    match (kernels.stored(q.0), kernels.stored(q.1)) {
        (Some(w_t), Some(bias)) => FrozenLinear { activation: LinearActivation::Identity }.forward(x, w_t, bias),
        _ => linear(x, &Tensor::cat(&[q.0, k.0, v.0], 0)?, &Tensor::cat(&[q.1, k.1, v.1], 0)?, kernels),
    }
}

/// gelu(x·Wᵀ + b) through the fused kernels.
fn fused_linear_gelu(x: &Tensor, weight: &Tensor, bias: &Tensor, kernels: Kernels) -> Result<Tensor> {
    match kernels.stored(weight) {
        Some(w_t) => FrozenLinear { activation: LinearActivation::Gelu }.forward(x, w_t, bias),
        None => linear_gelu(x, weight, bias, kernels.handover()),
    }
}

/// The encoder layers' weights stored for inference (`FrozenLinear`'s `in × out`), each keyed
/// by the id of the tensor it stands for: a layer's query weight gives the query, key and value
/// weights side by side, transposed (`h × 3h`), its query bias the three biases, and the
/// attention output's and both feed-forward weights their transposes. Done once, this also
/// saves the concatenation the fused attention otherwise does every pass.
pub(super) fn frozen_weights(
    config: &BertConfig,
    named: &HashMap<String, Tensor>,
) -> Result<HashMap<TensorId, Tensor>> {
    let mut frozen = HashMap::new();
    for layer in 0..config.num_layers {
        let names = config.layer_names(layer);
        let get =
            |i: usize| named.get(&names[i]).ok_or_else(|| candle_core::Error::Msg(format!("{} is missing", names[i])));
        let (q, k, v) = ((get(0)?, get(1)?), (get(2)?, get(3)?), (get(4)?, get(5)?));
        frozen.insert(q.0.id(), Tensor::cat(&[q.0, k.0, v.0], 0)?.t()?.contiguous()?);
        frozen.insert(q.1.id(), Tensor::cat(&[q.1, k.1, v.1], 0)?);
        // The attention output, intermediate and output dense weights.
        for weight in [get(6)?, get(10)?, get(12)?] {
            frozen.insert(weight.id(), weight.t()?.contiguous()?);
        }
    }
    Ok(frozen)
}

/// Dropout multipliers for `n` values in training (with `rng`), None in evaluation or at p = 0.
fn dropout_draw(n: usize, p: f32, rng: &mut Option<&mut Rng>) -> Option<Vec<f32>> {
    match rng.as_deref_mut() {
        Some(rng) if p > 0.0 => Some(dropout_multipliers(n, p, rng)),
        _ => None,
    }
}

fn dropout(x: Tensor, p: f32, rng: &mut Option<&mut Rng>) -> Result<Tensor> {
    match dropout_draw(x.elem_count(), p, rng) {
        Some(mask) => x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?),
        None => Ok(x),
    }
}

fn next<'a>(it: &mut impl Iterator<Item = &'a Tensor>) -> Result<&'a Tensor> {
    it.next().ok_or_else(|| candle_core::Error::Msg("the encoder has fewer tensors than its config needs".into()))
}

/// Token ids, segment ids, attention mask and position ids of packed rows, each
/// `batch × length`.
struct Unpacked {
    ids: Vec<u32>,
    types: Vec<u32>,
    mask: Vec<f32>,
    positions: Vec<u32>,
}

fn unpack(config: &BertConfig, x: &Tensor) -> Result<Unpacked> {
    let (_, packed) = x.dims2()?;
    let (slot, slots) = config.input_slot;
    let length = packed / (3 * slots);
    let rows: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let (mut ids, mut types, mut mask, mut positions) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for row in rows.chunks(packed) {
        let row = &row[slot * 3 * length..(slot + 1) * 3 * length];
        match &config.trimmed {
            Some(trimmed) => ids.extend(row[..length].iter().map(|&v| trimmed.map[v as usize])),
            None => ids.extend(row[..length].iter().map(|&v| v as u32)),
        }
        types.extend(row[length..2 * length].iter().map(|&v| v as u32));
        mask.extend_from_slice(&row[2 * length..]);
        match config.family {
            // RoBERTa numbers real tokens from pad + 1 and gives padding the pad index.
            Family::Roberta => {
                let pad = config.pad_token_id;
                let mut seen = 0;
                positions.extend(row[..length].iter().map(|&id| match id as u32 == pad {
                    true => pad,
                    false => {
                        seen += 1;
                        pad + seen
                    }
                }));
            }
            _ => positions.extend(0..length as u32),
        }
    }
    Ok(Unpacked { ids, types, mask, positions })
}

/// Runs packed rows `x` (`batch × 3·length`) through the encoder and head. With `rng`, training
/// mode (dropout). Returns the logits (the pooled embedding for an encoder without a head) and
/// the requested layer outputs.
pub(super) fn forward(
    config: &BertConfig,
    params: &[Tensor],
    x: &Tensor,
    mut rng: Option<&mut Rng>,
    want: &[&str],
    kernels: Kernels,
) -> Result<(Tensor, HashMap<String, Tensor>)> {
    let fused = kernels.fused;
    let (batch, packed) = x.dims2()?;
    let length = packed / (3 * config.input_slot.1);
    let device = x.device();
    let Unpacked { ids, types, mask, positions } = unpack(config, x)?;
    let (h, heads) = (config.hidden_size, config.num_heads);
    let head_dim = h / heads;
    let mut features = HashMap::new();
    let mut keep = |name: String, t: &Tensor| {
        if want.contains(&name.as_str()) {
            features.insert(name, t.clone());
        }
    };
    let mut p = params.iter();
    let tokens = batch * length;
    let (word, position) = (next(&mut p)?, next(&mut p)?);
    let words = embed(word, ids, kernels)?;
    let mut rest = embed(position, positions, kernels)?;
    if config.type_vocab_size > 0 {
        rest = (rest + embed(next(&mut p)?, types, kernels)?)?;
    }
    let eps = config.layer_norm_eps;
    let mut hidden = add_norm(words, &rest, (next(&mut p)?, next(&mut p)?), eps, 0.0, &mut rng, fused)?;
    hidden = dropout(hidden, config.hidden_dropout, &mut rng)?;
    keep("embeddings".into(), &hidden.reshape((batch, length, h))?);
    // Masked keys get a large negative score, so their probability is exactly 0 after softmax.
    let key_bias_values: Arc<[f32]> = mask.iter().map(|m| (1.0 - m) * -1e9).collect();
    let key_bias = Tensor::from_slice(&key_bias_values, (batch, 1, 1, length), device)?;
    let mask = Tensor::from_vec(mask, (batch, length), device)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    for layer in 0..config.num_layers {
        let mut w = || -> Result<(&Tensor, &Tensor)> { Ok((next(&mut p)?, next(&mut p)?)) };
        let (q, k, v, o, ln1, f1, f2, ln2) = (w()?, w()?, w()?, w()?, w()?, w()?, w()?, w()?);
        let context = if fused {
            let qkv = qkv(&hidden, q, k, v, kernels)?;
            let dropout =
                dropout_draw(batch * heads * length * length, config.attention_dropout, &mut rng).map(Arc::from);
            let (context, probs) =
                SelfAttention { batch, length, heads, key_bias: key_bias_values.clone(), dropout }.forward(&qkv)?;
            keep(format!("attentions.{layer}"), &probs);
            context
        } else {
            let split_heads = |t: Tensor| t.reshape((batch, length, heads, head_dim))?.transpose(1, 2)?.contiguous();
            let query = split_heads(linear(&hidden, q.0, q.1, kernels)?)?;
            let key = split_heads(linear(&hidden, k.0, k.1, kernels)?)?;
            let value = split_heads(linear(&hidden, v.0, v.1, kernels)?)?;
            let scores = (query.matmul(&key.t()?.contiguous()?)? * scale)?.broadcast_add(&key_bias)?;
            let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
            keep(format!("attentions.{layer}"), &probs);
            let probs = dropout(probs, config.attention_dropout, &mut rng)?;
            probs.matmul(&value)?.transpose(1, 2)?.reshape((tokens, h))?
        };
        let attended =
            add_norm(linear(&context, o.0, o.1, kernels)?, &hidden, ln1, eps, config.hidden_dropout, &mut rng, fused)?;
        let inner = match config.activation {
            Activation::Gelu if fused => fused_linear_gelu(&attended, f1.0, f1.1, kernels)?,
            Activation::Gelu => linear(&attended, f1.0, f1.1, kernels)?.gelu_erf()?,
            Activation::GeluTanh => linear(&attended, f1.0, f1.1, kernels)?.gelu()?,
            Activation::Relu => linear(&attended, f1.0, f1.1, kernels)?.relu()?,
        };
        hidden = add_norm(
            linear(&inner, f2.0, f2.1, kernels)?,
            &attended,
            ln2,
            eps,
            config.hidden_dropout,
            &mut rng,
            fused,
        )?;
        keep(format!("layers.{layer}"), &hidden.reshape((batch, length, h))?);
    }
    let sequence = hidden.reshape((batch, length, h))?;
    let weights = mask.unsqueeze(2)?;
    let pooled = sequence.broadcast_mul(&weights)?.sum(1)?.broadcast_div(&weights.sum(1)?.clamp(1.0, f64::MAX)?)?;
    keep("pooled".into(), &pooled);
    if config.num_labels == 0 {
        return Ok((pooled, features));
    }
    let first = sequence.narrow(1, 0, 1)?.reshape((batch, h))?;
    let (a, b) = ((next(&mut p)?, next(&mut p)?), (next(&mut p)?, next(&mut p)?));
    let logits = match config.family {
        Family::Bert => {
            let pooled = linear(&first, a.0, a.1, kernels)?.tanh()?;
            linear(&dropout(pooled, config.classifier_dropout, &mut rng)?, b.0, b.1, kernels)?
        }
        Family::Roberta => {
            let x = dropout(first, config.classifier_dropout, &mut rng)?;
            let x = dropout(linear(&x, a.0, a.1, kernels)?.tanh()?, config.classifier_dropout, &mut rng)?;
            linear(&x, b.0, b.1, kernels)?
        }
        Family::DistilBert => {
            let x = linear(&first, a.0, a.1, kernels)?.relu()?;
            linear(&dropout(x, config.classifier_dropout, &mut rng)?, b.0, b.1, kernels)?
        }
    };
    Ok((logits, features))
}

/// Reads a Hugging Face folder: its config (`num_labels` set from the head in the weights, 0
/// without one) and its tensors under our names, as f32 on `device`.
pub fn load_folder(
    dir: &Path,
    device: &Device,
) -> std::result::Result<(BertConfig, HashMap<String, Tensor>), ModelError> {
    let read = |name: &str| {
        std::fs::read(dir.join(name)).map_err(|e| ModelError::Format(format!("{name} is unreadable: {e}")))
    };
    from_files(&read("config.json")?, &read("model.safetensors")?, device)
}

/// A Hugging Face folder's model from the bytes of its `config.json` and `model.safetensors`.
pub fn from_files(
    config_json: &[u8],
    weights: &[u8],
    device: &Device,
) -> std::result::Result<(BertConfig, HashMap<String, Tensor>), ModelError> {
    let raw: Value = serde_json::from_slice(config_json)
        .map_err(|e| ModelError::Format(format!("config.json is unreadable: {e}")))?;
    let mut config = BertConfig::from_hf(&raw)?;
    let (tensors, _) = parse_safetensors(weights, device).map_err(ModelError::Format)?;
    let tensors: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(name, t)| Ok((config.our_name(&name), t.to_dtype(DType::F32)?.to_device(device)?)))
        .collect::<Result<_>>()?;
    let head = match config.family {
        Family::Roberta => "classifier.out_proj.weight",
        _ => "classifier.weight",
    };
    config.num_labels = match tensors.get(head) {
        Some(t) => t.dim(0)?,
        None => 0,
    };
    Ok((config, tensors))
}
