//! What a finished job leaves for its user: `config.json` (how to rebuild and feed the
//! student), `report.json`, and for text jobs the student as a Hugging Face folder and its tar.

use std::path::Path;

use super::phases::{file_of, Run};
use crate::engine::data::Dataset;
use crate::engine::files::{write_atomic, write_json};
use crate::engine::job::report::Report;
use crate::engine::job::text::{self, TextSetup};
use crate::engine::models::{Blueprint, Net};
use crate::engine::{EngineError, EngineEvent, Phase};
use crate::spec::ArchSpec;

use crate::layout::{CONFIG_FILE, REPORT_FILE};

/// With repeated seeds, the best run's weights copied to `student.safetensors`, where a single
/// run leaves them; returns the name.
pub(super) fn best_run(run: &Run, job_dir: &Path, sink: &mut dyn FnMut(EngineEvent)) -> Result<String, EngineError> {
    let exported = file_of(Phase::Student(0));
    let bytes = std::fs::read(job_dir.join(file_of(Phase::Student(run.number))))?;
    write_atomic(&job_dir.join(&exported), &bytes)?;
    sink(EngineEvent::Log(format!(
        "exported student: run {} (seed {}), the best on the validation split held out of training",
        run.number, run.seed
    )));
    Ok(exported)
}

/// For text jobs, the student as a Hugging Face folder and its tar; returns the tar's name.
pub(super) fn hugging_face(
    student: &Net,
    data: &Dataset,
    setup: &TextSetup,
    job_dir: &Path,
    sink: &mut dyn FnMut(EngineEvent),
) -> Result<String, EngineError> {
    let names: Vec<String> =
        data.label_names.clone().unwrap_or_else(|| (0..data.classes).map(|c| c.to_string()).collect());
    // An I/O error keeps its kind, so a full disk is recognised as one.
    text::export(student, &names, setup.student_folder(), job_dir)?;
    sink(EngineEvent::Log(format!(
        "student exported as a Hugging Face folder: {} (and {})",
        text::HF_FOLDER,
        text::HF_ARCHIVE
    )));
    Ok(text::HF_ARCHIVE.into())
}

/// `config.json` and `report.json`; returns their names.
pub(super) fn write_results(
    arch: &ArchSpec,
    data: &Dataset,
    blueprint: &Blueprint,
    report: &Report,
    job_dir: &Path,
) -> Result<Vec<String>, EngineError> {
    write_json(&job_dir.join(CONFIG_FILE), &export_config(arch, data, blueprint))?;
    write_json(&job_dir.join(REPORT_FILE), report)?;
    Ok(vec![CONFIG_FILE.into(), REPORT_FILE.into()])
}

/// `config.json`: everything needed to rebuild the student and feed it inputs.
fn export_config(arch: &ArchSpec, data: &Dataset, blueprint: &Blueprint) -> serde_json::Value {
    let tensors: Vec<&str> = blueprint.params.iter().chain(&blueprint.buffers).map(|(n, _)| n.as_str()).collect();
    let (format, layout) = match arch {
        ArchSpec::Mlp { .. } => ("distillery.mlp", "layers.{i}.weight is out×in, y = x·Wᵀ + b, ReLU between layers, no activation after the last"),
        ArchSpec::Transformer(_) | ArchSpec::Llama(_) => (
            "distillery.transformer",
            "a Hugging Face BERT-family model; student-hf.tar holds it as a folder (config.json, model.safetensors with Hugging Face names, the tokenizer) that transformers and candle load; input rows here are token ids, segment ids and attention mask, each max_length long",
        ),
        ArchSpec::Conv { .. } => (
            "distillery.conv",
            "input as C×H×W; each block: conv (PyTorch Conv2d layout out×in×k×k, zero padding) → BatchNorm2d (eps 1e-5, running statistics) when present → ReLU → pooling (window = stride = pool_size); then flatten in C×H×W order and the MLP head as in distillery.mlp",
        ),
    };
    serde_json::json!({
        "format": format,
        "version": 1,
        "arch": arch,
        "input_features": data.features,
        "image": data.image,
        "num_classes": data.classes,
        "label_names": data.label_names,
        "layer_outputs": blueprint.outputs,
        "activation": "relu",
        "tensors": tensors,
        "layout": layout,
        "dtype": "f32",
        "normalization": data.normalization,
        "input_preparation": "x = (raw − normalization.mean) / normalization.std, per feature",
    })
}
