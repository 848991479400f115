//! `teacher`/`teachers` and `student`: which networks, trained how or loaded from where.

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSpec {
    pub arch: ArchSpec,
    /// Train the teacher first, with these settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<PhaseTrainSpec>,
    /// Or load it: a safetensors file under the data root, in the layout Distillery exports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    /// Share of this teacher in an ensemble's averaged soft targets (normalised over teachers).
    #[serde(default = "default_weight")]
    pub weight: f64,
}

/// Settings for the teacher's own training; what is left out comes from `training`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseTrainSpec {
    pub epochs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<OptimizerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentSpec {
    pub arch: ArchSpec,
    /// Layers whose weights the distilled student copies from the (first) teacher before
    /// training, as DistilBERT did; shapes must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_from_teacher: Vec<LayerCopy>,
    /// A transformer student's word embeddings: the teacher's whole vocabulary, or only the
    /// tokens the training (and transfer) texts use.
    #[serde(default, skip_serializing_if = "Vocabulary::is_full")]
    pub vocabulary: Vocabulary,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vocabulary {
    #[default]
    Full,
    /// Keep the tokens the training texts use (and the special ones); the exported tokenizer is
    /// cut to match, so it tokenises those texts exactly as the teacher's does.
    Trim,
}

impl Vocabulary {
    pub fn is_full(&self) -> bool {
        *self == Vocabulary::Full
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerCopy {
    pub student_layer: String,
    pub teacher_layer: String,
}

impl TeacherSpec {
    pub(super) fn validate(&self, field: &str) -> Result<(), SpecError> {
        validate_arch(&self.arch, &format!("{field}.arch"))?;
        if !(self.weight.is_finite() && self.weight > 0.0) {
            return Err(SpecError::new(format!("{field}.weight"), "must be > 0"));
        }
        if let Some(t) = self.arch.transformer().or(self.arch.llama()) {
            if t.path.is_none() {
                let what = match self.arch.llama() {
                    Some(_) => "a llama teacher is a Hugging Face folder or a .gguf file under the data root",
                    None => "a transformer teacher is a Hugging Face folder under the data root",
                };
                return Err(SpecError::new(format!("{field}.arch.path"), what));
            }
            let student_only = [
                ("layers", t.layers.is_some()),
                ("num_layers", t.num_layers.is_some()),
                ("hidden_size", t.hidden_size.is_some()),
                ("num_heads", t.num_heads.is_some()),
                ("intermediate_size", t.intermediate_size.is_some()),
                ("num_kv_heads", t.num_kv_heads.is_some()),
            ];
            if let Some((name, _)) = student_only.iter().find(|(_, given)| *given) {
                return Err(SpecError::new(
                    format!("{field}.arch.{name}"),
                    "a teacher's sizes come from its config.json (or GGUF metadata)",
                ));
            }
            if self.weights.is_some() {
                return Err(SpecError::new(
                    format!("{field}.weights"),
                    "a transformer teacher's weights are its folder's model.safetensors (or its GGUF file)",
                ));
            }
            return match &self.train {
                Some(train) => validate_phase_train(train, field),
                None => Ok(()),
            };
        }
        match (&self.train, &self.weights) {
            (Some(_), Some(_)) => Err(SpecError::new(field, "give either `train` or `weights`, not both")),
            (None, None) => Err(SpecError::new(
                field,
                "give `train` (the job trains the teacher) or `weights` (a safetensors file)",
            )),
            (Some(train), None) => validate_phase_train(train, field),
            (None, Some(path)) => validate_relative_path(path, &format!("{field}.weights")),
        }
    }
}

pub(super) fn validate_phase_train(train: &PhaseTrainSpec, field: &str) -> Result<(), SpecError> {
    validate_epochs(train.epochs, &format!("{field}.train.epochs"))?;
    if let Some(batch) = train.batch_size {
        validate_batch(batch, &format!("{field}.train.batch_size"))?;
    }
    if let Some(opt) = &train.optimizer {
        validate_optimizer(opt, &format!("{field}.train.optimizer"))?;
    }
    Ok(())
}

pub(super) fn default_weight() -> f64 {
    1.0
}
