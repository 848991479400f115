//! The job specification: what a job may say, and the one place that decides whether it is
//! acceptable. The API and the CLI both parse and validate through here. Each part of a spec
//! sits beside its own validation: `dataset`, `arch` (the networks), `models` (teachers and
//! student), `distill`, `training`, `device`; this module holds the whole spec, its parsing, and
//! the checks that span parts.

mod arch;
mod dataset;
mod device;
mod distill;
mod language;
mod models;
mod sweep;
#[cfg(test)]
pub(crate) mod tests;
mod training;

use serde::{Deserialize, Serialize};

pub use arch::*;
pub use dataset::*;
pub use device::*;
pub use distill::*;
pub use language::*;
pub use models::*;
pub use sweep::*;
pub use training::*;

/// A refusal of a spec, naming the offending field by its JSON path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub dataset: DatasetSpec,
    /// One teacher; or `teachers`, an ensemble. Exactly one of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<TeacherSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teachers: Option<Vec<TeacherSpec>>,
    pub student: StudentSpec,
    pub distill: DistillSpec,
    pub training: TrainingSpec,
    /// Also train the same student without the teacher, so the report can show the gain.
    #[serde(default = "default_true")]
    pub baseline: bool,
    /// `cpu` or `cuda:N`; by default the device the service (or `distillery run`) was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Settings to try first, each judged on validation data; the best is then trained as the
    /// job's student (with its repeats) and judged once on the held-out split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepSpec>,
}

pub(super) fn default_true() -> bool {
    true
}

pub const MAX_EPOCHS: u32 = 100_000;
pub const MAX_BATCH_SIZE: usize = 65_536;
pub const MAX_LAYER_WIDTH: usize = 65_536;
pub const MAX_LAYERS: usize = 64;
pub const MAX_TEACHERS: usize = 8;
pub const MAX_SEQUENCE_LENGTH: usize = 512;

/// Parses a JSON body into a spec, naming the field of the first problem.
pub fn parse(body: &[u8]) -> Result<JobSpec, SpecError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let spec: JobSpec = serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = inner.to_string();
        SpecError::new(field_of(&path, &message), message)
    })?;
    Ok(spec)
}

/// serde reports an unknown or missing field at its parent; name the field itself.
fn field_of(path: &str, message: &str) -> String {
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix)?.split('`').next());
    let parent = if path == "." { "" } else { path };
    match named {
        Some(name) if parent == name || parent.ends_with(&format!(".{name}")) => parent.to_string(),
        Some(name) if parent.is_empty() => name.to_string(),
        Some(name) => format!("{parent}.{name}"),
        None if parent.is_empty() => "body".to_string(),
        None => parent.to_string(),
    }
}

impl JobSpec {
    /// Range and consistency checks that need no files. Dataset and teacher files are checked by
    /// the engine (`engine::preflight`), which knows their formats.
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(name) = &self.name {
            if name.len() > 200 {
                return Err(SpecError::new("name", "must be at most 200 characters"));
            }
        }
        self.dataset.validate()?;
        let teachers = self.teacher_specs();
        match (&self.teacher, &self.teachers) {
            (Some(_), Some(_)) => return Err(SpecError::new("teachers", "give `teacher` or `teachers`, not both")),
            (None, None) => return Err(SpecError::new("teacher", "required (or `teachers`, an ensemble)")),
            (None, Some(list)) if list.is_empty() || list.len() > MAX_TEACHERS => {
                return Err(SpecError::new("teachers", format!("give 1 to {MAX_TEACHERS} teachers")))
            }
            _ => {}
        }
        for (i, teacher) in teachers.iter().enumerate() {
            let field = match self.teacher {
                Some(_) => "teacher".to_string(),
                None => format!("teachers[{i}]"),
            };
            teacher.validate(&field)?;
        }
        validate_arch(&self.student.arch, "student.arch")?;
        self.validate_language_model()?;
        if !self.is_language_model() {
            self.validate_text(&teachers)?;
        }
        for (i, copy) in self.student.init_from_teacher.iter().enumerate() {
            validate_layer_name(&copy.student_layer, &format!("student.init_from_teacher[{i}].student_layer"))?;
            validate_layer_name(&copy.teacher_layer, &format!("student.init_from_teacher[{i}].teacher_layer"))?;
        }
        self.distill.validate(teachers.len())?;
        if let Some(augment) = &self.training.augment {
            if augment.shift == 0 || augment.shift > 16 {
                return Err(SpecError::new("training.augment.shift", "must be within [1, 16] pixels"));
            }
        }
        if let Some(early) = &self.training.early_stopping {
            if early.patience == 0 || early.patience > MAX_EPOCHS {
                return Err(SpecError::new("training.early_stopping.patience", "must be at least 1 epoch"));
            }
            if !(early.min_delta.is_finite() && early.min_delta >= 0.0) {
                return Err(SpecError::new("training.early_stopping.min_delta", "must be ≥ 0"));
            }
        }
        validate_epochs(self.training.epochs, "training.epochs")?;
        self.training.validate_repeats()?;
        validate_batch(self.training.batch_size, "training.batch_size")?;
        validate_optimizer(&self.training.optimizer, "training.optimizer")?;
        if let Some(device) = &self.device {
            parse_device(device).map_err(|m| SpecError::new("device", m))?;
        }
        if let Some(sweep) = &self.sweep {
            sweep.validate(self)?;
        }
        Ok(())
    }

    /// Transformers, text data and each other: all or none.
    fn validate_text(&self, teachers: &[&TeacherSpec]) -> Result<(), SpecError> {
        let text = self.dataset.source == DatasetSource::Text;
        let student = self.student.arch.transformer();
        for (i, teacher) in teachers.iter().enumerate() {
            if teacher.arch.transformer().is_some() != text {
                let need = if text {
                    "a `transformer` (text data needs a tokenizer and an encoder)"
                } else {
                    "an `mlp` or `conv` (transformers need `text` data)"
                };
                return Err(SpecError::new(format!("{}.arch.kind", self.teacher_field(i)), format!("must be {need}")));
            }
        }
        if student.is_none() && self.student.vocabulary == Vocabulary::Trim {
            return Err(SpecError::new(
                "student.vocabulary",
                "`trim` cuts a transformer's word embeddings; this student has none",
            ));
        }
        if student.is_some() != text {
            let need = if text {
                "a `transformer`, derived from the teacher"
            } else {
                "an `mlp` or `conv` (transformers need `text` data)"
            };
            return Err(SpecError::new("student.arch.kind", format!("must be {need}")));
        }
        if let Some(student) = student {
            if student.path.is_some() {
                let sized = [student.num_layers, student.hidden_size, student.num_heads, student.intermediate_size];
                if student.layers.is_some() || sized.iter().any(Option::is_some) {
                    return Err(SpecError::new(
                        "student.arch.path",
                        "a pretrained student is used as its folder has it; leave out `layers` and sizes (or leave out `path` to derive the student from the teacher)",
                    ));
                }
                if self.student.vocabulary == Vocabulary::Trim {
                    return Err(SpecError::new(
                        "student.vocabulary",
                        "`trim` cuts a student derived from the teacher; a pretrained student keeps its folder's vocabulary",
                    ));
                }
            }
            if teachers.len() > 1 {
                return Err(SpecError::new(
                    "teachers",
                    "a transformer student learns from one teacher (its tokenizer and layers)",
                ));
            }
            if !self.student.init_from_teacher.is_empty() {
                return Err(SpecError::new(
                    "student.init_from_teacher",
                    "transformer students copy teacher layers through `student.arch.layers` and `init`",
                ));
            }
            // Unlabelled texts: embedding distillation, through the teacher's layers alone.
            if self.dataset.label_column.is_none() {
                if teachers.iter().any(|t| t.train.is_some()) {
                    return Err(SpecError::new(
                        format!("{}.train", self.teacher_field(0)),
                        "fine-tuning needs labels (`dataset.label_column`); unlabelled texts distil an encoder as it is",
                    ));
                }
                if self.distill.intermediate.is_empty() {
                    return Err(SpecError::new(
                        "distill.intermediate",
                        "without `dataset.label_column` the texts are unlabelled and distil through layers alone, e.g. [{\"teacher_layer\": \"pooled\", \"student_layer\": \"pooled\", \"loss\": \"cosine\"}]; for a classifier, name the label column",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The teachers, whether the spec gave one or an ensemble.
    pub fn teacher_specs(&self) -> Vec<&TeacherSpec> {
        match (&self.teacher, &self.teachers) {
            (Some(one), _) => vec![one],
            (None, Some(list)) => list.iter().collect(),
            (None, None) => Vec::new(),
        }
    }

    /// The spec field that names teacher `index`.
    pub fn teacher_field(&self, index: usize) -> String {
        match self.teacher {
            Some(_) => "teacher".into(),
            None => format!("teachers[{index}]"),
        }
    }

    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| "unnamed".into())
    }
}
