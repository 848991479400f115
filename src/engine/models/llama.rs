//! Llama-family causal language models (Llama 2/3, SmolLM, TinyLlama): RMSNorm, rotary
//! positions, grouped-query attention, SwiGLU, tied or untied output layer. Tensors carry
//! Hugging Face's names (`model.layers.{i}.self_attn.q_proj.weight`, …), so a folder
//! `transformers` wrote loads as it is and an exported student is one `transformers` loads.
//!
//! Two forward passes: [`Llama::forward`] over whole blocks, built only from ops with a backward
//! pass when `train` is set (candle's fused softmax and rotary ops have none), and
//! [`Llama::step`], which extends a key/value cache token by token for generation.
//! `tests/llm.rs` checks logits, hidden states and gradients against `transformers`.

use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Result, Tensor, D};
use serde_json::{json, Value};

use crate::engine::files::parse_safetensors;
use crate::engine::kernels::linear;
use crate::engine::models::ModelError;
use crate::engine::rng::Rng;
use crate::spec::{MAX_LAYERS, MAX_LAYER_WIDTH};

/// The largest vocabulary a model may have (Llama 3's is 128,256; Gemma's 256,000).
pub const MAX_VOCABULARY: usize = 262_144;

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl LlamaConfig {
    /// From a Hugging Face `config.json` of `model_type: llama`.
    pub fn from_hf(raw: &Value) -> std::result::Result<Self, ModelError> {
        let model_type = raw.get("model_type").and_then(Value::as_str).unwrap_or_default();
        if model_type != "llama" {
            return Err(ModelError::Architecture(format!(
                "config.json: model_type `{model_type}` is not a Llama-family causal LM (`llama`)"
            )));
        }
        let size = |key: &str| -> std::result::Result<usize, ModelError> {
            raw.get(key)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| ModelError::Format(format!("config.json: `{key}` is missing or not a whole number")))
        };
        let num_heads = size("num_attention_heads")?;
        let token = |key: &str| raw.get(key).and_then(Value::as_u64).map(|v| v as u32);
        // `transformers` 5 writes `rope_parameters`; earlier versions `rope_theta` and `rope_scaling`.
        let rope = raw.get("rope_parameters").or(Some(raw));
        let rope_type = rope.and_then(|r| r.get("rope_type")).and_then(Value::as_str).unwrap_or("default");
        let scaled = raw.get("rope_scaling").is_some_and(|s| !s.is_null());
        if rope_type != "default" || scaled {
            return Err(ModelError::Architecture(format!(
                "config.json: rotary scaling (`{rope_type}`, Llama 3.1's long-context positions) is not supported"
            )));
        }
        let config = Self {
            vocab_size: size("vocab_size")?,
            hidden_size: size("hidden_size")?,
            intermediate_size: size("intermediate_size")?,
            num_layers: size("num_hidden_layers")?,
            num_heads,
            num_kv_heads: raw.get("num_key_value_heads").and_then(Value::as_u64).map_or(num_heads, |v| v as usize),
            rms_norm_eps: raw.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
            rope_theta: rope.and_then(|r| r.get("rope_theta")).and_then(Value::as_f64).unwrap_or(10_000.0),
            max_position_embeddings: raw.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(2048)
                as usize,
            tie_word_embeddings: raw.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            bos_token_id: token("bos_token_id"),
            eos_token_id: token("eos_token_id"),
        };
        config.check()?;
        Ok(config)
    }

    /// Sizes this engine runs: within the spec's limits, heads that divide the width, key/value
    /// heads that divide the heads, an even head size (rotary positions rotate pairs).
    pub fn check(&self) -> std::result::Result<(), ModelError> {
        let refuse = |m: String| Err(ModelError::Architecture(m));
        if self.num_layers == 0 || self.num_layers > MAX_LAYERS {
            return refuse(format!("{} layers; a model has 1 to {MAX_LAYERS}", self.num_layers));
        }
        for (name, size) in [("hidden_size", self.hidden_size), ("intermediate_size", self.intermediate_size)] {
            if size == 0 || size > MAX_LAYER_WIDTH {
                return refuse(format!("{name} {size}; it must be within [1, {MAX_LAYER_WIDTH}]"));
            }
        }
        if self.vocab_size == 0 || self.vocab_size > MAX_VOCABULARY {
            return refuse(format!("vocabulary of {}; at most {MAX_VOCABULARY} tokens", self.vocab_size));
        }
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return refuse(format!("{} heads do not divide hidden size {}", self.num_heads, self.hidden_size));
        }
        if self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return refuse(format!("{} key/value heads do not divide {} heads", self.num_kv_heads, self.num_heads));
        }
        if !self.head_dim().is_multiple_of(2) {
            return refuse(format!("head size {} is odd; rotary positions need an even one", self.head_dim()));
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 0.0) {
            return refuse("rms_norm_eps and rope_theta must be positive".into());
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Every tensor and its shape, in the order the forward pass reads them.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, m, kv) = (self.hidden_size, self.intermediate_size, self.num_kv_heads * self.head_dim());
        let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab_size, h])];
        for i in 0..self.num_layers {
            let p = format!("model.layers.{i}");
            shapes.extend([
                (format!("{p}.input_layernorm.weight"), vec![h]),
                (format!("{p}.self_attn.q_proj.weight"), vec![h, h]),
                (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
                (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
                (format!("{p}.self_attn.o_proj.weight"), vec![h, h]),
                (format!("{p}.post_attention_layernorm.weight"), vec![h]),
                (format!("{p}.mlp.gate_proj.weight"), vec![m, h]),
                (format!("{p}.mlp.up_proj.weight"), vec![m, h]),
                (format!("{p}.mlp.down_proj.weight"), vec![h, m]),
            ]);
        }
        shapes.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            shapes.push(("lm_head.weight".to_string(), vec![self.vocab_size, h]));
        }
        shapes
    }

    pub fn parameter_count(&self) -> usize {
        self.tensor_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// As `transformers` initialises a `LlamaForCausalLM`: weights N(0, 0.02), norms 1.
    pub fn init(&self, rng: &mut Rng, device: &Device) -> Result<HashMap<String, Tensor>> {
        self.tensor_shapes()
            .into_iter()
            .map(|(name, shape)| {
                let count: usize = shape.iter().product();
                let values: Vec<f32> = match name.ends_with("norm.weight") {
                    true => vec![1.0; count],
                    false => (0..count).map(|_| rng.normal(0.02)).collect(),
                };
                Ok((name, Tensor::from_vec(values, shape, device)?))
            })
            .collect()
    }

    /// The `config.json` of a `LlamaForCausalLM` with these sizes.
    pub fn to_hf(&self) -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim(),
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": false,
            "mlp_bias": false,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "torch_dtype": "float32",
        })
    }
}

/// A Llama with its tensors (f32), by Hugging Face name.
#[derive(Debug, Clone)]
pub struct Llama {
    pub config: LlamaConfig,
    pub tensors: HashMap<String, Tensor>,
    /// The projections are stored transposed (`in × out`, see [`Llama::frozen`]).
    pub transposed: bool,
}

/// Per layer, the keys and values of the positions generated so far (`batch × kv heads × t × d`).
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What [`Llama::forward`] returns: logits `batch × t × vocab`, and the hidden states (the
/// embeddings, then each layer's output) when asked for.
pub struct LlamaOutput {
    pub logits: Tensor,
    pub hidden: Vec<Tensor>,
}

impl Llama {
    /// Checks every tensor against the config: none missing, none unknown, every shape right.
    pub fn new(config: LlamaConfig, tensors: HashMap<String, Tensor>) -> std::result::Result<Self, ModelError> {
        let shapes = config.tensor_shapes();
        for (name, shape) in &shapes {
            let tensor = tensors.get(name).ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
            if tensor.dims() != shape.as_slice() {
                return Err(ModelError::Shape {
                    name: name.clone(),
                    got: tensor.dims().to_vec(),
                    expected: shape.clone(),
                    hint: String::new(),
                });
            }
        }
        if let Some(name) = tensors.keys().find(|n| !shapes.iter().any(|(s, _)| s == *n)) {
            return Err(ModelError::UnknownTensor(name.clone()));
        }
        Ok(Self { config, tensors, transposed: false })
    }

    /// The same model for inference only, its projections stored transposed (`in × out`,
    /// row-major): gemm packs a row-major right-hand side faster than a transposed view, which
    /// made the teacher's 128-token products up to 1.8× faster (the MLP's down projection).
    pub fn frozen(mut self) -> Result<Self> {
        if !self.transposed {
            for (_, weight) in self.tensors.iter_mut().filter(|(name, _)| is_projection(name)) {
                *weight = weight.detach().t()?.contiguous()?;
            }
            self.transposed = true;
        }
        Ok(self)
    }

    /// The tensors in forward order, in Hugging Face's layout, for the optimiser and for saving.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        let names = self.config.tensor_shapes().into_iter().map(|(name, _)| name);
        names.map(|name| (name.clone(), self.hf_tensor(&name).expect("every tensor the config names"))).collect()
    }

    /// The tensor `name` in Hugging Face's layout (`out × in` for a projection).
    pub fn hf_tensor(&self, name: &str) -> Option<Tensor> {
        let tensor = self.tensors.get(name)?;
        match self.transposed && is_projection(name) {
            true => Some(tensor.t().and_then(|t| t.contiguous()).expect("a 2-D projection transposes")),
            false => Some(tensor.clone()),
        }
    }

    /// `x · Wᵀ` for the projection `name`, in whichever layout it is stored; on the CPU a
    /// trainable one goes through the engine's op, whose weight gradient needs no transpose.
    fn project(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        let weight = self.get(name);
        match (self.transposed, x.device().is_cpu()) {
            (true, _) => product(x, weight),
            (false, true) => {
                let mut dims = x.dims().to_vec();
                let features = dims.pop().expect("x has a feature axis");
                dims.push(weight.dim(0)?);
                linear::project(&x.reshape(((), features))?, weight)?.reshape(dims)
            }
            (false, false) => product(x, &weight.t()?),
        }
    }

    fn get(&self, name: &str) -> &Tensor {
        &self.tensors[name]
    }

    /// The output layer's weight (`vocab × hidden`): the embeddings when they are tied.
    pub fn output_weight(&self) -> &Tensor {
        match self.config.tie_word_embeddings {
            true => self.get("model.embed_tokens.weight"),
            false => self.get("lm_head.weight"),
        }
    }

    /// Logits for `ids` (`batch × t`, u32), every position attending to those before it.
    /// `train`: only ops with a backward pass.
    pub fn forward(&self, ids: &Tensor, train: bool, want_hidden: bool) -> Result<LlamaOutput> {
        let (x, hidden) = self.decode(ids, train, want_hidden)?;
        let logits = self.logits_of(&self.final_norm(&x, train)?)?;
        Ok(LlamaOutput { logits, hidden })
    }

    /// The final norm's output for `ids` (`batch × t × hidden`): what the output layer reads.
    pub fn final_hidden(&self, ids: &Tensor, train: bool) -> Result<Tensor> {
        self.final_norm(&self.decode(ids, train, false)?.0, train)
    }

    /// The output layer: logits for final hidden states of any rank.
    pub fn logits_of(&self, final_hidden: &Tensor) -> Result<Tensor> {
        product(final_hidden, &self.output_weight().t()?)
    }

    /// The decoder layers' output for `ids`, and with `want_hidden` every layer's input and the
    /// last layer's output.
    fn decode(&self, ids: &Tensor, train: bool, want_hidden: bool) -> Result<(Tensor, Vec<Tensor>)> {
        let (_, t) = ids.dims2()?;
        let rope = Rope::new(&self.config, 0, t, ids.device())?;
        let mask = causal_mask(t, 0, ids.device())?;
        let mut x = self.get("model.embed_tokens.weight").embedding(&ids.flatten_all()?)?.reshape((
            ids.dim(0)?,
            t,
            self.config.hidden_size,
        ))?;
        let mut hidden = Vec::new();
        for layer in 0..self.config.num_layers {
            if want_hidden {
                hidden.push(x.clone());
            }
            let [q, k, v] = self.attention_inputs(layer, &x, &rope, train)?;
            x = self.block(layer, &x, [&q, &k, &v], &mask, train)?;
        }
        if want_hidden {
            hidden.push(x.clone());
        }
        Ok((x, hidden))
    }

    /// Logits of the last position after feeding `ids` (`batch × t`) past the cached positions.
    pub fn step(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let offset = cache.len();
        let rope = Rope::new(&self.config, offset, t, ids.device())?;
        let mask = causal_mask(t, offset, ids.device())?;
        let mut x = self.get("model.embed_tokens.weight").embedding(&ids.flatten_all()?)?.reshape((
            ids.dim(0)?,
            t,
            self.config.hidden_size,
        ))?;
        for layer in 0..self.config.num_layers {
            let [q, k, v] = self.attention_inputs(layer, &x, &rope, false)?;
            let (k, v) = match cache.layers.get(layer) {
                Some((old_k, old_v)) => (Tensor::cat(&[old_k, &k], 2)?, Tensor::cat(&[old_v, &v], 2)?),
                None => (k, v),
            };
            x = self.block(layer, &x, [&q, &k, &v], &mask, false)?;
            match cache.layers.get_mut(layer) {
                Some(slot) => *slot = (k, v),
                None => cache.layers.push((k, v)),
            }
        }
        self.logits_of(&self.final_norm(&x.i((.., t - 1..t, ..))?, false)?)?.squeeze(1)
    }

    /// Layer `layer`'s queries and keys (rotated) and values for `x`, each
    /// `batch × heads × t × d` (keys and values with the key/value heads).
    fn attention_inputs(&self, layer: usize, x: &Tensor, rope: &Rope, train: bool) -> Result<[Tensor; 3]> {
        let c = &self.config;
        let p = format!("model.layers.{layer}");
        let normed = rms_norm(x, self.get(&format!("{p}.input_layernorm.weight")), c.rms_norm_eps, train)?;
        let (b, t, _) = normed.dims3()?;
        let split = |name: &str, heads: usize| -> Result<Tensor> {
            self.project(&normed, &format!("{p}.self_attn.{name}.weight"))?
                .reshape((b, t, heads, c.head_dim()))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = rope.apply(&split("q_proj", c.num_heads)?, train)?;
        let k = rope.apply(&split("k_proj", c.num_kv_heads)?, train)?;
        Ok([q, k, split("v_proj", c.num_kv_heads)?])
    }

    /// The rest of one decoder layer: attention of `queries` over (`keys`, `values`), then the
    /// SwiGLU MLP, each with its residual.
    fn block(
        &self,
        layer: usize,
        x: &Tensor,
        [queries, keys, values]: [&Tensor; 3],
        mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let c = &self.config;
        let p = format!("model.layers.{layer}");
        let (b, t, h) = x.dims3()?;
        let groups = c.num_heads / c.num_kv_heads;
        let expand = |kv: &Tensor| -> Result<Tensor> {
            let (b, n, s, d) = kv.dims4()?;
            kv.unsqueeze(2)?.expand((b, n, groups, s, d))?.reshape((b, n * groups, s, d))
        };
        let scores = (queries.matmul(&expand(keys)?.t()?)? / (c.head_dim() as f64).sqrt())?.broadcast_add(mask)?;
        let probs = match train {
            true => candle_nn::ops::softmax(&scores, D::Minus1)?,
            false => candle_nn::ops::softmax_last_dim(&scores)?,
        };
        let attended = probs.matmul(&expand(values)?)?.transpose(1, 2)?.reshape((b, t, h))?;
        let x = (x + self.project(&attended, &format!("{p}.self_attn.o_proj.weight"))?)?;
        let normed = rms_norm(&x, self.get(&format!("{p}.post_attention_layernorm.weight")), c.rms_norm_eps, train)?;
        let gate = self.project(&normed, &format!("{p}.mlp.gate_proj.weight"))?.silu()?;
        let up = self.project(&normed, &format!("{p}.mlp.up_proj.weight"))?;
        x + self.project(&(gate * up)?, &format!("{p}.mlp.down_proj.weight"))?
    }

    fn final_norm(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        rms_norm(x, self.get("model.norm.weight"), self.config.rms_norm_eps, train)
    }
}

/// Whether `name` is one of a layer's attention or MLP projections.
fn is_projection(name: &str) -> bool {
    name.starts_with("model.layers.") && name.contains("_proj.")
}

/// `x · m` for `x` of any rank and `m` (`in × out`), as one 2-D product.
fn product(x: &Tensor, m: &Tensor) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let features = dims.pop().expect("x has a feature axis");
    let out = x.reshape(((), features))?.matmul(m)?;
    dims.push(m.dim(1)?);
    out.reshape(dims)
}

fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, train: bool) -> Result<Tensor> {
    if !train {
        return candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32);
    }
    let scale = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&scale)?.broadcast_mul(weight)
}

/// 0 where position `offset + i` may attend to key `j` (j ≤ offset + i), −∞ elsewhere.
fn causal_mask(t: usize, offset: usize, device: &Device) -> Result<Tensor> {
    let keys = offset + t;
    let values: Vec<f32> =
        (0..t).flat_map(|i| (0..keys).map(move |j| if j <= offset + i { 0.0 } else { f32::NEG_INFINITY })).collect();
    Tensor::from_vec(values, (t, keys), device)
}

/// Rotary positions for `t` positions from `offset`, in Hugging Face's layout (each head's
/// first half rotates with its second half).
struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// `t × d`: each angle twice, the layout the composed (training) rotation multiplies by;
    /// built once for all layers.
    cos_both: Tensor,
    sin_both: Tensor,
}

impl Rope {
    fn new(config: &LlamaConfig, offset: usize, t: usize, device: &Device) -> Result<Self> {
        let half = config.head_dim() / 2;
        let inverse: Vec<f64> =
            (0..half).map(|i| 1.0 / config.rope_theta.powf(2.0 * i as f64 / config.head_dim() as f64)).collect();
        let angles: Vec<f32> =
            (offset..offset + t).flat_map(|p| inverse.iter().map(move |f| (p as f64 * f) as f32)).collect();
        let angles = Tensor::from_vec(angles, (t, half), device)?;
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        let cos_both = Tensor::cat(&[&cos, &cos], D::Minus1)?;
        let sin_both = Tensor::cat(&[&sin, &sin], D::Minus1)?;
        Ok(Self { cos, sin, cos_both, sin_both })
    }

    /// `x`: `batch × heads × t × d`, contiguous.
    fn apply(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train {
            return candle_nn::rotary_emb::rope(x, &self.cos, &self.sin);
        }
        let half = x.dim(D::Minus1)? / 2;
        let first = x.narrow(D::Minus1, 0, half)?;
        let second = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&second.neg()?, &first], D::Minus1)?;
        x.broadcast_mul(&self.cos_both)? + rotated.broadcast_mul(&self.sin_both)?
    }
}

/// A Hugging Face folder's model from the bytes of its `config.json` and `model.safetensors`
/// (f32, any stored float type converted).
pub fn from_files(config_json: &[u8], weights: &[u8], device: &Device) -> std::result::Result<Llama, ModelError> {
    let raw: Value = serde_json::from_slice(config_json)
        .map_err(|e| ModelError::Format(format!("config.json is unreadable: {e}")))?;
    with_weights(LlamaConfig::from_hf(&raw)?, weights, device)
}

/// The model of `config` with the tensors of a `model.safetensors`.
pub fn with_weights(config: LlamaConfig, weights: &[u8], device: &Device) -> std::result::Result<Llama, ModelError> {
    let (tensors, _) = parse_safetensors(weights, device).map_err(ModelError::Format)?;
    let mut tensors: HashMap<String, Tensor> =
        tensors.into_iter().map(|(name, t)| Ok((name, t.to_dtype(DType::F32)?))).collect::<Result<_>>()?;
    // `transformers` saves a tied output layer's weight in some versions; it is the embedding.
    if config.tie_word_embeddings {
        tensors.remove("lm_head.weight");
    }
    // Rotary tables some checkpoints carry are recomputed here.
    tensors.retain(|name, _| !name.ends_with("rotary_emb.inv_freq"));
    Llama::new(config, tensors)
}
