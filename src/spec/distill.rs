//! `distill`: the distillation loss, its temperature and weight, layer pairs and the teacher cache.

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillSpec {
    pub temperature: Scheduled,
    /// Weight of the soft (teacher) term; the labels' cross-entropy gets 1 − α.
    pub alpha: Scheduled,
    #[serde(default)]
    pub loss: LogitLossKind,
    /// The generalised Jensen–Shannon's mixing weight (`loss: js` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// Intermediate-layer pairs, added to the loss with their weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intermediate: Vec<IntermediateSpec>,
    #[serde(default)]
    pub cache: CacheSpec,
    /// Causal language models: `token` (the teacher's distribution at every position) or
    /// `sequence` (the student learns the teacher's own continuations of the prompts).
    #[serde(default, skip_serializing_if = "DistillMode::is_token")]
    pub mode: DistillMode,
    /// Causal language models: how continuations are generated, for sequence-level
    /// distillation and for the report's side-by-side continuations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationSpec>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistillMode {
    #[default]
    Token,
    /// Kim & Rush (2016): the teacher continues each prompt and the student trains on its
    /// continuations with cross-entropy.
    Sequence,
}

impl DistillMode {
    pub fn is_token(&self) -> bool {
        *self == DistillMode::Token
    }
}

pub const MAX_NEW_TOKENS: usize = 256;
pub const MAX_PROMPTS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationSpec {
    /// Tokens each continuation adds (it stops earlier at the end-of-sequence token).
    #[serde(default = "default_new_tokens")]
    pub max_new_tokens: usize,
    /// Plain text documents become prompts of their first `prompt_tokens` tokens (JSON Lines
    /// `prompt` fields are used whole, cut to the block length).
    #[serde(default = "default_prompt_tokens")]
    pub prompt_tokens: usize,
    /// Sample from softmax(logits / `temperature`) instead of taking the likeliest token.
    #[serde(default)]
    pub sample: bool,
    #[serde(default = "default_one_f64")]
    pub temperature: f64,
    #[serde(default)]
    pub seed: u64,
    /// Sequence mode: continue at most this many training prompts (all by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prompts: Option<usize>,
    /// Prompts of the held-out documents each model continues for the report (ROUGE-L).
    #[serde(default = "default_report_prompts")]
    pub report_prompts: usize,
}

impl Default for GenerationSpec {
    fn default() -> Self {
        Self {
            max_new_tokens: default_new_tokens(),
            prompt_tokens: default_prompt_tokens(),
            sample: false,
            temperature: 1.0,
            seed: 0,
            max_prompts: None,
            report_prompts: default_report_prompts(),
        }
    }
}

fn default_new_tokens() -> usize {
    32
}
fn default_prompt_tokens() -> usize {
    16
}
fn default_one_f64() -> f64 {
    1.0
}
fn default_report_prompts() -> usize {
    16
}

impl GenerationSpec {
    pub(super) fn validate(&self, max_length: usize) -> Result<(), SpecError> {
        if !(1..=MAX_NEW_TOKENS).contains(&self.max_new_tokens) {
            return Err(SpecError::new(
                "distill.generation.max_new_tokens",
                format!("must be within [1, {MAX_NEW_TOKENS}]"),
            ));
        }
        if self.prompt_tokens == 0 || self.prompt_tokens + self.max_new_tokens > max_length {
            return Err(SpecError::new(
                "distill.generation.prompt_tokens",
                format!(
                    "prompt_tokens ≥ 1 and prompt_tokens + max_new_tokens ≤ dataset.max_length ({max_length}): a prompt and its continuation fit one block"
                ),
            ));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0 && self.temperature <= 10.0) {
            return Err(SpecError::new("distill.generation.temperature", "must be > 0 and ≤ 10"));
        }
        if self.max_prompts.is_some_and(|n| n == 0 || n > MAX_PROMPTS) {
            return Err(SpecError::new("distill.generation.max_prompts", format!("must be within [1, {MAX_PROMPTS}]")));
        }
        if self.report_prompts > 1000 {
            return Err(SpecError::new("distill.generation.report_prompts", "must be at most 1000"));
        }
        Ok(())
    }
}

/// A number, or a value that moves linearly from `start` (first step) to `end` (last step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Scheduled {
    Constant(f64),
    Linear { start: f64, end: f64 },
}

impl Scheduled {
    /// The value at `progress` ∈ [0, 1] of the training.
    pub fn at(&self, progress: f64) -> f64 {
        match *self {
            Scheduled::Constant(v) => v,
            Scheduled::Linear { start, end } => start + (end - start) * progress.clamp(0.0, 1.0),
        }
    }

    pub fn is_constant(&self) -> bool {
        matches!(self, Scheduled::Constant(_))
    }

    fn values(&self) -> [f64; 2] {
        match *self {
            Scheduled::Constant(v) => [v, v],
            Scheduled::Linear { start, end } => [start, end],
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogitLossKind {
    /// Hinton: KL(teacher ‖ student) at T, × T².
    #[default]
    Kl,
    ReverseKl,
    Js,
    /// Mean squared error between raw logits (T does not apply).
    Mse,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntermediateSpec {
    /// `blocks.{i}` (a conv block's output) or `layers.{i}` (a hidden layer's output).
    pub teacher_layer: String,
    pub student_layer: String,
    #[serde(default)]
    pub loss: FeatureLossKind,
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Which teacher of an ensemble (index into `teachers`).
    #[serde(default)]
    pub teacher: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureLossKind {
    #[default]
    Mse,
    Cosine,
    /// Between maps whose rows are distributions: transformer attention maps.
    Kl,
}

/// Reuse of the teachers' logits across epochs; it applies only when nothing changes them
/// (no augmentation, no intermediate layers).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Keep only the k largest logits per sample (the rest of the mass is spread evenly over the
    /// other classes). Needs a constant temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self { enabled: true, top_k: None }
    }
}

impl DistillSpec {
    pub(super) fn validate(&self, teachers: usize) -> Result<(), SpecError> {
        for t in self.temperature.values() {
            if !(t.is_finite() && t > 0.0 && t <= 100.0) {
                return Err(SpecError::new(
                    "distill.temperature",
                    format!("must be > 0 and ≤ 100 (usually 3–6), got {t}"),
                ));
            }
        }
        for a in self.alpha.values() {
            if !(a.is_finite() && (0.0..=1.0).contains(&a)) {
                return Err(SpecError::new("distill.alpha", format!("must be within [0, 1], got {a}")));
            }
        }
        match (self.loss, self.beta) {
            (LogitLossKind::Js, Some(b)) if !(b.is_finite() && b > 0.0 && b < 1.0) => {
                return Err(SpecError::new("distill.beta", format!("must be within (0, 1), got {b}")))
            }
            (LogitLossKind::Js, _) => {}
            (_, Some(_)) => return Err(SpecError::new("distill.beta", "applies to `loss: js` only")),
            (_, None) => {}
        }
        if self.intermediate.len() > MAX_LAYERS {
            return Err(SpecError::new("distill.intermediate", format!("at most {MAX_LAYERS} pairs")));
        }
        for (i, pair) in self.intermediate.iter().enumerate() {
            let field = format!("distill.intermediate[{i}]");
            validate_layer_name(&pair.teacher_layer, &format!("{field}.teacher_layer"))?;
            validate_layer_name(&pair.student_layer, &format!("{field}.student_layer"))?;
            if !(pair.weight.is_finite() && pair.weight > 0.0) {
                return Err(SpecError::new(format!("{field}.weight"), "must be > 0"));
            }
            if pair.teacher >= teachers {
                return Err(SpecError::new(format!("{field}.teacher"), format!("there are {teachers} teacher(s)")));
            }
        }
        if let Some(k) = self.cache.top_k {
            if k == 0 {
                return Err(SpecError::new("distill.cache.top_k", "must be at least 1"));
            }
            if !self.temperature.is_constant() {
                return Err(SpecError::new(
                    "distill.cache.top_k",
                    "needs a constant temperature: the mass outside the top k is stored at that temperature",
                ));
            }
            if self.loss == LogitLossKind::Mse {
                return Err(SpecError::new(
                    "distill.cache.top_k",
                    "does not apply to `loss: mse`, which needs every logit",
                ));
            }
        }
        Ok(())
    }
}

/// `blocks.{i}` or `layers.{i}`; whether the layer exists is checked against the architecture.
pub(super) fn validate_layer_name(name: &str, field: &str) -> Result<(), SpecError> {
    let ok = matches!(name, "embeddings" | "pooled")
        || name.split_once('.').is_some_and(|(kind, index)| {
            matches!(kind, "blocks" | "layers" | "attentions") && index.parse::<usize>().is_ok()
        });
    if !ok {
        return Err(SpecError::new(
            field,
            format!("`{name}` is not a layer name; expected `blocks.N` or `layers.N` (transformers: `embeddings`, `layers.N`, `attentions.N`, `pooled`)"),
        ));
    }
    Ok(())
}
