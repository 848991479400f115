//! The teacher a causal-LM job reads (a Hugging Face folder or a GGUF file under the data root)
//! and the student it derives from it.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::engine::data::root::DataRoot;
use crate::engine::models::llama::{self, Llama, LlamaConfig};
use crate::engine::models::{gguf, ModelError};
use crate::engine::rng::Rng;
use crate::engine::train::PhaseContext;
use crate::spec::{DistillMode, JobSpec, LayerCopy, SpecError, TransformerInit};

const FIELD: &str = "teacher.arch.path";

/// The teacher's continuations of the training prompts (sequence mode), one JSON object a line.
pub const GENERATIONS_FILE: &str = "teacher-generations.jsonl";

/// What every phase of a job, its report and its export share: the spec, the teacher as read,
/// the student derived from it, where files and events go, and the end-of-sequence token.
pub struct Job<'a, 'c> {
    pub spec: &'a JobSpec,
    pub teacher: &'a Llama,
    pub header: &'a TeacherHeader,
    pub plan: &'a StudentPlan,
    pub ctx: PhaseContext<'c>,
    pub eos: u32,
}

/// A Hugging Face folder's files that travel with an exported student when present.
pub const TOKENIZER_FILES: [&str; 3] = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"];

/// What the teacher's path names, before its tensors are read.
pub struct TeacherHeader {
    pub config: LlamaConfig,
    pub tokenizer: Tokenizer,
    /// A folder's tokenizer files (name, bytes); none for a GGUF file, whose tokenizer is rebuilt.
    pub tokenizer_files: Vec<(&'static str, Vec<u8>)>,
}

fn teacher_path(spec: &JobSpec) -> Result<&str, SpecError> {
    spec.teacher_specs()
        .first()
        .and_then(|t| t.arch.llama())
        .and_then(|t| t.path.as_deref())
        .ok_or_else(|| SpecError::new(FIELD, "required"))
}

fn is_gguf(path: &str) -> bool {
    path.to_ascii_lowercase().ends_with(".gguf")
}

fn refuse(e: ModelError) -> SpecError {
    SpecError::new(FIELD, e.to_string())
}

/// The teacher's sizes and tokenizer, read without its tensors (admission).
pub fn read_header(spec: &JobSpec, root: &DataRoot) -> Result<TeacherHeader, SpecError> {
    let path = teacher_path(spec)?;
    if is_gguf(path) {
        let file = checked_gguf(root, path)?;
        let header = gguf::read_header(&file).map_err(refuse)?;
        return Ok(TeacherHeader { config: header.config, tokenizer: header.tokenizer, tokenizer_files: Vec::new() });
    }
    let raw: serde_json::Value = serde_json::from_slice(&root.read(&format!("{path}/config.json"), FIELD)?)
        .map_err(|e| SpecError::new(FIELD, format!("config.json is unreadable: {e}")))?;
    let config = LlamaConfig::from_hf(&raw).map_err(refuse)?;
    let mut tokenizer_files = Vec::new();
    for name in TOKENIZER_FILES.into_iter().filter(|n| *n == "tokenizer.json" || root.exists(&format!("{path}/{n}"))) {
        tokenizer_files.push((name, root.read(&format!("{path}/{name}"), FIELD)?));
    }
    let tokenizer = Tokenizer::from_bytes(&tokenizer_files[0].1)
        .map_err(|e| SpecError::new(FIELD, format!("tokenizer.json is unreadable: {e}")))?;
    Ok(TeacherHeader { config, tokenizer, tokenizer_files })
}

/// A GGUF file under the data root, no larger than the root allows.
fn checked_gguf(root: &DataRoot, path: &str) -> Result<std::path::PathBuf, SpecError> {
    let file = root.resolve(path, FIELD)?;
    let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(u64::MAX);
    if bytes > root.max_file_bytes() {
        return Err(SpecError::new(
            FIELD,
            format!("`{path}` is {bytes} bytes; the service reads files of at most {}", root.max_file_bytes()),
        ));
    }
    Ok(file)
}

/// The teacher with its tensors, and its header.
pub fn read_teacher(spec: &JobSpec, root: &DataRoot, device: &Device) -> Result<(Llama, TeacherHeader), SpecError> {
    let path = teacher_path(spec)?;
    if is_gguf(path) {
        let (model, tokenizer) = gguf::load(&checked_gguf(root, path)?, device).map_err(refuse)?;
        let header = TeacherHeader { config: model.config.clone(), tokenizer, tokenizer_files: Vec::new() };
        return Ok((model, header));
    }
    let header = read_header(spec, root)?;
    let weights = root.read(&format!("{path}/model.safetensors"), FIELD)?;
    let model = llama::with_weights(header.config.clone(), &weights, device).map_err(refuse)?;
    Ok((model, header))
}

/// The student's sizes, and for each of its layers the teacher layer it starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct StudentPlan {
    pub config: LlamaConfig,
    pub layer_map: Vec<usize>,
    pub init: TransformerInit,
}

/// The student the spec derives from a teacher of `teacher` sizes: the layers it keeps (or
/// evenly spaced ones, half of the teacher's by default) and its sizes.
pub fn student_plan(spec: &JobSpec, teacher: &LlamaConfig) -> Result<StudentPlan, SpecError> {
    let arch = spec.student.arch.llama().ok_or_else(|| SpecError::new("student.arch.kind", "must be `llama`"))?;
    let layer_map = match &arch.layers {
        Some(layers) => {
            if let Some(i) = layers.iter().position(|&l| l >= teacher.num_layers) {
                return Err(SpecError::new(
                    format!("student.arch.layers[{i}]"),
                    format!("the teacher has layers 0 to {}", teacher.num_layers - 1),
                ));
            }
            if let Some(i) = layers.windows(2).position(|pair| pair[0] >= pair[1]) {
                return Err(SpecError::new(
                    format!("student.arch.layers[{}]", i + 1),
                    "the layers kept must be in increasing order, each once",
                ));
            }
            layers.clone()
        }
        None => {
            let count = arch.num_layers.unwrap_or(teacher.num_layers.div_ceil(2));
            crate::engine::job::text::evenly_spaced(count, teacher.num_layers)
        }
    };
    let config = LlamaConfig {
        num_layers: layer_map.len(),
        hidden_size: arch.hidden_size.unwrap_or(teacher.hidden_size),
        num_heads: arch.num_heads.unwrap_or(teacher.num_heads),
        num_kv_heads: arch.num_kv_heads.unwrap_or(teacher.num_kv_heads),
        intermediate_size: arch.intermediate_size.unwrap_or(teacher.intermediate_size),
        ..teacher.clone()
    };
    config.check().map_err(|e| SpecError::new("student.arch", e.to_string()))?;
    Ok(StudentPlan { config, layer_map, init: arch.init })
}

impl StudentPlan {
    /// The teacher layers copied, as the report lists them (none for a random start).
    pub fn copies(&self) -> Vec<LayerCopy> {
        if self.init == TransformerInit::Random {
            return Vec::new();
        }
        self.layer_map
            .iter()
            .enumerate()
            .map(|(i, &t)| LayerCopy { student_layer: format!("layers.{i}"), teacher_layer: format!("layers.{t}") })
            .collect()
    }

    /// The student's first weights: random (seeded), then with `init: teacher` every teacher
    /// tensor whose shape fits copied in (layer `i` from the teacher layer it maps to).
    pub fn init(&self, teacher: &Llama, seed: u64, device: &Device) -> Result<Llama, ModelError> {
        let mut tensors: HashMap<String, Tensor> = self.config.init(&mut Rng::new(seed), device)?;
        if self.init == TransformerInit::Teacher {
            for (name, tensor) in tensors.iter_mut() {
                let source = match name.strip_prefix("model.layers.").and_then(|r| r.split_once('.')) {
                    Some((layer, rest)) => {
                        let layer: usize = layer.parse().expect("our own layer names");
                        format!("model.layers.{}.{rest}", self.layer_map[layer])
                    }
                    None => name.clone(),
                };
                if let Some(t) = teacher.hf_tensor(&source).filter(|t| t.dims() == tensor.dims()) {
                    *tensor = t.copy()?;
                }
            }
        }
        Llama::new(self.config.clone(), tensors)
    }
}

/// What the spec alone warns of: a student far below 10% of its teacher, or α = 0 (the student
/// then learns as the baseline does).
pub fn warnings(spec: &JobSpec, teacher: &LlamaConfig, student: &LlamaConfig) -> Vec<String> {
    let mut out = Vec::new();
    let share = student.parameter_count() as f64 / teacher.parameter_count() as f64;
    if share < 0.1 {
        out.push(format!(
            "the student has {:.1}% of the teacher's parameters; below 10% what a student keeps of its teacher falls off fast",
            share * 100.0
        ));
    }
    if spec.distill.mode == DistillMode::Token && spec.distill.alpha.at(0.0) == 0.0 && spec.distill.alpha.at(1.0) == 0.0
    {
        out.push("distill.alpha is 0: the student learns from the corpus alone, like the baseline".into());
    }
    out
}
