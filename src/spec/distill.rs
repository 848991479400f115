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
