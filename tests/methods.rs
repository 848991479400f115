//! The distillation methods on real images (Fashion-MNIST, Debian's `dataset-fashion-mnist`,
//! which `.ci/run` installs): conv teachers and students, intermediate layers, ensembles, the
//! other logit losses, schedules, the teacher cache with top-k, shifts, early stopping and
//! copying layers from the teacher. Subsets keep each job to seconds.

mod common;

use std::io::Read;
use std::path::Path;

use candle_core::Device;
use common::{fashion_dir, interrupted_at, minilm_dir, run, smollm2_gguf, spec, Ran};
use distillery::engine::files::read_safetensors;
use distillery::engine::job::report::Report;
use distillery::engine::DataRoot;
use distillery::engine::{self, Phase};
use distillery::spec;
use serde_json::{json, Value};

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_end(&mut out).unwrap();
    out
}

/// Writes the first `n` samples of a Fashion-MNIST file pair as raw IDX files into the data
/// root, returning their names relative to it.
fn subset(root: &Path, split: &str, n: usize) -> (String, String) {
    let source = fashion_dir();
    let folder = root;
    let images = gunzip(&source.join(format!("{split}-images-idx3-ubyte.gz")));
    let labels = gunzip(&source.join(format!("{split}-labels-idx1-ubyte.gz")));
    let mut image_file = images[..16].to_vec();
    image_file[4..8].copy_from_slice(&(n as u32).to_be_bytes());
    image_file.extend_from_slice(&images[16..16 + n * 784]);
    let mut label_file = labels[..8].to_vec();
    label_file[4..8].copy_from_slice(&(n as u32).to_be_bytes());
    label_file.extend_from_slice(&labels[8..8 + n]);
    let (i, l) = (format!("{split}-{n}-images.idx"), format!("{split}-{n}-labels.idx"));
    std::fs::write(folder.join(&i), image_file).unwrap();
    std::fs::write(folder.join(&l), label_file).unwrap();
    (i, l)
}

fn dataset(root: &Path, train: usize, test: usize) -> Value {
    let (images, labels) = subset(root, "train", train);
    let (test_images, test_labels) = subset(root, "t10k", test);
    json!({"source": "idx", "images": images, "labels": labels, "test_images": test_images, "test_labels": test_labels})
}

fn lenet() -> Value {
    json!({"kind": "conv", "blocks": [
        {"channels": 6, "kernel": 5, "padding": 2, "pool": "max"},
        {"channels": 16, "kernel": 5, "pool": "max"}
    ], "hidden": [120, 84]})
}

fn conv_teacher(batch_norm: bool) -> Value {
    json!({"kind": "conv", "blocks": [
        {"channels": 16, "kernel": 3, "padding": 1, "batch_norm": batch_norm, "pool": "max"},
        {"channels": 32, "kernel": 3, "padding": 1, "batch_norm": batch_norm, "pool": "max"}
    ], "hidden": [256], "dropout": 0.2})
}

fn training(epochs: u32) -> Value {
    json!({"epochs": epochs, "batch_size": 64, "optimizer": {"kind": "adamw", "lr": 0.002}, "seed": 3})
}

#[test]
fn a_conv_teacher_distils_into_a_lenet_student_through_logits_and_feature_maps() {
    let root = tempfile::tempdir().unwrap();
    let job = tempfile::tempdir().unwrap();
    let s = spec(json!({
        "dataset": dataset(root.path(), 2000, 1000),
        "teacher": {"arch": conv_teacher(true), "train": {"epochs": 2}},
        "student": {"arch": lenet()},
        "distill": {"temperature": 4, "alpha": 0.7, "intermediate": [
            {"teacher_layer": "blocks.0", "student_layer": "blocks.0", "loss": "mse", "weight": 0.5},
            {"teacher_layer": "layers.0", "student_layer": "layers.0", "loss": "cosine", "weight": 0.5}
        ]},
        "training": training(2)
    }));
    let Ran { report, logs, .. } = run(&s, root.path(), job.path());

    // Ten classes: chance is 10%.
    assert!(report.teacher.accuracy > 0.6, "teacher {}", report.teacher.accuracy);
    assert!(report.student.accuracy > 0.5, "distilled student {}", report.student.accuracy);
    let baseline = report.baseline.as_ref().expect("a baseline");
    assert!(baseline.accuracy > 0.5, "baseline {}", baseline.accuracy);
    assert!(report.gain_test.is_some() && !report.verdict.is_empty());
    assert_eq!(report.student.parameters, 61_706, "LeNet-5 on 28×28 with 5×5 convolutions");
    assert!(report.size_ratio < 0.25);
    assert_eq!(report.dataset.validation_samples, 1000);
    // 6→16 channels (1×1 projection) and 120→256 (linear): (6·16 + 16) + (120·256 + 256).
    assert_eq!(report.distillation.projection_parameters, 6 * 16 + 16 + 120 * 256 + 256);
    let cache = report.distillation.teacher_cache.as_ref().unwrap();
    assert!(!cache.used && cache.reason.contains("intermediate"), "{cache:?}");
    assert!(logs.iter().any(|l| l.starts_with("teacher cache not used")), "{logs:?}");

    // The exported student is the LeNet alone (no projections) and rebuilds from config.json.
    let config: Value = serde_json::from_slice(&std::fs::read(job.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["format"], "distillery.conv");
    let (tensors, _) = read_safetensors(&job.path().join("student.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut listed: Vec<String> = serde_json::from_value(config["tensors"].clone()).unwrap();
    listed.sort();
    assert_eq!(names.into_iter().cloned().collect::<Vec<_>>(), listed);
}

#[test]
fn an_ensemble_with_js_loss_schedules_top_k_cache_and_early_stopping() {
    let root = tempfile::tempdir().unwrap();
    let job = tempfile::tempdir().unwrap();
    let s = spec(json!({
        "dataset": dataset(root.path(), 1000, 500),
        "teachers": [
            {"arch": conv_teacher(false), "train": {"epochs": 2}, "weight": 2},
            {"arch": {"kind": "mlp", "hidden": [128]}, "train": {"epochs": 2}, "weight": 1}
        ],
        "student": {"arch": {"kind": "mlp", "hidden": [32]}},
        "distill": {
            "temperature": {"start": 6, "end": 2},
            "alpha": {"start": 0.9, "end": 0.5},
            "loss": "js", "beta": 0.3
        },
        "training": {"epochs": 12, "batch_size": 64, "optimizer": {"kind": "adamw", "lr": 0.01}, "seed": 3,
                     "early_stopping": {"patience": 2}},
        "baseline": false
    }));
    let mut s = s;
    // A schedule rules out top-k (the filler is exact at one temperature); constant T allows it.
    assert_eq!(
        spec::parse(
            serde_json::to_string(&{
                let mut v = serde_json::to_value(&s).unwrap();
                v["distill"]["cache"] = json!({"top_k": 3});
                v
            })
            .unwrap()
            .as_bytes()
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .field,
        "distill.cache.top_k"
    );
    s.distill.temperature = spec::Scheduled::Constant(4.0);
    s.distill.cache.top_k = Some(3);
    let Ran { report, progress, .. } = run(&s, root.path(), job.path());

    let members = report.teachers.as_ref().expect("each member of the ensemble");
    assert_eq!(members.len(), 2);
    assert_eq!(report.teacher.parameters, members[0].parameters + members[1].parameters);
    assert_eq!(report.distillation.teacher_weights, vec![2.0 / 3.0, 1.0 / 3.0]);
    assert!(progress.iter().any(|p| p.phase.as_str() == "teacher_1"));
    assert!(job.path().join("teacher_1.safetensors").exists());

    // α moves linearly from 0.9 to 0.5 over the student's steps.
    let student: Vec<_> = progress.iter().filter(|p| p.phase == engine::Phase::Student(0)).collect();
    assert!((student[0].alpha - 0.9).abs() < 1e-9, "{}", student[0].alpha);
    assert!(student.windows(2).all(|w| w[1].alpha <= w[0].alpha));

    let cache = report.distillation.teacher_cache.as_ref().unwrap();
    assert!(cache.used && cache.top_k == Some(3), "{cache:?}");
    // Top 3 of 10 classes: 3 values, 3 class ids and a filler per sample, per teacher.
    assert_eq!(cache.bytes, 2 * 800 * (3 * 4 + 3 * 4 + 4));

    // Early stopping held samples out of training and kept the best epoch's weights.
    let training = report.student.training.as_ref().unwrap();
    let best = training.best_epoch.expect("a best epoch");
    assert!(best <= training.epochs);
    assert_eq!(report.dataset.train_samples, 800);
    let (exported, _) = read_safetensors(&job.path().join("student.safetensors"), &Device::Cpu).unwrap();
    let (kept, _) = read_safetensors(&job.path().join("best-student.safetensors"), &Device::Cpu).unwrap();
    for (name, t) in &exported {
        let diff = (t - &kept[name]).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "{name}");
    }
}

#[test]
fn shifted_inputs_reverse_kl_and_a_student_that_starts_from_the_teachers_layers() {
    let root = tempfile::tempdir().unwrap();
    let job = tempfile::tempdir().unwrap();
    let student = json!({"kind": "conv", "blocks": [
        {"channels": 16, "kernel": 3, "padding": 1, "pool": "max"},
        {"channels": 8, "kernel": 3, "padding": 1, "pool": "max"}
    ], "hidden": [32]});
    let s = spec(json!({
        "dataset": dataset(root.path(), 600, 300),
        "teacher": {"arch": conv_teacher(false), "train": {"epochs": 2}},
        "student": {"arch": student, "init_from_teacher": [{"student_layer": "blocks.0", "teacher_layer": "blocks.0"}]},
        "distill": {"temperature": 4, "alpha": 0.8, "loss": "reverse_kl"},
        "training": {"epochs": 3, "batch_size": 64, "optimizer": {"kind": "adamw", "lr": 0.002}, "seed": 5, "augment": {"shift": 2}}
    }));
    let Ran { report, logs, .. } = run(&s, root.path(), job.path());
    assert!(logs.iter().any(|l| l == "student initialised with 2 tensors copied from the teacher"), "{logs:?}");
    let cache = report.distillation.teacher_cache.as_ref().unwrap();
    assert!(!cache.used && cache.reason.contains("augmented"), "{cache:?}");
    assert!(report.student.accuracy > 0.3, "{}", report.student.accuracy);

    // A layer that does not exist, or shapes that cannot be copied, are refused before the job
    // is accepted, naming the field.
    let mut bad = serde_json::to_value(&s).unwrap();
    bad["student"]["init_from_teacher"][0]["teacher_layer"] = json!("blocks.1");
    let err = engine::preflight(&spec(bad), &DataRoot::new(root.path())).unwrap_err();
    assert_eq!(err.field, "student.init_from_teacher[0]", "{err}");
    let mut bad = serde_json::to_value(&s).unwrap();
    bad["distill"]["intermediate"] = json!([{"teacher_layer": "blocks.0", "student_layer": "blocks.7"}]);
    let err = engine::preflight(&spec(bad), &DataRoot::new(root.path())).unwrap_err();
    assert_eq!(err.field, "distill.intermediate[0].student_layer", "{err}");
    assert!(err.message.contains("blocks.0, blocks.1, layers.0, layers.1"), "{err}");
    let mut bad = serde_json::to_value(&s).unwrap();
    bad["distill"]["intermediate"] = json!([{"teacher_layer": "blocks.1", "student_layer": "blocks.0"}]);
    let err = engine::preflight(&spec(bad), &DataRoot::new(root.path())).unwrap_err();
    assert_eq!(err.field, "distill.intermediate[0]", "{err}");
    // Shifts need images; the digits are rows of features.
    let mut bad = serde_json::to_value(&s).unwrap();
    bad["dataset"] = json!({"source": "builtin:digits"});
    let err = engine::preflight(&spec(bad), &DataRoot::new(root.path())).unwrap_err();
    assert_eq!(err.field, "training.augment", "{err}");
}

/// Every example parses and validates; each one is preflighted (architectures against the data,
/// layer names, copies) on the data it names.
#[test]
fn every_example_is_accepted() {
    let root = tempfile::tempdir().unwrap();
    let folder = root.path().join("fashion-mnist");
    std::fs::create_dir_all(&folder).unwrap();
    for entry in std::fs::read_dir(fashion_dir()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, folder.join(path.file_name().unwrap())).unwrap();
    }
    // The transformer examples: all-MiniLM-L6-v2 (scripts/fetch-minilm.sh) and a few tweets in
    // the election CSVs' columns.
    let minilm = minilm_dir();
    let models = root.path().join("models/all-minilm-l6-v2");
    std::fs::create_dir_all(&models).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(minilm.join(file), models.join(file))
            .unwrap_or_else(|e| panic!("{}: {e}; run scripts/fetch-minilm.sh", minilm.display()));
    }
    std::fs::create_dir_all(root.path().join("election")).unwrap();
    // Enough rows that each example's warm-up fits in its training (it is checked against the data).
    let rows = "\"Make America great again!\",realDonaldTrump\nStronger together.,HillaryClinton\nVote early!,HillaryClinton\n".repeat(700);
    let tweets = format!("text,label\n{rows}");
    for file in ["train.csv", "test.csv"] {
        std::fs::write(root.path().join("election").join(file), &tweets).unwrap();
    }
    // The causal-LM examples: SmolLM2 (scripts/fetch-smollm2.sh), linked in, and sayings in the
    // fortune format.
    let gguf = root.path().join("models/smollm2-135m-instruct-q4_1.gguf");
    std::fs::hard_link(smollm2_gguf(), &gguf).or_else(|_| std::fs::copy(smollm2_gguf(), &gguf).map(|_| ())).unwrap();
    std::fs::create_dir_all(root.path().join("corpora")).unwrap();
    let sayings = "A fool and his money are soon parted.\n%\nThe early bird catches the worm.\n%\n".repeat(100);
    std::fs::write(root.path().join("corpora/fortunes.txt"), sayings).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        let spec = spec::parse(&std::fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        engine::preflight(&spec, &DataRoot::new(root.path())).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        checked += 1;
    }
    assert!(checked >= 10, "{checked} examples");
}

/// A conv job with batch norm (running statistics), a projection (extra trained tensors),
/// shifts and early stopping (a best epoch to remember), stopped mid-epoch in the teacher's and
/// then the student's phase, ends exactly where the uninterrupted job does.
#[test]
fn a_conv_job_with_batch_norm_projections_and_early_stopping_resumes_exactly() {
    let root = tempfile::tempdir().unwrap();
    let student = json!({"kind": "conv", "blocks": [{"channels": 4, "kernel": 3, "padding": 1, "batch_norm": true, "pool": "max"}], "hidden": [16]});
    let s = spec(json!({
        "dataset": dataset(root.path(), 500, 200),
        "teacher": {"arch": conv_teacher(true), "train": {"epochs": 2}},
        "student": {"arch": student},
        "distill": {"temperature": 3, "alpha": 0.6, "intermediate": [{"teacher_layer": "blocks.0", "student_layer": "blocks.0"}]},
        "training": {"epochs": 3, "batch_size": 50, "optimizer": {"kind": "adamw", "lr": 0.003}, "seed": 9,
                     "augment": {"shift": 1}, "early_stopping": {"patience": 5}},
        "baseline": false
    }));
    let straight = tempfile::tempdir().unwrap();
    let expected = run(&s, root.path(), straight.path()).report;

    // 400 training samples (100 held out for early stopping), 8 steps an epoch.
    let dir = tempfile::tempdir().unwrap();
    for (phase, step) in [(Phase::Teacher(0), 11), (Phase::Student(0), 13)] {
        interrupted_at(&s, root.path(), dir.path(), phase, step);
    }
    let Ran { report: resumed, logs, .. } = run(&s, root.path(), dir.path());
    assert!(logs.iter().any(|m| m == "resumed from checkpoint: phase student, epoch 1, step 13"), "{logs:?}");
    let numbers = |r: &Report| {
        (
            r.teacher.accuracy,
            r.teacher.loss,
            r.student.accuracy,
            r.student.loss,
            r.student.training.as_ref().unwrap().best_epoch,
        )
    };
    assert_eq!(numbers(&resumed), numbers(&expected));
}
