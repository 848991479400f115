//! `--model mlp-train` and `--model bert-train`: a whole training phase as a job runs it
//! (`train_phase`: seeded batches, dropout, cross-entropy on the labels, AdamW, the progress
//! events, a validation pass and a checkpoint after every epoch), against the same loop in
//! PyTorch (`benches/train_phase.py`) in the same run.
//!
//! `mlp-train`: the MNIST teacher of issue 17, MLP 784-1200-1200-10 with dropout 0.2, batch 128,
//! on random 784-feature samples. `bert-train`: fine-tuning a MiniLM-L6-H384-sized encoder
//! (6 layers, dropout 0.1) with a fresh 2-label head, batch 32 sequences of 64 random tokens.

use std::process::Command;
use std::time::Instant;

use super::median;
use candle_core::Device;
use distillery::engine::data::{Dataset, Normalization, Split};
use distillery::engine::models::bert::{self, BertConfig};
use distillery::engine::models::{Input, Net};
use distillery::engine::rng::Rng;
use distillery::engine::train::loss::LogitLoss;
use distillery::engine::train::{train_phase, PhaseContext, PhasePlan, Teachers};
use distillery::engine::{Control, EngineEvent, Phase};
use distillery::spec::{ArchSpec, CacheSpec, OptimizerSpec, Schedule, Scheduled, TransformerArch};
use serde_json::{json, Value};

/// Tokens a sequence in `bert-train`.
const LENGTH: usize = 64;

/// What one phase configuration trains.
#[derive(Clone, Copy, PartialEq)]
pub enum Workload {
    Mlp,
    Bert,
}

/// Sizes of one run: samples an epoch, held-out samples, epochs, batch.
#[derive(Clone, Copy)]
pub struct Sizes {
    pub train: usize,
    pub validation: usize,
    pub epochs: u32,
    pub batch: usize,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Mlp => "mlp-train",
            Workload::Bert => "bert-train",
        }
    }

    pub fn default_sizes(self) -> Sizes {
        match self {
            Workload::Mlp => Sizes { train: 12_800, validation: 2_560, epochs: 3, batch: 128 },
            Workload::Bert => Sizes { train: 512, validation: 128, epochs: 2, batch: 32 },
        }
    }

    fn lr(self) -> f64 {
        match self {
            Workload::Mlp => 1e-3,
            Workload::Bert => 5e-5,
        }
    }

    fn description(self, sizes: Sizes) -> String {
        let Sizes { train, validation, epochs, batch } = sizes;
        let what = match self {
            Workload::Mlp => "MLP 784-1200-1200-10, dropout 0.2, on random 784-feature samples".to_string(),
            Workload::Bert => format!(
                "BERT 6 layers × 384 (MiniLM-L6-H384 sizes), dropout 0.1, fresh 2-label head, {LENGTH} random tokens a sequence"
            ),
        };
        format!(
            "training phase: {what}; CE, AdamW (lr {}), batch {batch}, {epochs} epochs × {train} samples, \
             validation on {validation} and a checkpoint after each epoch",
            self.lr()
        )
    }

    fn net(self, rng: &mut Rng, device: &Device) -> anyhow::Result<Net> {
        match self {
            Workload::Mlp => {
                let arch: ArchSpec =
                    serde_json::from_value(json!({"kind": "mlp", "hidden": [1200, 1200], "dropout": 0.2}))?;
                Ok(Net::init(&arch, Input { features: 784, image: None }, 10, rng, device)?)
            }
            Workload::Bert => {
                let config = bert_config();
                let named = config.init(rng, device)?;
                let arch = ArchSpec::Transformer(TransformerArch::default());
                Ok(Net::transformer(&arch, config, Input { features: 3 * LENGTH, image: None }, named, device)?)
            }
        }
    }

    /// Random samples and labels as a dataset's split holds them.
    fn split(self, samples: usize, rng: &mut Rng) -> Split {
        match self {
            Workload::Mlp => Split {
                x: (0..samples * 784).map(|_| rng.uniform(-1.0, 1.0)).collect(),
                y: (0..samples).map(|_| rng.below(10) as u32).collect(),
            },
            Workload::Bert => {
                let n = samples * LENGTH;
                let ids: Vec<u32> = (0..n).map(|_| rng.below(30_522) as u32).collect();
                Split {
                    x: bert::pack(&ids, &vec![0; n], &vec![1; n], LENGTH),
                    y: (0..samples).map(|_| rng.below(2) as u32).collect(),
                }
            }
        }
    }

    fn dataset(self, sizes: Sizes, rng: &mut Rng) -> Dataset {
        let (features, classes) = match self {
            Workload::Mlp => (784, 10),
            Workload::Bert => (3 * LENGTH, 2),
        };
        Dataset {
            name: self.name().into(),
            features,
            classes,
            label_names: None,
            train: self.split(sizes.train, rng),
            labelled: sizes.train,
            validation: self.split(sizes.validation, rng),
            monitor: None,
            normalization: Normalization { mean: vec![0.0], std: vec![1.0] },
            image: None,
        }
    }

    fn plan(self, sizes: Sizes) -> PhasePlan {
        PhasePlan {
            phase: Phase::Teacher(0),
            epochs: sizes.epochs,
            batch_size: sizes.batch,
            optimizer: OptimizerSpec::Adamw { lr: self.lr(), weight_decay: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8 },
            schedule: Schedule::Constant,
            warmup_steps: 0,
            seed: 0,
            temperature: Scheduled::Constant(1.0),
            alpha: Scheduled::Constant(0.0),
            loss: LogitLoss::Kl,
            intermediate: Vec::new(),
            shift: None,
            early_stopping: None,
            cache: CacheSpec::default(),
            epoch_samples: None,
            stop_after: None,
        }
    }
}

/// all-MiniLM-L6-v2's config.json sizes, with a 2-label classification head.
fn bert_config() -> BertConfig {
    BertConfig::from_hf(&json!({
        "model_type": "bert", "vocab_size": 30522, "hidden_size": 384,
        "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
        "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "num_labels": 2,
    }))
    .expect("a valid BERT config")
}

/// One phase's figures, on either side.
pub struct PhaseResult {
    pub samples_per_s: f64,
    /// Median training step, and the mean end of epoch (validation and checkpoint), in ms.
    pub step_ms: f64,
    pub end_of_epoch_ms: f64,
}

/// The engine's phase, timed from the events it sends as a job's sink receives them.
pub fn candle_phase(workload: Workload, sizes: Sizes) -> anyhow::Result<PhaseResult> {
    let device = Device::Cpu;
    let mut rng = Rng::new(0);
    let data = workload.dataset(sizes, &mut rng);
    let init = workload.net(&mut rng, &device)?;
    let job_dir = std::env::temp_dir().join(format!("distillery-bench-{}", std::process::id()));
    std::fs::create_dir_all(&job_dir)?;
    let control = Control::default();
    let (mut steps, mut ends) = (Vec::new(), Vec::new());
    let mut last = Instant::now();
    let mut sink = |event: EngineEvent| {
        let now = Instant::now();
        match event {
            EngineEvent::Progress(_) => steps.push((now - last).as_secs_f64() * 1000.0),
            EngineEvent::Checkpoint(_) => ends.push((now - last).as_secs_f64() * 1000.0),
            _ => return,
        }
        last = now;
    };
    let mut ctx = PhaseContext { device: &device, job_dir: &job_dir, control: &control, sink: &mut sink };
    let started = Instant::now();
    let trained = train_phase(&mut ctx, &workload.plan(sizes), &init, &data, &Teachers::none());
    let wall = started.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&job_dir)?;
    trained?;
    Ok(PhaseResult {
        samples_per_s: (sizes.train * sizes.epochs as usize) as f64 / wall,
        step_ms: median(steps),
        end_of_epoch_ms: ends.iter().sum::<f64>() / ends.len() as f64,
    })
}

/// Runs `benches/train_phase.py` once.
pub fn torch_phase(python: &str, workload: Workload, sizes: Sizes) -> Result<PhaseResult, String> {
    let output = Command::new(python)
        .args(["benches/train_phase.py", "--model", workload.name()])
        .args(["--samples", &sizes.train.to_string(), "--validation", &sizes.validation.to_string()])
        .args(["--epochs", &sizes.epochs.to_string(), "--batch", &sizes.batch.to_string()])
        .output()
        .map_err(|e| format!("running {python}: {e}"))?;
    if !output.status.success() {
        return Err(format!("benches/train_phase.py failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let result: Value =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("benches/train_phase.py printed no JSON: {e}"))?;
    let field = |name: &str| result[name].as_f64().ok_or(format!("benches/train_phase.py gave no {name}"));
    Ok(PhaseResult {
        samples_per_s: field("samples_per_s")?,
        step_ms: field("step_ms")?,
        end_of_epoch_ms: field("end_of_epoch_ms")?,
    })
}

/// The rounds (engine, then PyTorch, never at once), then the table.
pub fn run(workload: Workload, sizes: Sizes, rounds: usize, python: Option<&str>) -> anyhow::Result<()> {
    let (mut ours, mut torch) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        ours.push(candle_phase(workload, sizes)?);
        if let Some(python) = python {
            torch.push(torch_phase(python, workload, sizes).map_err(anyhow::Error::msg)?);
        }
    }
    println!("cpu: {}", distillery::engine::kernels::fastmath::cpu_and_dispatch());
    println!("{}; {rounds} rounds, medians", workload.description(sizes));
    println!("\n{:<10} {:>11} {:>14} {:>20} {:>11}", "", "samples/s", "step (ms)", "end of epoch (ms)", "vs PyTorch");
    let ratio = match torch.len() == ours.len() {
        true => {
            format!("{:.2}", median(ours.iter().zip(&torch).map(|(c, t)| c.samples_per_s / t.samples_per_s).collect()))
        }
        false => "-".into(),
    };
    let row = |name: &str, results: &[PhaseResult], ratio: &str| {
        let m = |f: fn(&PhaseResult) -> f64| median(results.iter().map(f).collect());
        println!(
            "{name:<10} {:>11.0} {:>14.2} {:>20.1} {ratio:>11}",
            m(|r| r.samples_per_s),
            m(|r| r.step_ms),
            m(|r| r.end_of_epoch_ms)
        );
    };
    if !torch.is_empty() {
        row("pytorch", &torch, "1.00");
    }
    row("engine", &ours, &ratio);
    Ok(())
}
