//! Llama-family causal LMs against `transformers`, through the fixtures written by
//! `scripts/make_llm_fixtures.py`: logits, hidden states and gradients of the tiny random
//! Llama; its GGUF copy read back to the same tensors and tokenizer; the token-level KD losses
//! and their top-k cached versions; and, when the real SmolLM2-135M GGUF is there
//! (`scripts/fetch-smollm2.sh`), its perplexity on a fixture text. Then whole jobs: token- and
//! sequence-level distillation of the tiny Llama, a resume after an interruption, the export
//! reloaded to the same logits, and refusals of bad specs.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use common::{interrupted_at, run, run_to_end, smollm2_gguf, spec};
use distillery::engine::files::read_safetensors;
use distillery::engine::job::report::Task;
use distillery::engine::lm::targets::{head_token_loss, token_loss, TeacherRows};
use distillery::engine::models::gguf;
use distillery::engine::models::llama::{self, Llama};
use distillery::engine::train::loss::LogitLoss;
use distillery::engine::train::top_k_row;
use distillery::engine::{DataRoot, Phase};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("llama.json")).unwrap()).unwrap()
}

fn data(t: &Value) -> Vec<f64> {
    t["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

fn folder_model() -> Llama {
    let dir = fixtures().join("tiny-llama");
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    llama::from_files(&read("config.json"), &read("model.safetensors"), &Device::Cpu).unwrap()
}

/// Element-wise, relative to the largest magnitude in the reference.
fn assert_close(what: &str, got: &Tensor, want: &Value, tolerance: f64) {
    let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    let want = data(want);
    assert_eq!(got.len(), want.len(), "{what}: sizes differ");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let err = (*g as f64 - w).abs() / scale;
        assert!(err <= tolerance, "{what}[{i}]: got {g}, transformers {w}, error {err:e} of the largest element");
    }
}

fn input_ids(reference: &Value) -> Tensor {
    let rows: Vec<Vec<u32>> = serde_json::from_value(reference["input_ids"].clone()).unwrap();
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu).unwrap()
}

#[test]
fn logits_and_hidden_states_match_transformers_in_both_passes() {
    let reference = reference();
    let model = folder_model();
    let ids = input_ids(&reference);
    for train in [false, true] {
        let out = model.forward(&ids, train, true).unwrap();
        assert_close(&format!("logits (train {train})"), &out.logits, &reference["logits"], 1e-4);
        let hidden = Tensor::stack(&out.hidden[..out.hidden.len() - 1], 0).unwrap();
        assert_close(&format!("hidden states (train {train})"), &hidden, &reference["hidden_states"], 1e-4);
    }
    // A frozen teacher's transposed projections: the same logits, and its tensors read back in
    // Hugging Face's layout (a student copies them from there).
    let frozen = model.clone().frozen().unwrap();
    assert!(frozen.transposed);
    let out = frozen.forward(&ids, false, false).unwrap();
    assert_close("logits (frozen)", &out.logits, &reference["logits"], 1e-4);
    for ((name, original), (_, read_back)) in model.named().iter().zip(frozen.named()) {
        let difference = (original - read_back).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(difference, 0.0, "{name} read back from the frozen model");
    }
}

#[test]
fn the_next_token_loss_and_its_gradients_match_transformers() {
    let reference = reference();
    let model = folder_model();
    let named = model.named();
    let vars: Vec<Var> = named.iter().map(|(_, t)| Var::from_tensor(t).unwrap()).collect();
    let tensors: HashMap<String, Tensor> =
        named.iter().zip(&vars).map(|((n, _), v)| (n.clone(), v.as_tensor().clone())).collect();
    let model = Llama::new(model.config.clone(), tensors).unwrap();
    let ids = input_ids(&reference);
    let (b, t) = ids.dims2().unwrap();
    let rows = |values: Tensor| values.narrow(1, 0, t - 1).unwrap().reshape((b * (t - 1), ())).unwrap();
    let next = ids.narrow(1, 1, t - 1).unwrap().flatten_all().unwrap();
    let logits = rows(model.forward(&ids, true, false).unwrap().logits);
    let composed = candle_nn::loss::cross_entropy(&logits, &next).unwrap();
    // The job's path: the output layer and the loss as one op over vocabulary chunks.
    let hidden = rows(model.final_hidden(&ids, true).unwrap());
    let fused = head_token_loss(&hidden, model.output_weight(), None, &next, (LogitLoss::Kl, 1.0, 0.0)).unwrap().total;
    for (path, loss) in [("composed", composed), ("fused", fused)] {
        let got = loss.to_scalar::<f32>().unwrap() as f64;
        let want = reference["loss"].as_f64().unwrap();
        assert!((got - want).abs() / want < 1e-5, "{path} loss {got}, transformers {want}");
        let grads = loss.backward().unwrap();
        for (name, expected) in reference["grads"].as_object().unwrap() {
            let var = &vars[named.iter().position(|(n, _)| n == name).unwrap()];
            assert_close(&format!("{path}: d loss / d {name}"), grads.get(var.as_tensor()).unwrap(), expected, 1e-4);
        }
    }
}

#[test]
fn the_gguf_copy_reads_back_to_the_same_tensors_and_tokenizer() {
    let (from_gguf, tokenizer) = gguf::load(&fixtures().join("tiny-llama.gguf"), &Device::Cpu).unwrap();
    let folder = folder_model();
    assert_eq!(from_gguf.config, folder.config);
    for (name, tensor) in folder.named() {
        let other = &from_gguf.tensors[&name];
        let difference = (other - &tensor).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(difference, 0.0, "{name} differs between the GGUF file and the folder");
    }
    let original = Tokenizer::from_file(fixtures().join("tiny-llama/tokenizer.json")).unwrap();
    for case in reference()["tokenizer"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(original.encode(text, false).unwrap().get_ids(), want.as_slice(), "tokenizer.json on {text:?}");
        let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids, want, "the tokenizer rebuilt from GGUF metadata on {text:?}");
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), text, "decoding {text:?}");
    }
}

/// The rows of `t` (`batch × positions × vocab`) where `mask` is 1.
fn masked_rows(t: &Value, mask: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).unwrap();
    let values: Vec<f32> = data(t).into_iter().map(|v| v as f32).collect();
    let rows: Vec<&[f32]> = values.chunks(shape[2]).collect();
    mask.concat().iter().zip(rows).filter(|(m, _)| **m == 1).map(|(_, r)| r.to_vec()).collect()
}

fn rows_tensor(rows: &[Vec<f32>]) -> Tensor {
    Tensor::from_vec(rows.concat(), (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
}

#[test]
fn token_level_losses_and_their_top_k_versions_match_pytorch() {
    let kd = &reference()["kd"];
    let mask: Vec<Vec<u32>> = serde_json::from_value(kd["mask"].clone()).unwrap();
    let student = rows_tensor(&masked_rows(&kd["student"], &mask));
    let teacher_rows = masked_rows(&kd["teacher"], &mask);
    let (t, beta, k) =
        (kd["temperature"].as_f64().unwrap(), kd["beta"].as_f64().unwrap(), kd["top_k"].as_u64().unwrap());
    let kinds = [("forward_kl", LogitLoss::Kl), ("reverse_kl", LogitLoss::ReverseKl), ("jsd", LogitLoss::Js { beta })];
    let full = TeacherRows::Full(rows_tensor(&teacher_rows));
    // The top-k cache's records, as the engine writes and reads them.
    let (mut values, mut ids, mut filler) = (Vec::new(), Vec::new(), Vec::new());
    for row in &teacher_rows {
        filler.push(top_k_row(row, k as usize, t, &mut values, &mut ids));
    }
    let vocab = teacher_rows[0].len();
    let cached = TeacherRows::top_k(&values, &ids, &filler, (vocab, t), &Device::Cpu).unwrap();
    let next = Tensor::zeros(student.dim(0).unwrap(), candle_core::DType::U32, &Device::Cpu).unwrap();
    for (teacher, prefix) in [(&full, ""), (&cached, "top_k_")] {
        for (name, kind) in kinds {
            let loss = token_loss(&student, Some(teacher), &next, (kind, t, 1.0)).unwrap();
            let got = loss.soft.unwrap().to_scalar::<f32>().unwrap() as f64;
            let want = kd[format!("{prefix}{name}")].as_f64().unwrap();
            assert!((got - want).abs() / want.abs() < 1e-5, "{prefix}{name}: {got}, PyTorch {want}");
        }
    }
}

/// The real SmolLM2-135M-Instruct (Q4_1 GGUF), dequantised at load: the fixture text's ids
/// and its perplexity as `transformers` computed them from the same file. `scripts/test.sh`
/// fetches it (`scripts/fetch-smollm2.sh`) into `distillery-data/datasets/models/`, or set
/// `SMOLLM2_GGUF`.
#[test]
fn smollm2_scores_the_fixture_text_as_transformers_does() {
    let path = smollm2_gguf();
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("smollm2.json")).unwrap()).unwrap();
    let (model, tokenizer) = gguf::load(&path, &Device::Cpu).unwrap();
    assert_eq!((model.config.num_layers, model.config.hidden_size, model.config.vocab_size), (30, 576, 49_152));
    let text = reference["text"].as_str().unwrap();
    let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    let want: Vec<u32> = serde_json::from_value(reference["ids"].clone()).unwrap();
    assert_eq!(ids, want, "SmolLM2's tokenizer rebuilt from the GGUF metadata");
    let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = model.forward(&input, false, false).unwrap().logits.squeeze(0).unwrap();
    let n = ids.len();
    let next = Tensor::new(&ids[1..], &Device::Cpu).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits.narrow(0, 0, n - 1).unwrap(), &next).unwrap();
    let perplexity = (loss.to_scalar::<f32>().unwrap() as f64).exp();
    let expected = reference["perplexity"].as_f64().unwrap();
    assert!((perplexity - expected).abs() / expected < 2e-3, "perplexity {perplexity}, transformers {expected}");
    let last: Vec<f32> = logits.get(n - 1).unwrap().to_vec1().unwrap();
    let top: Vec<u32> = serde_json::from_value(reference["last_top5_ids"].clone()).unwrap();
    let mut order: Vec<u32> = (0..last.len() as u32).collect();
    order.sort_by(|a, b| last[*b as usize].total_cmp(&last[*a as usize]));
    assert_eq!(order[0], top[0], "the likeliest next token");
}

/// Sayings to learn, a few hundred tokens of them, in the `fortune` format.
fn corpus() -> String {
    let subjects = ["A fool", "The early bird", "A rolling stone", "The second mouse", "A computer", "Every cloud"];
    let verbs = ["catches", "gathers", "gets", "forgives", "parts with", "takes"];
    let objects = ["the worm", "no moss", "the cheese", "his money", "the day after tomorrow", "a silver lining"];
    let mut out = String::new();
    for i in 0..48 {
        let (s, v, o) = (subjects[i % 6], verbs[(i / 6) % 6], objects[(i * 5 + i / 6) % 6]);
        out.push_str(&format!(
            "{s} {v} {o}, and {} {} {}.\n%\n",
            subjects[(i + 1) % 6].to_lowercase(),
            verbs[i % 6],
            objects[i % 6]
        ));
    }
    out
}

/// A data root with the tiny Llama (folder and GGUF) and the corpus.
fn data_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let folder = root.path().join("models/tiny-llama");
    std::fs::create_dir_all(&folder).unwrap();
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixtures().join("tiny-llama").join(name), folder.join(name)).unwrap();
    }
    std::fs::copy(fixtures().join("tiny-llama.gguf"), root.path().join("models/tiny-llama.gguf")).unwrap();
    std::fs::write(root.path().join("sayings.txt"), corpus()).unwrap();
    root
}

fn token_spec(teacher: &str) -> Value {
    json!({
        "name": "tiny-llama-token-kd",
        "dataset": {"source": "corpus", "path": "sayings.txt", "max_length": 16, "validation_split": 0.25},
        "teacher": {"arch": {"kind": "llama", "path": teacher}},
        "student": {"arch": {"kind": "llama", "layers": [1]}},
        "distill": {"temperature": 2.0, "alpha": 0.8, "loss": "kl", "cache": {"top_k": 16},
                    "generation": {"max_new_tokens": 6, "prompt_tokens": 4, "report_prompts": 4}},
        "training": {"epochs": 2, "batch_size": 4, "optimizer": {"kind": "adamw", "lr": 0.003}, "seed": 5}
    })
}

#[test]
fn a_token_level_job_reports_perplexities_and_exports_a_hugging_face_llama() {
    let root = data_root();
    let job = tempfile::tempdir().unwrap();
    let ran = run(&spec(token_spec("models/tiny-llama")), root.path(), job.path());
    let r = &ran.report;
    assert_eq!(r.task, Task::LanguageModel);
    let lm = r.language_model.as_ref().unwrap();
    let baseline = lm.baseline.as_ref().unwrap();
    for scores in [&lm.teacher, &lm.student, baseline] {
        assert!(scores.perplexity.is_finite() && scores.perplexity > 1.0, "{scores:?}");
        assert!((0.0..=1.0).contains(&scores.rouge_l));
    }
    assert_eq!((lm.teacher.kl_to_teacher, lm.teacher.rouge_l), (0.0, 1.0));
    assert!(lm.student.kl_to_teacher > 0.0);
    assert_eq!(lm.samples.len(), 3);
    assert!(r.size_ratio < 1.0 && r.verdict.contains("perplexity"), "{}", r.verdict);
    let cache = r.distillation.teacher_cache.as_ref().unwrap();
    assert!(cache.used && cache.top_k == Some(16));
    assert_eq!(ran.epochs.iter().filter(|e| e.phase == Phase::Student(0)).count(), 2);
    assert!(ran.progress.iter().any(|p| p.phase == Phase::Student(0) && p.soft.is_some()));
    assert!(ran.progress.iter().all(|p| p.phase != Phase::Baseline(0) || p.soft.is_none()));
    // The exported folder holds the trained student: its logits are the job's own.
    let trained = {
        let (tensors, _) = read_safetensors(&job.path().join("student.safetensors"), &Device::Cpu).unwrap();
        let config = folder_model().config;
        Llama::new(llama::LlamaConfig { num_layers: 1, ..config }, tensors).unwrap()
    };
    let hf = job.path().join("student-hf");
    let read = |n: &str| std::fs::read(hf.join(n)).unwrap();
    let exported = llama::from_files(&read("config.json"), &read("model.safetensors"), &Device::Cpu).unwrap();
    let ids = input_ids(&reference());
    let difference = (exported.forward(&ids, false, false).unwrap().logits
        - trained.forward(&ids, false, false).unwrap().logits)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(difference, 0.0);
    let config: Value = serde_json::from_slice(&read("config.json")).unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert!(hf.join("tokenizer.json").exists() && job.path().join("student-hf.tar").exists());
    // The checkpoints the job announced stay, as every job's do.
    assert!(job.path().join("checkpoint-student.safetensors").exists());
}

#[test]
fn an_interrupted_token_job_resumes_from_its_checkpoint_and_finishes() {
    let root = data_root();
    let job = tempfile::tempdir().unwrap();
    let s = spec(token_spec("models/tiny-llama.gguf"));
    interrupted_at(&s, root.path(), job.path(), Phase::Student(0), 3);
    assert!(job.path().join("checkpoint-student.safetensors").exists());
    let ran = run_to_end(&s, root.path(), job.path());
    assert!(ran.logs.iter().any(|l| l.starts_with("resuming student")), "{:?}", ran.logs);
    assert!(ran.report.distillation.teacher_cache.as_ref().unwrap().reused, "the cache file outlived the interruption");
    // The GGUF teacher's rebuilt tokenizer travels with the export.
    assert!(job.path().join("student-hf/tokenizer_config.json").exists());
    let straight = tempfile::tempdir().unwrap();
    let uninterrupted = run_to_end(&s, root.path(), straight.path()).report;
    let perplexity = |r: &distillery::engine::job::report::Report| {
        let lm = r.language_model.as_ref().unwrap();
        (lm.student.perplexity, lm.baseline.as_ref().unwrap().perplexity)
    };
    assert_eq!(perplexity(&ran.report), perplexity(&uninterrupted), "the resume changed the result");
}

#[test]
fn a_cancelled_language_model_job_stops_with_cancelled() {
    let root = data_root();
    let job = tempfile::tempdir().unwrap();
    let control = distillery::engine::Control::default();
    let mut sink = |event: distillery::engine::EngineEvent| {
        if matches!(event, distillery::engine::EngineEvent::Progress(ref p) if p.step == 2) {
            control.cancel();
        }
    };
    let outcome =
        common::run_with(&spec(token_spec("models/tiny-llama")), root.path(), job.path(), &control, &mut sink);
    assert!(matches!(outcome, Err(distillery::engine::EngineError::Cancelled)), "{:?}", outcome.err());
    assert!(!job.path().join("student.safetensors").exists(), "a cancelled phase finishes nothing");
}

#[test]
fn a_sequence_level_job_trains_on_the_teachers_continuations() {
    let root = data_root();
    let job = tempfile::tempdir().unwrap();
    let mut value = token_spec("models/tiny-llama");
    value["distill"] = json!({"temperature": 1.0, "alpha": 0.0, "mode": "sequence", "cache": {"enabled": true},
                              "generation": {"max_new_tokens": 8, "prompt_tokens": 4, "max_prompts": 12, "report_prompts": 3}});
    value["baseline"] = json!(false);
    let ran = run(&spec(value), root.path(), job.path());
    let lm = ran.report.language_model.as_ref().unwrap();
    let generated = lm.generations.as_ref().unwrap();
    assert_eq!(generated.prompts, 12);
    let lines = std::fs::read_to_string(job.path().join("teacher-generations.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 12);
    let first: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert!(first["prompt"].is_string() && first["response_ids"].is_array());
    assert!(ran.report.verdict.contains("no baseline"), "{}", ran.report.verdict);
    assert!(ran.report.distillation.teacher_cache.is_none());
}

#[test]
fn language_model_specs_that_cannot_run_are_refused_naming_the_field() {
    let root = data_root();
    let refusal = |value: Value| -> String {
        let parsed = distillery::spec::parse(value.to_string().as_bytes()).unwrap();
        let err = match parsed.validate() {
            Err(e) => e,
            Ok(()) => distillery::engine::preflight(&parsed, &DataRoot::new(root.path())).unwrap_err(),
        };
        err.field
    };
    let mut v = token_spec("models/tiny-llama");
    v["student"]["arch"]["layers"] = json!([0, 7]);
    assert_eq!(refusal(v), "student.arch.layers[1]");
    let mut v = token_spec("models/tiny-llama");
    v["student"]["arch"]["num_kv_heads"] = json!(3);
    assert_eq!(refusal(v), "student.arch");
    let mut v = token_spec("models/tiny-llama");
    v["distill"]["loss"] = json!("mse");
    assert_eq!(refusal(v), "distill.loss");
    let mut v = token_spec("models/tiny-llama");
    v["distill"]["generation"]["max_new_tokens"] = json!(15);
    assert_eq!(refusal(v), "distill.generation.prompt_tokens");
    let mut v = token_spec("models/tiny-llama");
    v["dataset"]["source"] = json!("text");
    assert_eq!(refusal(v), "student.arch.kind");
    let mut v = token_spec("../outside.gguf");
    v["student"]["arch"] = json!({"kind": "llama"});
    assert_eq!(refusal(v), "teacher.arch.path");
    let v = token_spec("sayings.txt.gguf");
    assert_eq!(refusal(v), "teacher.arch.path");
    std::fs::write(root.path().join("bad.gguf"), b"GGUF but not really").unwrap();
    assert_eq!(refusal(token_spec("bad.gguf")), "teacher.arch.path");
    std::fs::write(root.path().join("bad.jsonl"), "{\"prompt\": \"hi\"}\n").unwrap();
    let mut v = token_spec("models/tiny-llama");
    v["dataset"]["path"] = json!("bad.jsonl");
    assert_eq!(refusal(v), "dataset.path");
}
