//! What a language-model job leaves for its user: `student.safetensors` (Hugging Face names),
//! the student as a `LlamaForCausalLM` folder and its tar, `config.json`, `report.json`, and in
//! sequence mode the teacher's continuations.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};
use tokenizers::Tokenizer;

use super::corpus::Document;
use super::setup::{Job, GENERATIONS_FILE};
use crate::engine::files::{write_json, write_safetensors};
use crate::engine::job::report::Report;
use crate::engine::job::text::write_tar;
use crate::engine::models::llama::Llama;
use crate::engine::{EngineError, Phase};
use crate::layout::{weights_file, CONFIG_FILE, HF_ARCHIVE, HF_FOLDER, REPORT_FILE};
use crate::spec::DistillMode;

/// Writes the results; returns the artifacts' names.
pub(super) fn write(job: &Job, student: &Llama, report: &Report) -> Result<Vec<String>, EngineError> {
    let dir = job.ctx.job_dir;
    let mut artifacts = vec![weights_file(&Phase::Student(0).as_str())];
    if job.spec.baseline {
        artifacts.push(weights_file(&Phase::Baseline(0).as_str()));
    }
    hugging_face(job, student, &dir.join(HF_FOLDER))?;
    artifacts.push(HF_ARCHIVE.into());
    if job.spec.distill.mode == DistillMode::Sequence {
        artifacts.push(GENERATIONS_FILE.into());
    }
    let config = json!({
        "task": "language_model",
        "arch": job.spec.student.arch,
        "block_length": job.spec.block_length(),
        "hugging_face": student.config.to_hf(),
    });
    write_json(&dir.join(CONFIG_FILE), &config)?;
    write_json(&dir.join(REPORT_FILE), report)?;
    artifacts.extend([CONFIG_FILE.into(), REPORT_FILE.into()]);
    Ok(artifacts)
}

/// The student as a folder `transformers` loads with `LlamaForCausalLM` and
/// `AutoTokenizer`, and that folder as a tar.
fn hugging_face(job: &Job, student: &Llama, dir: &Path) -> Result<(), EngineError> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    let mut put = |name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, bytes)?;
        files.push(path);
        Ok(())
    };
    put("config.json", &serde_json::to_vec_pretty(&student.config.to_hf()).map_err(std::io::Error::other)?)?;
    let c = &student.config;
    let generation = json!({"bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "do_sample": false});
    put("generation_config.json", &serde_json::to_vec_pretty(&generation).map_err(std::io::Error::other)?)?;
    if job.header.tokenizer_files.is_empty() {
        // A GGUF teacher: its rebuilt tokenizer, and a config naming the special tokens.
        let tokenizer = job.header.tokenizer.to_string(true).map_err(|e| EngineError::Internal(e.to_string()))?;
        put("tokenizer.json", tokenizer.as_bytes())?;
        put("tokenizer_config.json", &tokenizer_config(&job.header.tokenizer, student))?;
    }
    for (name, bytes) in &job.header.tokenizer_files {
        put(name, bytes)?;
    }
    let weights = dir.join("model.safetensors");
    // transformers reads the format key to know the file holds PyTorch tensors.
    write_safetensors(&weights, &student.named(), Some(&json!({"format": "pt"})))?;
    files.push(weights);
    write_tar(&job.ctx.job_dir.join(HF_ARCHIVE), &files, job.ctx.job_dir)?;
    Ok(())
}

fn tokenizer_config(tokenizer: &Tokenizer, student: &Llama) -> Vec<u8> {
    let name = |id: Option<u32>| id.and_then(|id| tokenizer.id_to_token(id)).map_or(Value::Null, Value::String);
    let config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(student.config.bos_token_id),
        "eos_token": name(student.config.eos_token_id),
        "model_max_length": student.config.max_position_embeddings,
        "clean_up_tokenization_spaces": false,
    });
    serde_json::to_vec_pretty(&config).expect("JSON values serialise")
}

/// The continuations an earlier run wrote, up to its last whole line.
pub(super) fn read_generations(path: &Path) -> Result<Vec<Document>, EngineError> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(Vec::new()) };
    let mut documents = Vec::new();
    let mut whole = 0;
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let value: Value = serde_json::from_str(line)
            .map_err(|e| EngineError::Corrupt(format!("{} is unreadable: {e}", path.display())))?;
        let ids = |key: &str| -> Vec<u32> {
            value[key]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect())
                .unwrap_or_default()
        };
        documents.push(Document { prompt: ids("prompt_ids"), body: ids("response_ids") });
        whole += line.len();
    }
    // A line cut short by a crash is dropped, to be generated again.
    if whole < text.len() {
        std::fs::write(path, &text[..whole])?;
    }
    Ok(documents)
}

pub(super) fn append_generation(
    path: &Path,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    response: &[u32],
) -> Result<(), EngineError> {
    let decode = |ids: &[u32]| tokenizer.decode(ids, false).unwrap_or_default();
    let line = json!({
        "prompt": decode(prompt),
        "response": decode(response),
        "prompt_ids": prompt,
        "response_ids": response,
    });
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(file, "{line}")?;
    file.sync_data()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generations_file_cut_short_keeps_its_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(GENERATIONS_FILE);
        let whole = "{\"prompt_ids\": [1, 2], \"response_ids\": [3]}\n";
        std::fs::write(&path, format!("{whole}{{\"prompt_ids\": [4")).unwrap();
        let documents = read_generations(&path).unwrap();
        assert_eq!(documents, [Document { prompt: vec![1, 2], body: vec![3] }]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), whole, "the torn line is dropped");
        assert!(read_generations(&dir.path().join("absent.jsonl")).unwrap().is_empty());
    }
}
