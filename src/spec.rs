//! The job specification: what a job may say, and the one place that decides whether it is
//! acceptable. The API and the CLI both parse and validate through here.

use serde::{Deserialize, Serialize};

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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// `builtin:digits`, `csv`, `idx` or `text`.
    pub source: String,
    /// CSV: the training file, relative to the data root's `datasets/` folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// CSV: an optional separate held-out file with the same columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_path: Option<String>,
    /// CSV: the name of the label column (default `label`). Text: the label column; without one
    /// the texts are unlabelled and only embedding distillation applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_column: Option<String>,
    /// Text: the column (CSV/TSV header or JSONL key) holding the text (default `text`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_column: Option<String>,
    /// Text: a second text column for sentence-pair tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_pair_column: Option<String>,
    /// Text: tokens per sequence after truncation and padding (default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// IDX: training images and labels files (raw or .gz).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// IDX: optional held-out images and labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_images: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_labels: Option<String>,
    /// Fraction of the data held out for validation when there is no test file.
    #[serde(default = "default_validation_split")]
    pub validation_split: f64,
    /// Number of classes; by default the largest integer label + 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    /// Use only the first N training samples (after the split), e.g. for quick trials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum ArchSpec {
    Mlp {
        hidden: Vec<usize>,
        #[serde(default)]
        dropout: f32,
    },
    /// Conv blocks over image data, then an MLP head (`hidden` may be empty).
    Conv {
        blocks: Vec<ConvBlock>,
        #[serde(default)]
        hidden: Vec<usize>,
        #[serde(default)]
        dropout: f32,
    },
    /// A BERT-family encoder. A teacher names a Hugging Face folder (`path`); a student derives
    /// from its teacher: the teacher layers it keeps (`layers`), or a smaller config.
    Transformer(TransformerArch),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerArch {
    /// Teacher: a folder under the data root with `config.json`, `model.safetensors` and
    /// `tokenizer.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Student: the teacher layers it keeps, in order (DistilBERT's every other layer: [0, 2, 4]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<usize>>,
    /// Student sizes; each defaults to the teacher's (layers: half of the teacher's, rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_layers: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate_size: Option<usize>,
    /// Student: `teacher` copies every teacher tensor whose shape fits (layer `i` from the
    /// teacher layer it maps to); `random` starts from scratch.
    #[serde(default)]
    pub init: TransformerInit,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransformerInit {
    #[default]
    Teacher,
    Random,
}

impl ArchSpec {
    pub fn hidden(&self) -> &[usize] {
        match self {
            ArchSpec::Mlp { hidden, .. } | ArchSpec::Conv { hidden, .. } => hidden,
            ArchSpec::Transformer(_) => &[],
        }
    }

    pub fn blocks(&self) -> &[ConvBlock] {
        match self {
            ArchSpec::Conv { blocks, .. } => blocks,
            _ => &[],
        }
    }

    pub fn dropout(&self) -> f32 {
        match self {
            ArchSpec::Mlp { dropout, .. } | ArchSpec::Conv { dropout, .. } => *dropout,
            ArchSpec::Transformer(_) => 0.0,
        }
    }

    pub fn transformer(&self) -> Option<&TransformerArch> {
        match self {
            ArchSpec::Transformer(t) => Some(t),
            _ => None,
        }
    }
}

/// conv (k×k, stride, zero padding) → batch norm (optional) → ReLU → pooling (optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvBlock {
    pub channels: usize,
    pub kernel: usize,
    #[serde(default = "default_one")]
    pub stride: usize,
    #[serde(default)]
    pub padding: usize,
    #[serde(default)]
    pub batch_norm: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolKind>,
    /// Pooling window and stride.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    Max,
    Avg,
}

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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerCopy {
    pub student_layer: String,
    pub teacher_layer: String,
}

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    pub epochs: u32,
    pub batch_size: usize,
    pub optimizer: OptimizerSpec,
    #[serde(default)]
    pub schedule: Schedule,
    /// Linear warm-up steps before the schedule (cosine) takes over.
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub checkpoint_every: CheckpointEvery,
    /// Random shifts of image inputs, the same for teachers and student.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<AugmentSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentSpec {
    /// Largest shift in pixels, along each axis; the uncovered border is background (raw 0).
    pub shift: usize,
}

/// Stop a phase when the validation loss has not improved by `min_delta` for `patience`
/// epochs; the best epoch's weights are the phase's result. The validation samples are then
/// held out of the training split, so the reported held-out set stays unseen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    pub patience: u32,
    #[serde(default)]
    pub min_delta: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum OptimizerSpec {
    Adamw {
        lr: f64,
        #[serde(default = "default_weight_decay")]
        weight_decay: f64,
        #[serde(default = "default_beta1")]
        beta1: f64,
        #[serde(default = "default_beta2")]
        beta2: f64,
        #[serde(default = "default_eps")]
        eps: f64,
    },
    Sgd {
        lr: f64,
        #[serde(default = "default_momentum")]
        momentum: f64,
        #[serde(default)]
        weight_decay: f64,
    },
}

impl OptimizerSpec {
    pub fn lr(&self) -> f64 {
        match *self {
            OptimizerSpec::Adamw { lr, .. } | OptimizerSpec::Sgd { lr, .. } => lr,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    #[default]
    Constant,
    Cosine,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointEvery {
    #[default]
    Epoch,
}

fn default_true() -> bool {
    true
}
fn default_one() -> usize {
    1
}
fn default_pool_size() -> usize {
    2
}
fn default_weight() -> f64 {
    1.0
}
fn default_validation_split() -> f64 {
    0.2
}
fn default_weight_decay() -> f64 {
    0.01
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_momentum() -> f64 {
    0.9
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
        self.validate_text(&teachers)?;
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
        validate_batch(self.training.batch_size, "training.batch_size")?;
        validate_optimizer(&self.training.optimizer, "training.optimizer")?;
        if let Some(device) = &self.device {
            parse_device(device).map_err(|m| SpecError::new("device", m))?;
        }
        Ok(())
    }

    /// Transformers, text data and each other: all or none.
    fn validate_text(&self, teachers: &[&TeacherSpec]) -> Result<(), SpecError> {
        let text = self.dataset.source == "text";
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
                return Err(SpecError::new(
                    "student.arch.path",
                    "a student is derived from its teacher; give `layers` or sizes instead",
                ));
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

impl TeacherSpec {
    fn validate(&self, field: &str) -> Result<(), SpecError> {
        validate_arch(&self.arch, &format!("{field}.arch"))?;
        if !(self.weight.is_finite() && self.weight > 0.0) {
            return Err(SpecError::new(format!("{field}.weight"), "must be > 0"));
        }
        if let Some(t) = self.arch.transformer() {
            if t.path.is_none() {
                return Err(SpecError::new(
                    format!("{field}.arch.path"),
                    "a transformer teacher is a Hugging Face folder under the data root",
                ));
            }
            let student_only = [
                ("layers", t.layers.is_some()),
                ("num_layers", t.num_layers.is_some()),
                ("hidden_size", t.hidden_size.is_some()),
                ("num_heads", t.num_heads.is_some()),
                ("intermediate_size", t.intermediate_size.is_some()),
            ];
            if let Some((name, _)) = student_only.iter().find(|(_, given)| *given) {
                return Err(SpecError::new(
                    format!("{field}.arch.{name}"),
                    "a teacher's sizes come from its config.json",
                ));
            }
            if self.weights.is_some() {
                return Err(SpecError::new(
                    format!("{field}.weights"),
                    "a transformer teacher's weights are its folder's model.safetensors",
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

fn validate_phase_train(train: &PhaseTrainSpec, field: &str) -> Result<(), SpecError> {
    validate_epochs(train.epochs, &format!("{field}.train.epochs"))?;
    if let Some(batch) = train.batch_size {
        validate_batch(batch, &format!("{field}.train.batch_size"))?;
    }
    if let Some(opt) = &train.optimizer {
        validate_optimizer(opt, &format!("{field}.train.optimizer"))?;
    }
    Ok(())
}

impl DistillSpec {
    fn validate(&self, teachers: usize) -> Result<(), SpecError> {
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
fn validate_layer_name(name: &str, field: &str) -> Result<(), SpecError> {
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

impl DatasetSpec {
    fn validate(&self) -> Result<(), SpecError> {
        let allowed: &[&str] = match self.source.as_str() {
            "builtin:digits" => &[],
            "csv" => &["path", "test_path", "label_column"],
            "idx" => &["images", "labels", "test_images", "test_labels"],
            "text" => &["path", "test_path", "label_column", "text_column", "text_pair_column", "max_length"],
            other => {
                return Err(SpecError::new(
                    "dataset.source",
                    format!("unknown source `{other}`; expected `builtin:digits`, `csv`, `idx` or `text`"),
                ))
            }
        };
        let given = [
            ("path", &self.path),
            ("test_path", &self.test_path),
            ("label_column", &self.label_column),
            ("images", &self.images),
            ("labels", &self.labels),
            ("test_images", &self.test_images),
            ("test_labels", &self.test_labels),
            ("text_column", &self.text_column),
            ("text_pair_column", &self.text_pair_column),
        ];
        if self.max_length.is_some() && !allowed.contains(&"max_length") {
            return Err(SpecError::new("dataset.max_length", format!("not used by source `{}`", self.source)));
        }
        if let Some(length) = self.max_length {
            if !(4..=MAX_SEQUENCE_LENGTH).contains(&length) {
                return Err(SpecError::new("dataset.max_length", format!("must be within [4, {MAX_SEQUENCE_LENGTH}]")));
            }
        }
        for (name, value) in given {
            if value.is_some() && !allowed.contains(&name) {
                return Err(SpecError::new(format!("dataset.{name}"), format!("not used by source `{}`", self.source)));
            }
        }
        let required: &[(&str, &Option<String>)] = match self.source.as_str() {
            "csv" | "text" => &[("path", &self.path)],
            "idx" => &[("images", &self.images), ("labels", &self.labels)],
            _ => &[],
        };
        for (name, value) in required {
            if value.is_none() {
                return Err(SpecError::new(
                    format!("dataset.{name}"),
                    format!("required for source `{}`", self.source),
                ));
            }
        }
        if self.test_images.is_some() != self.test_labels.is_some() {
            return Err(SpecError::new("dataset.test_labels", "`test_images` and `test_labels` go together"));
        }
        let columns = ["label_column", "text_column", "text_pair_column"];
        for (name, value) in given.iter().filter(|(name, _)| !columns.contains(name)) {
            if let Some(path) = value {
                validate_relative_path(path, &format!("dataset.{name}"))?;
            }
        }
        let split = self.validation_split;
        if !(split.is_finite() && split > 0.0 && split < 1.0) {
            return Err(SpecError::new("dataset.validation_split", format!("must be within (0, 1), got {split}")));
        }
        if let Some(classes) = self.num_classes {
            if !(2..=100_000).contains(&classes) {
                return Err(SpecError::new("dataset.num_classes", "must be within [2, 100000]"));
            }
        }
        if self.limit == Some(0) {
            return Err(SpecError::new("dataset.limit", "must be at least 1"));
        }
        Ok(())
    }

    pub fn has_test_file(&self) -> bool {
        self.test_path.is_some() || self.test_images.is_some()
    }
}

fn validate_arch(arch: &ArchSpec, field: &str) -> Result<(), SpecError> {
    match arch {
        ArchSpec::Mlp { hidden, dropout } => {
            if hidden.is_empty() {
                return Err(SpecError::new(format!("{field}.hidden"), "an MLP needs at least one hidden layer"));
            }
            if hidden.len() > MAX_LAYERS {
                return Err(SpecError::new(format!("{field}.hidden"), format!("at most {MAX_LAYERS} hidden layers")));
            }
            if let Some(i) = hidden.iter().position(|&w| w == 0 || w > MAX_LAYER_WIDTH) {
                return Err(SpecError::new(
                    format!("{field}.hidden[{i}]"),
                    format!("layer width must be within [1, {MAX_LAYER_WIDTH}]"),
                ));
            }
            validate_dropout(*dropout, field)?;
        }
        ArchSpec::Conv { blocks, hidden, dropout } => {
            if blocks.is_empty() || blocks.len() > MAX_LAYERS {
                return Err(SpecError::new(format!("{field}.blocks"), format!("give 1 to {MAX_LAYERS} conv blocks")));
            }
            for (i, b) in blocks.iter().enumerate() {
                let f = format!("{field}.blocks[{i}]");
                if b.channels == 0 || b.channels > MAX_LAYER_WIDTH {
                    return Err(SpecError::new(
                        format!("{f}.channels"),
                        format!("must be within [1, {MAX_LAYER_WIDTH}]"),
                    ));
                }
                if b.kernel == 0 || b.kernel > 15 {
                    return Err(SpecError::new(format!("{f}.kernel"), "must be within [1, 15]"));
                }
                if b.stride == 0 || b.stride > b.kernel.max(1) {
                    return Err(SpecError::new(format!("{f}.stride"), "must be within [1, kernel]"));
                }
                if b.padding >= b.kernel {
                    return Err(SpecError::new(format!("{f}.padding"), "must be smaller than the kernel"));
                }
                if !(2..=8).contains(&b.pool_size) {
                    return Err(SpecError::new(format!("{f}.pool_size"), "must be within [2, 8]"));
                }
            }
            if hidden.len() > MAX_LAYERS {
                return Err(SpecError::new(format!("{field}.hidden"), format!("at most {MAX_LAYERS} hidden layers")));
            }
            if let Some(i) = hidden.iter().position(|&w| w == 0 || w > MAX_LAYER_WIDTH) {
                return Err(SpecError::new(
                    format!("{field}.hidden[{i}]"),
                    format!("layer width must be within [1, {MAX_LAYER_WIDTH}]"),
                ));
            }
            validate_dropout(*dropout, field)?;
        }
        ArchSpec::Transformer(t) => {
            if let Some(path) = &t.path {
                validate_relative_path(path, &format!("{field}.path"))?;
            }
            if let Some(layers) = &t.layers {
                if layers.is_empty() || layers.len() > MAX_LAYERS {
                    return Err(SpecError::new(format!("{field}.layers"), format!("keep 1 to {MAX_LAYERS} layers")));
                }
                if t.num_layers.is_some_and(|n| n != layers.len()) {
                    return Err(SpecError::new(
                        format!("{field}.num_layers"),
                        "must equal the number of `layers` kept (or be left out)",
                    ));
                }
            }
            let sizes = [
                ("num_layers", t.num_layers),
                ("hidden_size", t.hidden_size),
                ("num_heads", t.num_heads),
                ("intermediate_size", t.intermediate_size),
            ];
            for (name, value) in sizes {
                if value.is_some_and(|v| v == 0 || v > MAX_LAYER_WIDTH) {
                    return Err(SpecError::new(
                        format!("{field}.{name}"),
                        format!("must be within [1, {MAX_LAYER_WIDTH}]"),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn validate_dropout(dropout: f32, field: &str) -> Result<(), SpecError> {
    if !(dropout.is_finite() && (0.0..1.0).contains(&dropout)) {
        return Err(SpecError::new(format!("{field}.dropout"), format!("must be within [0, 1), got {dropout}")));
    }
    Ok(())
}

fn validate_epochs(epochs: u32, field: &str) -> Result<(), SpecError> {
    if epochs == 0 || epochs > MAX_EPOCHS {
        return Err(SpecError::new(field, format!("must be within [1, {MAX_EPOCHS}], got {epochs}")));
    }
    Ok(())
}

fn validate_batch(batch: usize, field: &str) -> Result<(), SpecError> {
    if batch == 0 || batch > MAX_BATCH_SIZE {
        return Err(SpecError::new(field, format!("must be within [1, {MAX_BATCH_SIZE}], got {batch}")));
    }
    Ok(())
}

fn validate_optimizer(opt: &OptimizerSpec, field: &str) -> Result<(), SpecError> {
    let lr = opt.lr();
    if !(lr.is_finite() && lr > 0.0 && lr <= 10.0) {
        return Err(SpecError::new(format!("{field}.lr"), format!("must be within (0, 10], got {lr}")));
    }
    let in_unit = |v: f64| v.is_finite() && (0.0..1.0).contains(&v);
    match *opt {
        OptimizerSpec::Adamw { weight_decay, beta1, beta2, eps, .. } => {
            if !(weight_decay.is_finite() && weight_decay >= 0.0) {
                return Err(SpecError::new(format!("{field}.weight_decay"), "must be ≥ 0"));
            }
            if !in_unit(beta1) {
                return Err(SpecError::new(format!("{field}.beta1"), "must be within [0, 1)"));
            }
            if !in_unit(beta2) {
                return Err(SpecError::new(format!("{field}.beta2"), "must be within [0, 1)"));
            }
            if !(eps.is_finite() && eps > 0.0) {
                return Err(SpecError::new(format!("{field}.eps"), "must be > 0"));
            }
        }
        OptimizerSpec::Sgd { momentum, weight_decay, .. } => {
            if !in_unit(momentum) {
                return Err(SpecError::new(format!("{field}.momentum"), "must be within [0, 1)"));
            }
            if !(weight_decay.is_finite() && weight_decay >= 0.0) {
                return Err(SpecError::new(format!("{field}.weight_decay"), "must be ≥ 0"));
            }
        }
    }
    Ok(())
}

/// Paths in a spec are relative to the data root; refuse anything that could leave it.
fn validate_relative_path(path: &str, field: &str) -> Result<(), SpecError> {
    let p = std::path::Path::new(path);
    let escapes =
        p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) || path.is_empty();
    if escapes {
        return Err(SpecError::new(
            field,
            format!("`{path}` must be a relative path inside the data root, without `..`"),
        ));
    }
    Ok(())
}

/// A device the job asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

pub fn parse_device(text: &str) -> Result<DeviceSpec, String> {
    if text == "cpu" {
        return Ok(DeviceSpec::Cpu);
    }
    let ordinal = text.strip_prefix("cuda:").or(if text == "cuda" { Some("0") } else { None });
    match ordinal.map(str::parse::<usize>) {
        Some(Ok(n)) if cfg!(feature = "cuda") => Ok(DeviceSpec::Cuda(n)),
        Some(Ok(_)) => Err(format!("`{text}` needs a build with the `cuda` feature; this build runs on `cpu` only")),
        _ => Err(format!("unknown device `{text}`; expected `cpu` or `cuda:N`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn example() -> serde_json::Value {
        serde_json::json!({
            "dataset": {"source": "builtin:digits"},
            "teacher": {"arch": {"kind": "mlp", "hidden": [64]}, "train": {"epochs": 2}},
            "student": {"arch": {"kind": "mlp", "hidden": [16]}},
            "distill": {"temperature": 4.0, "alpha": 0.7},
            "training": {"epochs": 2, "batch_size": 64, "optimizer": {"kind": "adamw", "lr": 0.001}}
        })
    }

    fn check(value: serde_json::Value) -> Result<JobSpec, SpecError> {
        let spec = parse(value.to_string().as_bytes())?;
        spec.validate()?;
        Ok(spec)
    }

    #[test]
    fn example_is_accepted_with_defaults() {
        let spec = check(example()).unwrap();
        assert!(spec.baseline);
        assert_eq!(spec.device, None);
        assert_eq!(spec.training.schedule, Schedule::Constant);
    }

    #[test]
    fn unknown_and_missing_fields_are_named() {
        let mut v = example();
        v["distill"]["temprature"] = 4.0.into();
        assert_eq!(check(v).unwrap_err().field, "distill.temprature");
        let mut v = example();
        v["training"].as_object_mut().unwrap().remove("epochs");
        assert_eq!(check(v).unwrap_err().field, "training.epochs");
        let mut v = example();
        v["training"]["batch_size"] = "many".into();
        assert_eq!(check(v).unwrap_err().field, "training.batch_size");
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let cases: &[(&str, &str, serde_json::Value)] = &[
            ("distill", "temperature", 0.0.into()),
            ("distill", "alpha", 1.5.into()),
            ("training", "epochs", 0.into()),
            ("training", "batch_size", 0.into()),
        ];
        for (section, key, value) in cases {
            let mut v = example();
            v[section][key] = value.clone();
            assert_eq!(check(v).unwrap_err().field, format!("{section}.{key}"));
        }
        let mut v = example();
        v["student"]["arch"]["hidden"] = serde_json::json!([]);
        assert_eq!(check(v).unwrap_err().field, "student.arch.hidden");
    }

    #[test]
    fn schedules_are_numbers_or_start_and_end() {
        let mut v = example();
        v["distill"]["alpha"] = serde_json::json!({"start": 0.9, "end": 0.1});
        let spec = check(v).unwrap();
        assert_eq!(spec.distill.alpha.at(0.0), 0.9);
        assert!((spec.distill.alpha.at(0.5) - 0.5).abs() < 1e-12);
        assert!((spec.distill.alpha.at(1.0) - 0.1).abs() < 1e-12);
        let mut v = example();
        v["distill"]["alpha"] = serde_json::json!({"start": 0.9, "end": 0.1, "steps": 3});
        assert_eq!(check(v).unwrap_err().field, "distill.alpha");
        let mut v = example();
        v["distill"]["temperature"] = serde_json::json!({"start": 4, "end": 0});
        assert_eq!(check(v).unwrap_err().field, "distill.temperature");
    }

    #[test]
    fn paths_may_not_leave_the_data_root() {
        for path in ["../etc/passwd", "/etc/passwd", "a/../../b", ""] {
            let mut v = example();
            v["dataset"] = serde_json::json!({"source": "csv", "path": path});
            assert_eq!(check(v).unwrap_err().field, "dataset.path", "{path}");
        }
    }

    #[test]
    fn devices_parse() {
        assert_eq!(parse_device("cpu"), Ok(DeviceSpec::Cpu));
        assert!(parse_device("tpu").is_err());
        assert_eq!(parse_device("cuda:1").is_ok(), cfg!(feature = "cuda"));
    }
}
