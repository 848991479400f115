//! Transformers: the encoder against `transformers` (fixtures by `scripts/make_bert_fixtures.py`:
//! tiny random BERT, RoBERTa and DistilBERT folders and their outputs and gradients), and text
//! jobs end to end with the tiny BERT as the teacher.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use distillery::engine::models::bert::{self, BertConfig};
use distillery::engine::models::{Input, Net};
use distillery::spec::{ArchSpec, TransformerArch};
use serde_json::Value;

fn fixtures() -> Value {
    serde_json::from_slice(&std::fs::read("tests/fixtures/bert.json").unwrap()).unwrap()
}

fn floats(t: &Value) -> (Vec<usize>, Vec<f32>) {
    let shape = t["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let data = t["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    (shape, data)
}

fn ints(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32))
        .collect()
}

/// Largest absolute difference, relative to the largest expected magnitude.
fn assert_close(what: &str, got: &[f32], want: &[f32], tolerance: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= tolerance * scale, "{what}: max difference {worst} against scale {scale}");
}

fn load(folder: &str) -> (BertConfig, Net) {
    let (config, tensors) = bert::load_folder(Path::new(folder), &Device::Cpu).unwrap();
    let input = Input { features: 36, image: None };
    let net = Net::transformer(
        &ArchSpec::Transformer(TransformerArch::default()),
        config.clone(),
        input,
        tensors,
        &Device::Cpu,
    )
    .unwrap();
    (config, net)
}

fn packed(case: &Value) -> Tensor {
    let rows =
        bert::pack(&ints(&case["input_ids"]), &ints(&case["token_type_ids"]), &ints(&case["attention_mask"]), 12);
    Tensor::from_vec(rows, (3, 36), &Device::Cpu).unwrap()
}

#[test]
fn encoders_match_transformers_outputs() {
    let fixtures = fixtures();
    for (name, case) in fixtures["models"].as_object().unwrap() {
        let (config, net) = load(case["folder"].as_str().unwrap());
        // The frozen net reads its layers' weights stored transposed (`Net::frozen`).
        let variants =
            [("fused", net.clone()), ("frozen", net.frozen().unwrap()), ("unfused", net.with_fused_kernels(false))];
        for (kernels, net) in variants {
            let mut want: Vec<String> = vec!["embeddings".into(), "pooled".into()];
            for i in 0..config.num_layers {
                want.push(format!("layers.{i}"));
                want.push(format!("attentions.{i}"));
            }
            let names: Vec<&str> = want.iter().map(String::as_str).collect();
            let out = net.forward(&packed(case), None, &names).unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let what = |part: &str| format!("{name} {part} ({kernels} kernels)");
            assert_close(&what("logits"), &flat(&out.logits), &floats(&case["logits"]).1, 1e-4);
            assert_close(&what("mean_pooled"), &flat(&out.features["pooled"]), &floats(&case["mean_pooled"]).1, 1e-4);
            let (shape, hidden) = floats(&case["hidden_states"]);
            let per_layer = hidden.len() / shape[0];
            for layer in 0..shape[0] {
                let key = if layer == 0 { "embeddings".to_string() } else { format!("layers.{}", layer - 1) };
                assert_close(
                    &what(&key),
                    &flat(&out.features[&key]),
                    &hidden[layer * per_layer..(layer + 1) * per_layer],
                    1e-4,
                );
            }
            let (shape, attentions) = floats(&case["attentions"]);
            let per_layer = attentions.len() / shape[0];
            for layer in 0..shape[0] {
                let key = format!("attentions.{layer}");
                assert_close(
                    &what(&key),
                    &flat(&out.features[&key]),
                    &attentions[layer * per_layer..(layer + 1) * per_layer],
                    1e-4,
                );
            }
        }
    }
}

#[test]
fn bert_gradients_match_transformers_and_reach_every_parameter() {
    let fixtures = fixtures();
    let case = &fixtures["models"]["tiny-bert"];
    let (config, net) = load(case["folder"].as_str().unwrap());
    let labels = Tensor::new(
        case["labels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect::<Vec<_>>(),
        &Device::Cpu,
    )
    .unwrap();
    for fused in [true, false] {
        let vars: Vec<Var> = net.to_vars().unwrap();
        let model = net.with_vars(&vars, &[]).with_fused_kernels(fused);
        let logits = model.forward(&packed(case), None, &[]).unwrap().logits;
        let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
        let expected_loss = case["loss"].as_f64().unwrap() as f32;
        assert!((loss.to_scalar::<f32>().unwrap() - expected_loss).abs() < 1e-4 * expected_loss.abs().max(1.0));
        let grads = loss.backward().unwrap();
        let by_name: HashMap<String, Tensor> = model
            .named()
            .into_iter()
            .zip(&vars)
            .map(|((name, _), var)| {
                (name, grads.get(var.as_tensor()).cloned().unwrap_or_else(|| var.as_tensor().zeros_like().unwrap()))
            })
            .collect();
        for (hf_name, expected) in case["grads"].as_object().unwrap() {
            let ours = config.our_name(hf_name);
            let got = by_name[&ours].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_close(&format!("grad {hf_name} (fused {fused})"), &got, &floats(expected).1, 1e-3);
        }
        // Every tensor learns: the word embeddings of ids absent from the batch are the only
        // zero rows, so each tensor must have some nonzero gradient.
        for (name, grad) in &by_name {
            let largest = grad.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(largest > 0.0, "{name} receives no gradient (fused {fused})");
        }
    }
}

#[test]
fn hugging_face_names_round_trip() {
    for folder in ["tests/fixtures/tiny-bert", "tests/fixtures/tiny-roberta", "tests/fixtures/tiny-distilbert"] {
        let (config, _) = load(folder);
        let (raw, _) =
            distillery::engine::files::read_safetensors(&PathBuf::from(folder).join("model.safetensors"), &Device::Cpu)
                .unwrap();
        let mut theirs: Vec<String> = raw.keys().cloned().collect();
        let mut ours: Vec<String> = config.tensor_shapes().into_iter().map(|(n, _)| config.hf_name(&n)).collect();
        theirs.sort();
        ours.sort();
        // transformers may store buffers (position ids) too; every tensor we write must be theirs.
        assert!(ours.iter().all(|n| theirs.contains(n)), "{folder}: ours {ours:?}\ntheirs {theirs:?}");
    }
}

mod jobs {
    use std::path::Path;

    use candle_core::{Device, Tensor};
    use distillery::engine::files::read_safetensors;
    use distillery::engine::job::report::{Report, Task};
    use distillery::engine::models::bert;
    use distillery::engine::models::{Input, Net};
    use distillery::engine::{self, Phase};
    use distillery::spec::{self, ArchSpec, JobSpec, TransformerArch};
    use serde_json::{json, Value};

    use crate::common::{self, interrupted_at, run, Ran};

    const POSITIVE: [&str; 7] = ["good", "great", "love", "fun", "happy", "best", "enjoy"];
    const NEGATIVE: [&str; 7] = ["bad", "terrible", "hate", "dull", "sad", "worst", "bore"];
    const FILLER: [&str; 16] = [
        "the", "movie", "film", "book", "story", "was", "is", "very", "really", "and", "plot", "music", "food",
        "service", "i", "it",
    ];

    /// Reviews of 6–11 words: the label is the polarity of the one sentiment word among fillers.
    pub(super) fn reviews(path: &Path, n: usize, seed: u64) {
        let mut state = seed;
        let mut next = |m: usize| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as usize) % m
        };
        let mut csv = String::from("text,label\n");
        for i in 0..n {
            let positive = i % 2 == 0;
            let mut words: Vec<&str> = (0..5 + next(6)).map(|_| FILLER[next(FILLER.len())]).collect();
            let word = if positive { POSITIVE[next(7)] } else { NEGATIVE[next(7)] };
            let at = next(words.len() + 1);
            words.insert(at, word);
            csv.push_str(&format!("\"{}, really\",{}\n", words.join(" "), if positive { "pos" } else { "neg" }));
        }
        std::fs::write(path, csv).unwrap();
    }

    /// The fixture model `name`'s config and weights as `models/<name>` under `root`, without a
    /// tokenizer: each test gives it the one it needs.
    fn fixture_model(root: &Path, name: &str) -> std::path::PathBuf {
        let folder = root.join("models").join(name);
        std::fs::create_dir_all(&folder).unwrap();
        for file in ["config.json", "model.safetensors"] {
            std::fs::copy(Path::new("tests/fixtures").join(name).join(file), folder.join(file)).unwrap();
        }
        folder
    }

    /// A data root with the tiny BERT as `models/tiny-bert` and reviews under `texts/`.
    fn root() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let models = root.path().join("models/tiny-bert");
        std::fs::create_dir_all(&models).unwrap();
        for entry in std::fs::read_dir("tests/fixtures/tiny-bert").unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), models.join(entry.file_name())).unwrap();
        }
        std::fs::create_dir_all(root.path().join("texts")).unwrap();
        reviews(&root.path().join("texts/train.csv"), 400, 1);
        reviews(&root.path().join("texts/test.csv"), 120, 2);
        root
    }

    fn spec(student: Value, intermediate: Value) -> JobSpec {
        let value = json!({
            "dataset": {"source": "text", "path": "texts/train.csv", "test_path": "texts/test.csv", "label_column": "label", "max_length": 16},
            "teacher": {"arch": {"kind": "transformer", "path": "models/tiny-bert"}, "train": {"epochs": 10}},
            "student": {"arch": student},
            "distill": {"temperature": 2, "alpha": 0.5, "intermediate": intermediate},
            "training": {"epochs": 8, "batch_size": 16, "optimizer": {"kind": "adamw", "lr": 0.001}, "warmup_steps": 25, "seed": 5}
        });
        common::spec(value)
    }

    #[test]
    fn a_fine_tuned_bert_distils_into_two_of_its_layers_and_exports_a_hugging_face_folder() {
        let root = root();
        let job = tempfile::tempdir().unwrap();
        let s = spec(
            json!({"kind": "transformer", "layers": [0, 2]}),
            json!([
                {"teacher_layer": "layers.2", "student_layer": "layers.1", "loss": "mse", "weight": 1.0},
                {"teacher_layer": "attentions.2", "student_layer": "attentions.1", "loss": "kl", "weight": 1.0},
                {"teacher_layer": "embeddings", "student_layer": "embeddings", "loss": "mse", "weight": 1.0}
            ]),
        );
        let Ran { report, logs, .. } = run(&s, root.path(), job.path());
        // Two balanced classes: chance is 50%.
        assert!(report.teacher.accuracy > 0.85, "teacher {}", report.teacher.accuracy);
        assert!(report.student.accuracy > 0.8, "student {}", report.student.accuracy);
        assert!(report.baseline.as_ref().unwrap().accuracy > 0.6);
        // Two of three layers: 16 layer tensors fewer.
        let teacher_config = bert::load_folder(&root.path().join("models/tiny-bert"), &Device::Cpu).unwrap().0;
        let per_layer: usize = teacher_config.layer_names(0).len();
        assert_eq!(per_layer, 16);
        assert!(report.size_ratio < 0.95 && report.size_ratio > 0.5, "{}", report.size_ratio);
        assert_eq!(report.distillation.projection_parameters, 0);
        assert_eq!(report.student.latency.batch_n, 32);
        assert!(logs.iter().any(|l| l.contains("teacher layers [0, 2]") && l.contains("tensors copied")), "{logs:?}");

        // The Hugging Face folder: sizes, labels, names; it reloads to the same logits.
        let folder = job.path().join("student-hf");
        let config: Value = serde_json::from_slice(&std::fs::read(folder.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["model_type"], "bert");
        assert_eq!(config["num_hidden_layers"], 2);
        assert_eq!(config["id2label"], json!({"0": "neg", "1": "pos"}));
        assert_eq!(config["architectures"], json!(["BertForSequenceClassification"]));
        assert!(folder.join("tokenizer.json").exists());
        let (reloaded_config, tensors) = bert::load_folder(&folder, &Device::Cpu).unwrap();
        assert!(
            tensors.contains_key("encoder.layer.1.output.LayerNorm.weight")
                && !tensors.contains_key("encoder.layer.2.output.LayerNorm.weight")
        );
        let input = Input { features: 48, image: None };
        let arch = ArchSpec::Transformer(TransformerArch::default());
        let reloaded = Net::transformer(&arch, reloaded_config.clone(), input, tensors, &Device::Cpu).unwrap();
        let (ours, _) = read_safetensors(&job.path().join("student.safetensors"), &Device::Cpu).unwrap();
        let in_memory = Net::transformer(&arch, reloaded_config, input, ours, &Device::Cpu).unwrap();
        let ids: Vec<u32> = (0..4 * 16).map(|i| [2, 20 + i % 100, 3, 0][((i % 16) / 5).min(3)] as u32).collect();
        let mask: Vec<u32> = (0..4 * 16).map(|i| ((i % 16) < 15) as u32).collect();
        let x = Tensor::from_vec(bert::pack(&ids, &vec![0; 64], &mask, 16), (4, 48), &Device::Cpu).unwrap();
        let a = reloaded.forward(&x, None, &[]).unwrap().logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = in_memory.forward(&x, None, &[]).unwrap().logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        let archive = std::fs::read(job.path().join("student-hf.tar")).unwrap();
        assert_eq!(&archive[..22], b"student-hf/config.json");
        assert_eq!(&archive[257..262], b"ustar");
    }

    #[test]
    fn texts_without_labels_reach_the_distilled_student_alone() {
        let root = root();
        reviews(&root.path().join("texts/more-labelled.csv"), 200, 3);
        let labelled = std::fs::read_to_string(root.path().join("texts/more-labelled.csv")).unwrap();
        let texts: String = labelled.lines().skip(1).map(|l| format!("{}\n", l.rsplit_once(',').unwrap().0)).collect();
        std::fs::write(root.path().join("texts/more.csv"), format!("text\n{texts}")).unwrap();
        let mut value = serde_json::to_value(spec(json!({"kind": "transformer", "layers": [0]}), json!([]))).unwrap();
        value["dataset"]["labelled"] = json!(40);
        value["dataset"]["transfer"] = json!({"path": "texts/more.csv"});
        value["teacher"]["train"]["epochs"] = json!(2);
        value["training"]["epochs"] = json!(1);
        value["training"]["warmup_steps"] = json!(0);
        let job = tempfile::tempdir().unwrap();
        let report = run(&common::spec(value), root.path(), job.path()).report;
        let transfer = 400 - 40 + 200;
        assert_eq!((report.dataset.train_samples, report.dataset.transfer_samples), (40, transfer));
        let seen = |m: &distillery::engine::job::report::ModelReport| {
            let t = m.training.as_ref().unwrap();
            (t.labelled_samples, t.transfer_samples)
        };
        assert_eq!(seen(&report.teacher), (40, 0));
        assert_eq!(seen(&report.student), (40, transfer));
        assert_eq!(seen(report.baseline.as_ref().unwrap()), (40, 0));
        assert_eq!(report.distillation.teacher_cache.as_ref().unwrap().bytes, (40 + transfer as u64) * 2 * 4);
    }

    #[test]
    fn a_distilbert_teacher_distils_and_exports_in_its_own_layout() {
        let root = root();
        let job = tempfile::tempdir().unwrap();
        let folder = fixture_model(root.path(), "tiny-distilbert");
        // The tiny models share the 150-token vocabulary; DistilBERT pads with id 0 as BERT does.
        std::fs::copy("tests/fixtures/tiny-bert/tokenizer.json", folder.join("tokenizer.json")).unwrap();
        let mut value = serde_json::to_value(spec(
            json!({"kind": "transformer", "layers": [1]}),
            json!([
                {"teacher_layer": "attentions.1", "student_layer": "attentions.0", "loss": "kl"}
            ]),
        ))
        .unwrap();
        value["teacher"]["arch"]["path"] = json!("models/tiny-distilbert");
        let s = common::spec(value);
        let report = run(&s, root.path(), job.path()).report;
        assert!(report.teacher.accuracy > 0.85, "teacher {}", report.teacher.accuracy);
        assert!(report.student.accuracy > 0.7, "student {}", report.student.accuracy);
        let config: Value =
            serde_json::from_slice(&std::fs::read(job.path().join("student-hf/config.json")).unwrap()).unwrap();
        assert_eq!((config["model_type"].as_str(), config["n_layers"].as_u64()), (Some("distilbert"), Some(1)));
        assert_eq!(config["architectures"], json!(["DistilBertForSequenceClassification"]));
        let (raw, _) = read_safetensors(&job.path().join("student-hf/model.safetensors"), &Device::Cpu).unwrap();
        assert!(
            raw.contains_key("distilbert.transformer.layer.0.ffn.lin1.weight")
                && raw.contains_key("pre_classifier.weight"),
            "{:?}",
            raw.keys()
        );
    }

    /// Interrupted mid-epoch while fine-tuning the teacher and again while distilling (with a
    /// projection and dropout), a text job ends exactly where the uninterrupted one does.
    #[test]
    fn an_interrupted_text_job_resumes_exactly() {
        let root = root();
        let mut value = serde_json::to_value(spec(
            json!({"kind": "transformer", "num_layers": 2, "hidden_size": 16, "num_heads": 2, "intermediate_size": 32}),
            json!([{"teacher_layer": "layers.2", "student_layer": "layers.1", "loss": "mse", "weight": 0.5}]),
        ))
        .unwrap();
        value["teacher"]["train"]["epochs"] = json!(2);
        value["training"]["epochs"] = json!(2);
        value["baseline"] = json!(false);
        let s = common::spec(value);
        let straight = tempfile::tempdir().unwrap();
        let expected = run(&s, root.path(), straight.path()).report;
        // 400 reviews at batch 16: 25 steps an epoch.
        let dir = tempfile::tempdir().unwrap();
        for (phase, step) in [(Phase::Teacher(0), 30), (Phase::Student(0), 7)] {
            interrupted_at(&s, root.path(), dir.path(), phase, step);
        }
        let Ran { report: resumed, logs, .. } = run(&s, root.path(), dir.path());
        assert!(logs.iter().any(|m| m == "resumed from checkpoint: phase student, epoch 0, step 7"), "{logs:?}");
        let numbers = |r: &Report| (r.teacher.accuracy, r.teacher.loss, r.student.accuracy, r.student.loss);
        assert_eq!(numbers(&resumed), numbers(&expected));
        let hf = |dir: &Path| std::fs::read(dir.join("student-hf/model.safetensors")).unwrap();
        assert_eq!(hf(dir.path()), hf(straight.path()));
    }

    #[test]
    fn a_narrower_student_learns_hidden_states_through_a_projection() {
        let root = root();
        let job = tempfile::tempdir().unwrap();
        let s = spec(
            json!({"kind": "transformer", "num_layers": 2, "hidden_size": 16, "num_heads": 4, "intermediate_size": 32}),
            json!([{"teacher_layer": "layers.2", "student_layer": "layers.1", "loss": "mse", "weight": 1.0}]),
        );
        let Ran { report, epochs, logs, .. } = run(&s, root.path(), job.path());
        // At half the width no layer tensor fits: the embeddings (words, positions, token types)
        // start from the teacher's, projected onto their top principal directions, and the
        // classifier's bias is copied as it is. The student must be learning.
        assert!(logs.iter().any(|l| l.contains("4 tensors copied from the teacher")), "{logs:?}");
        let student: Vec<f64> = epochs.iter().filter(|m| m.phase == Phase::Student(0)).map(|m| m.train_loss).collect();
        assert!(student[student.len() - 1] < 0.9 * student[0], "{student:?}");
        assert_eq!(report.distillation.projection_parameters, 16 * 32 + 32);
        let config: Value =
            serde_json::from_slice(&std::fs::read(job.path().join("student-hf/config.json")).unwrap()).unwrap();
        assert_eq!((config["hidden_size"].as_u64(), config["num_attention_heads"].as_u64()), (Some(16), Some(4)));
    }

    #[test]
    fn a_trimmed_vocabulary_exports_a_tokenizer_that_tokenises_the_texts_as_the_student_saw_them() {
        let root = root();
        let job = tempfile::tempdir().unwrap();
        let mut value =
            serde_json::to_value(spec(json!({"kind": "transformer", "layers": [0, 2]}), json!([]))).unwrap();
        value["student"]["vocabulary"] = json!("trim");
        let s = common::spec(value);
        let Ran { report, .. } = run(&s, root.path(), job.path());
        assert!(report.student.accuracy > 0.8, "student {}", report.student.accuracy);

        let folder = job.path().join("student-hf");
        let config: Value = serde_json::from_slice(&std::fs::read(folder.join("config.json")).unwrap()).unwrap();
        let read = |dir: &Path| {
            let json = std::fs::read(dir.join("tokenizer.json")).unwrap();
            distillery::engine::data::text::load_tokenizer(&json, "tokenizer").unwrap()
        };
        let (full, cut) = (read(&root.path().join("models/tiny-bert")), read(&folder));
        let kept = cut.get_vocab_size(true);
        assert!(kept < full.get_vocab_size(true) / 2, "{kept} of {} tokens kept", full.get_vocab_size(true));
        assert_eq!(config["vocab_size"].as_u64(), Some(kept as u64));
        let hidden = config["hidden_size"].as_u64().unwrap() as usize;
        let untrimmed = report.student.parameters + (full.get_vocab_size(true) - kept) * hidden;
        assert!(
            (report.size_ratio - report.student.parameters as f64 / report.teacher.parameters as f64).abs() < 1e-12
        );
        assert!(untrimmed > report.student.parameters, "the student's parameters count the kept rows alone");

        let (accuracy, ids) = exported_accuracy(&s, root.path(), &folder);
        assert_eq!(accuracy, report.student.accuracy);
        assert!(ids.iter().all(|&id| (id as usize) < kept));
    }

    /// The exported folder read as a user would: its own tokenizer on the held-out texts, its
    /// weights through the candle loader. Returns the accuracy and the token ids it read.
    fn exported_accuracy(s: &JobSpec, root: &Path, folder: &Path) -> (f64, Vec<u32>) {
        let json = std::fs::read(folder.join("tokenizer.json")).unwrap();
        let tokenizer = distillery::engine::data::text::load_tokenizer(&json, "tokenizer").unwrap();
        let data_root = distillery::engine::DataRoot::new(root);
        let texts =
            distillery::engine::data::text::load_text(&s.dataset, &data_root, &tokenizer, s.training.seed, false)
                .unwrap();
        let (config, tensors) = bert::load_folder(folder, &Device::Cpu).unwrap();
        let length = texts.max_length;
        let input = Input { features: 3 * length, image: None };
        let arch = ArchSpec::Transformer(TransformerArch::default());
        let exported = Net::transformer(&arch, config, input, tensors, &Device::Cpu).unwrap();
        let v = &texts.validation;
        let x = bert::pack(&v.input_ids, &v.type_ids, &v.attention_mask, length);
        let split = distillery::engine::data::Split { x, y: v.labels.clone() };
        let accuracy = distillery::engine::train::evaluate(&exported, &split, &Device::Cpu).unwrap().accuracy;
        (accuracy, v.input_ids.clone())
    }

    /// `tests/fixtures/tiny-distilbert` as `models/tiny-distilbert` with the tiny BERT's
    /// tokenizer, its ordinary tokens renumbered (`[PAD]` … `[MASK]`, 0–4, stay): another
    /// tokenizer, which gives every text other ids.
    fn distilbert_with_its_own_tokenizer(root: &Path) {
        let folder = fixture_model(root, "tiny-distilbert");
        let mut tokenizer: Value =
            serde_json::from_slice(&std::fs::read("tests/fixtures/tiny-bert/tokenizer.json").unwrap()).unwrap();
        for id in tokenizer["model"]["vocab"].as_object_mut().unwrap().values_mut() {
            let old = id.as_u64().unwrap();
            if old >= 5 {
                *id = json!(154 - old);
            }
        }
        std::fs::write(folder.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    }

    #[test]
    fn a_pretrained_student_with_its_own_tokenizer_learns_from_the_logits_and_keeps_its_tokenizer() {
        let root = root();
        distilbert_with_its_own_tokenizer(root.path());
        let job = tempfile::tempdir().unwrap();
        let pooled = json!([{"teacher_layer": "pooled", "student_layer": "pooled", "loss": "cosine", "weight": 0.5}]);
        let s = spec(json!({"kind": "transformer", "path": "models/tiny-distilbert"}), pooled);
        let Ran { report, logs, .. } = run(&s, root.path(), job.path());
        assert!(report.teacher.accuracy > 0.85, "teacher {}", report.teacher.accuracy);
        assert!(report.student.accuracy > 0.7, "student {}", report.student.accuracy);
        assert!(
            logs.iter().any(|l| l.starts_with("student: pre-trained, from models/tiny-distilbert")
                && l.ends_with("its own tokenizer")),
            "{logs:?}"
        );
        let folder = job.path().join("student-hf");
        let config: Value = serde_json::from_slice(&std::fs::read(folder.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["architectures"], json!(["DistilBertForSequenceClassification"]));
        let exported_tokenizer = std::fs::read(folder.join("tokenizer.json")).unwrap();
        assert_eq!(
            exported_tokenizer,
            std::fs::read(root.path().join("models/tiny-distilbert/tokenizer.json")).unwrap()
        );
        // Read back with its own tokenizer, the export scores what the report measured: the
        // student saw its own tokens in training and evaluation.
        let (accuracy, _) = exported_accuracy(&s, root.path(), &folder);
        assert_eq!(accuracy, report.student.accuracy);

        let refused = |student: Value, intermediate: Value| {
            let s = spec(student, intermediate);
            engine::preflight(&s, &engine::DataRoot::new(root.path())).unwrap_err().field
        };
        let path = json!({"kind": "transformer", "path": "models/tiny-distilbert"});
        let per_token = json!([{"teacher_layer": "layers.2", "student_layer": "layers.1", "loss": "mse"}]);
        assert_eq!(refused(path.clone(), per_token), "distill.intermediate[0]", "tokens do not line up");
        let mut both = serde_json::to_value(spec(path, json!([]))).unwrap();
        both["student"]["arch"]["layers"] = json!([0]);
        let refused = spec::parse(both.to_string().as_bytes()).unwrap().validate().unwrap_err();
        assert_eq!(refused.field, "student.arch.path", "a pretrained student takes no layers");
    }

    /// A byte-level BPE tokenizer of single characters, as RoBERTa's is laid out: `<s>` 0,
    /// `<pad>` 1, `</s>` 2, `<unk>` 3, then the letters, `Ġ` (a space) and the comma.
    fn character_bpe() -> Value {
        let specials = ["<s>", "<pad>", "</s>", "<unk>"];
        let mut vocab = serde_json::Map::new();
        let characters =
            specials.iter().map(|s| s.to_string()).chain(('a'..='z').map(String::from)).chain(["Ġ".into(), ",".into()]);
        for (id, token) in characters.enumerate() {
            vocab.insert(token, json!(id));
        }
        let added: Vec<Value> = specials
            .iter()
            .enumerate()
            .map(|(id, t)| json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
            .collect();
        json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0], "trim_offsets": true, "add_prefix_space": false},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []}
        })
    }

    #[test]
    fn a_roberta_teacher_with_a_bpe_tokenizer_runs_a_whole_text_job() {
        let root = root();
        let folder = fixture_model(root.path(), "tiny-roberta");
        std::fs::write(folder.join("tokenizer.json"), character_bpe().to_string()).unwrap();
        let job = tempfile::tempdir().unwrap();
        let mut value = serde_json::to_value(spec(json!({"kind": "transformer", "layers": [1]}), json!([]))).unwrap();
        value["teacher"]["arch"]["path"] = json!("models/tiny-roberta");
        // One character a token: 64 (the tiny RoBERTa's 66 positions, less its padding offset).
        value["dataset"]["max_length"] = json!(64);
        // Four times the tokens of the other jobs: fewer epochs keep the test short.
        value["teacher"]["train"]["epochs"] = json!(4);
        value["training"]["epochs"] = json!(3);
        let s = common::spec(value);
        let Ran { report, epochs, .. } = run(&s, root.path(), job.path());
        let losses =
            |phase: Phase| epochs.iter().filter(|m| m.phase == phase).map(|m| m.train_loss).collect::<Vec<_>>();
        for phase in [Phase::Teacher(0), Phase::Student(0)] {
            let loss = losses(phase);
            assert!(loss[loss.len() - 1] < loss[0], "{phase:?} learns: {loss:?}");
        }
        let exported = job.path().join("student-hf");
        let config: Value = serde_json::from_slice(&std::fs::read(exported.join("config.json")).unwrap()).unwrap();
        assert_eq!((config["model_type"].as_str(), config["num_hidden_layers"].as_u64()), (Some("roberta"), Some(1)));
        assert_eq!(config["architectures"], json!(["RobertaForSequenceClassification"]));
        let tokenizer: Value =
            serde_json::from_slice(&std::fs::read(exported.join("tokenizer.json")).unwrap()).unwrap();
        assert_eq!(tokenizer["model"]["type"], "BPE");
        let (accuracy, ids) = exported_accuracy(&s, root.path(), &exported);
        assert_eq!(accuracy, report.student.accuracy);
        assert_eq!(ids[0], 0, "rows start with <s>");
        assert!(ids.contains(&1) && ids.contains(&2), "padding and </s>");
        let trimmed = json!({"kind": "transformer", "layers": [1]});
        let mut value = serde_json::to_value(spec(trimmed, json!([]))).unwrap();
        value["teacher"]["arch"]["path"] = json!("models/tiny-roberta");
        value["dataset"]["max_length"] = json!(64);
        value["student"]["vocabulary"] = json!("trim");
        let refused = engine::preflight(&common::spec(value), &engine::DataRoot::new(root.path())).unwrap_err();
        assert_eq!(refused.field, "student.vocabulary", "BPE is not trimmed: {}", refused.message);
    }

    #[test]
    fn an_encoder_distils_its_sentence_embeddings_from_unlabelled_texts() {
        let root = root();
        let job = tempfile::tempdir().unwrap();
        let mut value =
            serde_json::to_value(spec(json!({"kind": "transformer", "layers": [0, 2]}), json!([]))).unwrap();
        value["dataset"].as_object_mut().unwrap().remove("label_column");
        value["teacher"].as_object_mut().unwrap().remove("train");
        value["distill"]["intermediate"] = json!([
            {"teacher_layer": "pooled", "student_layer": "pooled", "loss": "cosine", "weight": 1.0},
            {"teacher_layer": "layers.2", "student_layer": "layers.1", "loss": "mse", "weight": 0.1}
        ]);
        let s = common::spec(value);
        let Ran { report, logs, .. } = run(&s, root.path(), job.path());
        assert_eq!(report.task, Task::Embedding);
        assert_eq!((report.teacher.accuracy, report.teacher.loss), (1.0, 0.0));
        let baseline = report.baseline.as_ref().unwrap();
        assert!(baseline.training.is_none(), "the baseline is the untrained student");
        assert!(logs.iter().any(|l| l.starts_with("baseline: unlabelled")), "{logs:?}");
        // loss = 1 − mean cosine to the teacher's embeddings: distillation must pull them closer
        // than the copied layers alone are. (Nearest-neighbour agreement is noise on these
        // near-identical synthetic reviews; `nearest_neighbours` has its own unit test.)
        assert!(
            report.student.loss < 0.5 * baseline.loss,
            "student {} baseline {}",
            report.student.loss,
            baseline.loss
        );
        assert!((0.0..=1.0).contains(&report.student.accuracy));
        assert!(
            report.verdict.starts_with("the student's embeddings have a mean cosine of")
                && report.verdict.contains("untrained student"),
            "{}",
            report.verdict
        );
        assert!(distillery::cli::table(&report).contains("neighbour agreement"));
        let config: Value =
            serde_json::from_slice(&std::fs::read(job.path().join("student-hf/config.json")).unwrap()).unwrap();
        assert_eq!(config["architectures"], json!(["BertModel"]));
        assert!(config.get("id2label").is_none());
        let (_, tensors) = bert::load_folder(&job.path().join("student-hf"), &Device::Cpu).unwrap();
        assert!(
            tensors.keys().all(|n| n.starts_with("embeddings.") || n.starts_with("encoder.")),
            "{:?}",
            tensors.keys()
        );
    }

    #[test]
    fn text_specs_are_refused_with_the_field_named() {
        let root = root();
        let refused = |mutate: &dyn Fn(&mut Value)| -> String {
            let mut value =
                serde_json::to_value(spec(json!({"kind": "transformer", "layers": [0, 2]}), json!([]))).unwrap();
            mutate(&mut value);
            let parsed = spec::parse(value.to_string().as_bytes());
            match parsed {
                Err(e) => e.field,
                Ok(s) => engine::preflight(&s, &engine::DataRoot::new(root.path())).unwrap_err().field,
            }
        };
        assert_eq!(refused(&|v| v["student"]["arch"]["layers"] = json!([0, 3])), "student.arch.layers");
        assert_eq!(refused(&|v| v["student"]["arch"] = json!({"kind": "mlp", "hidden": [8]})), "student.arch.kind");
        assert_eq!(refused(&|v| v["teacher"]["arch"]["path"] = json!("models/missing")), "teacher.arch.path");
        let missing_student = json!({"kind": "transformer", "path": "models/missing"});
        assert_eq!(refused(&|v| v["student"]["arch"] = missing_student.clone()), "student.arch.path");
        assert_eq!(refused(&|v| v["dataset"]["text_column"] = json!("review")), "dataset.text_column");
        assert_eq!(refused(&|v| v["dataset"]["max_length"] = json!(100)), "dataset.max_length");
        assert_eq!(
            refused(&|v| v["distill"]["intermediate"] =
                json!([{"teacher_layer": "layers.2", "student_layer": "layers.1", "loss": "kl"}])),
            "distill.intermediate[0].loss"
        );
        assert_eq!(
            refused(&|v| v["distill"]["intermediate"] =
                json!([{"teacher_layer": "attentions.2", "student_layer": "layers.1"}])),
            "distill.intermediate[0]"
        );
        assert_eq!(
            refused(&|v| v["student"]["arch"] = json!({"kind": "transformer", "hidden_size": 30})),
            "student.arch"
        );
        let unlabelled = |v: &mut Value| {
            v["dataset"].as_object_mut().unwrap().remove("label_column");
        };
        assert_eq!(refused(&|v| unlabelled(v)), "teacher.train");
        assert_eq!(
            refused(&|v| {
                unlabelled(v);
                v["teacher"].as_object_mut().unwrap().remove("train");
            }),
            "distill.intermediate"
        );
        // The tiny BERT's head has 3 classes, the reviews 2: only fine-tuning can fit it.
        assert_eq!(
            refused(&|v| v["teacher"].as_object_mut().unwrap().remove("train").map(|_| ()).unwrap()),
            "teacher.train"
        );
    }
}

/// The real all-MiniLM-L6-v2 (22.7M parameters), which `scripts/fetch-minilm.sh` (run by
/// `.ci/run`) puts under `distillery-data/datasets/models/`, or `MINILM_DIR`.
mod minilm {
    use candle_core::{Device, Tensor};
    use distillery::engine::models::bert;
    use distillery::engine::models::{Input, Net};
    use distillery::spec::{ArchSpec, TransformerArch};
    use serde_json::{json, Value};

    use crate::common::{self, minilm_dir, run, Ran};

    #[test]
    fn the_real_minilm_tokenises_and_embeds_as_transformers_does() {
        let reference: Value =
            serde_json::from_slice(&std::fs::read("tests/fixtures/minilm_reference.json").unwrap()).unwrap();
        let dir = minilm_dir();
        let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        tokenizer.with_padding(Some(tokenizers::PaddingParams {
            strategy: tokenizers::PaddingStrategy::Fixed(16),
            ..Default::default()
        }));
        let texts: Vec<String> = serde_json::from_value(reference["texts"].clone()).unwrap();
        let rows = |key: &str| -> Vec<u32> {
            serde_json::from_value::<Vec<Vec<u32>>>(reference[key].clone()).unwrap().concat()
        };
        let (ids, mask) = (rows("input_ids"), rows("attention_mask"));
        for (i, text) in texts.iter().enumerate() {
            let encoding = tokenizer.encode(text.as_str(), true).unwrap();
            assert_eq!(encoding.get_ids(), &ids[i * 16..(i + 1) * 16], "{text}");
        }
        let (config, tensors) = bert::load_folder(&dir, &Device::Cpu).unwrap();
        assert_eq!((config.num_layers, config.hidden_size, config.num_heads, config.num_labels), (6, 384, 12, 0));
        let named = config.tensor_shapes().into_iter().map(|(n, _)| (n.clone(), tensors[&n].clone())).collect();
        let input = Input { features: 48, image: None };
        let net =
            Net::transformer(&ArchSpec::Transformer(TransformerArch::default()), config, input, named, &Device::Cpu)
                .unwrap();
        // 22.7M with the pooler (384·384 + 384), which mean pooling does not use.
        assert_eq!(net.parameter_count(), 22_713_216 - 384 * 384 - 384);
        let n = texts.len();
        let x = Tensor::from_vec(bert::pack(&ids, &vec![0; ids.len()], &mask, 16), (n, 48), &Device::Cpu).unwrap();
        let pooled = net.forward(&x, None, &[]).unwrap().logits;
        let want: Vec<Vec<f32>> = serde_json::from_value(reference["mean_pooled"].clone()).unwrap();
        let got = pooled.to_vec2::<f32>().unwrap();
        for (g, w) in got.iter().zip(&want) {
            let worst = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "max difference {worst}");
        }
        let dot: f32 = got[0].iter().zip(&got[1]).map(|(a, b)| a * b).sum();
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
        let cosine = dot / (norm(&got[0]) * norm(&got[1]));
        assert!((cosine as f64 - reference["cosine"].as_f64().unwrap()).abs() < 1e-5, "{cosine}");
    }

    #[test]
    fn the_real_minilm_is_fine_tuned_and_distilled_into_two_layers() {
        let root = tempfile::tempdir().unwrap();
        let job = tempfile::tempdir().unwrap();
        // Data paths may not lead outside the data root, so the folder is copied in.
        std::fs::create_dir(root.path().join("minilm")).unwrap();
        for file in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "vocab.txt",
        ] {
            std::fs::copy(minilm_dir().join(file), root.path().join("minilm").join(file)).unwrap();
        }
        super::jobs::reviews(&root.path().join("train.csv"), 192, 11);
        super::jobs::reviews(&root.path().join("test.csv"), 96, 12);
        let value = json!({
            "dataset": {"source": "text", "path": "train.csv", "test_path": "test.csv", "label_column": "label", "max_length": 24},
            "teacher": {"arch": {"kind": "transformer", "path": "minilm"}, "train": {"epochs": 2}},
            "student": {"arch": {"kind": "transformer", "layers": [0, 3]}},
            "distill": {"temperature": 3, "alpha": 0.5, "intermediate": [
                {"teacher_layer": "layers.5", "student_layer": "layers.1", "loss": "mse"},
                {"teacher_layer": "attentions.5", "student_layer": "attentions.1", "loss": "kl"}
            ]},
            "training": {"epochs": 2, "batch_size": 16, "optimizer": {"kind": "adamw", "lr": 0.0001}, "warmup_steps": 4, "seed": 1}
        });
        let s = common::spec(value);
        let Ran { report, logs, .. } = run(&s, root.path(), job.path());
        assert!(logs.iter().any(|l| l.contains("no classification head")), "{logs:?}");
        assert!(report.teacher.accuracy > 0.9, "teacher {}", report.teacher.accuracy);
        assert!(report.student.accuracy > 0.8, "student {}", report.student.accuracy);
        // Two of six layers (1,774,464 parameters each) fewer, a 2-class head more; the 11.7M
        // word embeddings stay.
        assert_eq!(report.student.parameters, 22_713_216 - 4 * 1_774_464 + 2 * 384 + 2);
        assert!(report.speedup.batch_n > 1.5, "{:?}", report.speedup);
        let config: Value =
            serde_json::from_slice(&std::fs::read(job.path().join("student-hf/config.json")).unwrap()).unwrap();
        assert_eq!(config["num_hidden_layers"], 2);
        assert_eq!(config["architectures"], json!(["BertForSequenceClassification"]));
    }
}
