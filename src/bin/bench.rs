//! The distillation step, candle (this engine's own code path) against PyTorch on the same
//! machine, in the same run:
//!
//!     cargo run --release --bin bench                # installs PyTorch into .venv when absent
//!     cargo run --release --bin bench -- --no-torch   # candle only
//!     cargo run --release --bin bench -- --model conv # the conv nets
//!     cargo run --release --bin bench -- --model bert # the transformers
//!     cargo run --release --bin bench -- --model llama # causal LMs (see llama.rs)
//!     cargo run --release --bin bench -- --model mlp-train # whole training phases (phase.rs)
//!
//! Step: frozen teacher forward, student forward, Hinton loss (T = 4, α = 0.7), backward, AdamW;
//! batch 128 (32 for bert). `--model mlp` (default): teacher MLP 784-1200-1200-10, student MLP
//! 784-800-800-10. `--model conv`, on 1×28×28 images: teacher conv 32 and 64 (3×3, padding 1,
//! ReLU, 2×2 max pool), then 3136-256-10; student LeNet-5: conv 6 (5×5, padding 2) and 16 (5×5),
//! each with ReLU and 2×2 max pool, then 400-120-84-10. `--model bert`: a BERT of
//! MiniLM-L6-H384's sizes (vocabulary 30522, hidden 384, 6 layers, 12 heads, intermediate 1536,
//! exact GELU, 2 labels, pooler + classifier head; HF-style random weights) as the teacher, the
//! same with 3 layers as the student, on 64 random token ids per sample with a full attention
//! mask; dropout `--dropout` (0.1, as in training) in the student. Prints samples/s, GFLOP/s, the
//! share of the sgemm peak, per-phase times, inference latency and the candle ÷ PyTorch ratios.

#[path = "bench/llama.rs"]
mod llama;
#[path = "bench/phase.rs"]
mod phase;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use candle_core::{Device, Tensor};
use clap::{Parser, ValueEnum};
use distillery::engine::data::ImageShape;
use distillery::engine::models::bert::{self, BertConfig};
use distillery::engine::models::{Input, ModelError, Net};
use distillery::engine::rng::Rng;
use distillery::engine::train::loss::hinton;
use distillery::engine::train::optim::Optimizer;
use distillery::spec::{ArchSpec, OptimizerSpec, TransformerArch};
use serde_json::{json, Value};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Distillation step throughput: candle vs PyTorch")]
struct Args {
    /// Timed steps per repetition (default 30; 10 for bert, whose step takes about a second).
    #[arg(long, value_parser = at_least_one())]
    steps: Option<usize>,
    /// Rounds; each runs every candle variant and then PyTorch once, so slow phases of a noisy
    /// machine hit both sides. Medians over rounds are reported, ratios are paired per round.
    #[arg(long, default_value_t = 5, value_parser = at_least_one())]
    rounds: usize,
    /// Samples a step (default 128; 32 sequences for bert).
    #[arg(long, value_parser = at_least_one())]
    batch: Option<usize>,
    /// Skip the PyTorch reference.
    #[arg(long)]
    no_torch: bool,
    /// Python with torch to use (default: .venv/bin/python, created on first use).
    #[arg(long)]
    python: Option<String>,
    /// Which teacher/student pair to distil.
    #[arg(long, value_enum, default_value_t = Model::Mlp)]
    model: Model,
    /// bert only: dropout probability of the student's hidden states, attention probabilities
    /// and classifier input in training (the teacher runs in evaluation mode), on both sides.
    #[arg(long, default_value_t = 0.1)]
    dropout: f32,
    /// Run only the engine's variant (for profiling it, or for quicker rounds).
    #[arg(long)]
    engine_only: bool,
    /// mlp-train and bert-train: training samples an epoch (default 12,800; 512 for bert-train).
    #[arg(long, value_parser = at_least_one())]
    samples: Option<usize>,
    /// mlp-train and bert-train: epochs (default 3; 2 for bert-train).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    epochs: Option<u32>,
}

/// Counts of at least one: a zero would leave nothing to time (and no median to take).
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

impl Args {
    fn steps(&self) -> usize {
        self.steps.unwrap_or(match self.model {
            Model::Bert => 10,
            _ => 30,
        })
    }

    fn batch(&self) -> usize {
        self.batch.unwrap_or(match self.model {
            Model::Bert => 32,
            _ => 128,
        })
    }

    /// The whole-phase configurations.
    fn workload(&self) -> Option<phase::Workload> {
        match self.model {
            Model::MlpTrain => Some(phase::Workload::Mlp),
            Model::BertTrain => Some(phase::Workload::Bert),
            _ => None,
        }
    }

    /// Untimed steps before the timed ones, on both sides.
    fn warmup(&self) -> usize {
        match self.model {
            Model::Bert => 3,
            _ => 5,
        }
    }
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Model {
    Mlp,
    Conv,
    Bert,
    /// SmolLM2-135M's sizes into 6 layers; its own step and table (`llama.rs`).
    Llama,
    /// A whole teacher-training phase of an MLP (`phase.rs`).
    MlpTrain,
    /// A whole fine-tuning phase of a MiniLM-sized encoder (`phase.rs`).
    BertTrain,
}

const FEATURES: usize = 784;
const CLASSES: usize = 10;
/// Tokens a sequence in the bert configuration.
const LENGTH: usize = 64;

/// The two networks of one configuration.
enum Pair {
    /// MLPs and conv nets, as a job spec would give them.
    Layers { teacher: ArchSpec, student: ArchSpec },
    /// Encoders over packed text rows of `LENGTH` tokens.
    Bert { teacher: BertConfig, student: BertConfig },
}

struct Setup {
    pair: Pair,
    input: Input,
    classes: usize,
    /// For the header line.
    description: String,
    /// Name of the variant with `Net::with_fused_kernels(true)`: what it switches on here.
    engine_variant: &'static str,
}

impl Model {
    fn name(self) -> &'static str {
        match self {
            Model::Mlp => "mlp",
            Model::Conv => "conv",
            Model::Bert => "bert",
            Model::Llama => "llama",
            Model::MlpTrain => "mlp-train",
            Model::BertTrain => "bert-train",
        }
    }

    fn setup(self, dropout: f32) -> Setup {
        let arch = |spec: Value| serde_json::from_value::<ArchSpec>(spec).expect("a valid architecture");
        match self {
            Model::Mlp => Setup {
                pair: Pair::Layers {
                    teacher: arch(json!({"kind": "mlp", "hidden": [1200, 1200]})),
                    student: arch(json!({"kind": "mlp", "hidden": [800, 800]})),
                },
                input: Input { features: FEATURES, image: None },
                classes: CLASSES,
                description: "teacher 784-1200-1200-10 (frozen), student 784-800-800-10".into(),
                engine_variant: "+ fused linear (the engine)",
            },
            Model::Conv => Setup {
                pair: Pair::Layers {
                    teacher: arch(json!({"kind": "conv", "hidden": [256], "blocks": [
                        {"channels": 32, "kernel": 3, "padding": 1, "pool": "max"},
                        {"channels": 64, "kernel": 3, "padding": 1, "pool": "max"}]})),
                    student: arch(json!({"kind": "conv", "hidden": [120, 84], "blocks": [
                        {"channels": 6, "kernel": 5, "padding": 2, "pool": "max"},
                        {"channels": 16, "kernel": 5, "pool": "max"}]})),
                },
                input: Input { features: FEATURES, image: Some(ImageShape { channels: 1, height: 28, width: 28 }) },
                classes: CLASSES,
                description: "1×28×28 images, teacher conv 32-64 3×3 + 3136-256-10 (frozen), student LeNet-5".into(),
                engine_variant: "+ fused conv+fc (the engine)",
            },
            Model::Llama | Model::MlpTrain | Model::BertTrain => {
                unreachable!("--model {} takes its own path", self.name())
            }
            Model::Bert => {
                // all-MiniLM-L6-v2's config.json sizes, with a 2-label classification head.
                let config = |layers: usize| {
                    BertConfig::from_hf(&json!({
                        "model_type": "bert", "vocab_size": 30522, "hidden_size": 384,
                        "num_hidden_layers": layers, "num_attention_heads": 12, "intermediate_size": 1536,
                        "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
                        "hidden_act": "gelu", "hidden_dropout_prob": dropout,
                        "attention_probs_dropout_prob": dropout, "num_labels": 2,
                    }))
                    .expect("a valid BERT config")
                };
                Setup {
                    pair: Pair::Bert { teacher: config(6), student: config(3) },
                    input: Input { features: 3 * LENGTH, image: None },
                    classes: 2,
                    description: format!(
                        "{LENGTH} random token ids a sequence, full mask; teacher BERT 6 layers × 384 (MiniLM-L6-H384 sizes, frozen), \
                         student 3 layers; 2 labels; student dropout {dropout}"
                    ),
                    engine_variant: "+ fused linear (the engine)",
                }
            }
        }
    }
}

/// Fresh teacher and student: PyTorch's initialisation for MLPs and conv nets, `transformers'`
/// for the encoders.
fn networks(setup: &Setup, rng: &mut Rng, device: &Device) -> candle_core::Result<(Net, Net)> {
    let msg = |e: ModelError| candle_core::Error::Msg(e.to_string());
    match &setup.pair {
        Pair::Layers { teacher, student } => {
            let mut init = |arch: &ArchSpec| Net::init(arch, setup.input, setup.classes, rng, device).map_err(msg);
            Ok((init(teacher)?, init(student)?))
        }
        Pair::Bert { teacher, student } => {
            let arch = ArchSpec::Transformer(TransformerArch::default());
            let mut init = |config: &BertConfig| -> candle_core::Result<Net> {
                let named = config.init(rng, device)?;
                Net::transformer(&arch, config.clone(), setup.input, named, device).map_err(msg)
            };
            Ok((init(teacher)?, init(student)?))
        }
    }
}

/// One batch of inputs (uniform in ±1, or packed rows of random token ids with segment 0 and a
/// full mask) and random labels.
fn batch_data(setup: &Setup, batch: usize, rng: &mut Rng, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let features = setup.input.features;
    let x: Vec<f32> = match &setup.pair {
        Pair::Layers { .. } => (0..batch * features).map(|_| rng.uniform(-1.0, 1.0)).collect(),
        Pair::Bert { teacher, .. } => {
            let ids: Vec<u32> = (0..batch * LENGTH).map(|_| rng.below(teacher.vocab_size) as u32).collect();
            bert::pack(&ids, &vec![0; batch * LENGTH], &vec![1; batch * LENGTH], LENGTH)
        }
    };
    let x = Tensor::from_vec(x, (batch, features), device)?;
    let y: Vec<u32> = (0..batch).map(|_| rng.below(setup.classes) as u32).collect();
    Ok((x, Tensor::from_vec(y, batch, device)?))
}

/// Multiply-adds per sample of each conv and linear layer, in order. Pooling and ReLU (a
/// comparison per value, no multiply-adds) are not counted, like any work outside the products.
fn layer_macs(arch: &ArchSpec, input: Input, classes: usize) -> Vec<f64> {
    let mut macs = Vec::new();
    let mut width = input.features;
    if let Some(image) = input.image {
        let (mut h, mut w, mut c) = (image.height, image.width, image.channels);
        for b in arch.blocks() {
            h = (h + 2 * b.padding - b.kernel) / b.stride + 1;
            w = (w + 2 * b.padding - b.kernel) / b.stride + 1;
            macs.push((h * w * b.channels * b.kernel * b.kernel * c) as f64);
            c = b.channels;
            if b.pool.is_some() {
                (h, w) = (h / b.pool_size, w / b.pool_size);
            }
        }
        width = h * w * c;
    }
    for &out in arch.hidden().iter().chain([&classes]) {
        macs.push((width * out) as f64);
        width = out;
    }
    macs
}

/// Multiply-adds of an encoder's forward for one sequence of `length` tokens: per token and
/// layer the query, key, value and output projections (4h²) and the feed-forward pair (2hi), plus
/// the attention scores and their product with the values (2·length·h); then the pooler and
/// classifier on the first token. Embedding lookups, layer norms, softmax and GELU are not
/// counted, like any work outside the products.
fn bert_macs(config: &BertConfig, length: usize) -> f64 {
    let (h, i, l) = (config.hidden_size as f64, config.intermediate_size as f64, length as f64);
    let per_token_layer = 4.0 * h * h + 2.0 * h * i + 2.0 * l * h;
    config.num_layers as f64 * l * per_token_layer + h * h + h * config.num_labels as f64
}

/// Teacher forward + student forward + student backward: weight gradients for every layer (as
/// many MACs as its forward), input gradients for all but the first (whose input is data). An
/// encoder's first product reads the trainable embeddings, so its backward is twice its forward.
fn step_flops(setup: &Setup, batch: usize) -> f64 {
    let per_sample = match &setup.pair {
        Pair::Layers { teacher, student } => {
            let teacher: f64 = layer_macs(teacher, setup.input, setup.classes).iter().sum();
            let student = layer_macs(student, setup.input, setup.classes);
            let forward: f64 = student.iter().sum();
            teacher + forward + (2.0 * forward - student[0])
        }
        Pair::Bert { teacher, student } => bert_macs(teacher, LENGTH) + 3.0 * bert_macs(student, LENGTH),
    };
    2.0 * batch as f64 * per_sample
}

/// The middle value of `v` (the upper one of an even count), NaN for none.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn sgemm_peak(device: &Device) -> candle_core::Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (2048, 2048), device)?;
    let b = Tensor::randn(0f32, 1.0, (2048, 2048), device)?;
    a.matmul(&b)?;
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        a.matmul(&b)?;
        best = best.max(2.0 * 2048f64.powi(3) / start.elapsed().as_secs_f64() / 1e9);
    }
    Ok(best)
}

struct CandleResult {
    samples_per_s: f64,
    phases_ms: [f64; 4],
    latency_ms: [f64; 2],
}

const PHASES: [&str; 4] = ["teacher_forward", "student_forward", "loss_backward", "optimizer"];

/// What the candle step is built from, so each change can be measured against the one before.
#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    fused_optimizer: bool,
    fused_kernels: bool,
}

/// The last two differ only in the fused kernels, so their ratio is what those kernels buy.
fn variants(setup: &Setup) -> [Variant; 3] {
    [
        Variant { name: "candle ops only", fused_optimizer: false, fused_kernels: false },
        Variant { name: "+ fused AdamW", fused_optimizer: true, fused_kernels: false },
        Variant { name: setup.engine_variant, fused_optimizer: true, fused_kernels: true },
    ]
}

fn candle_step(args: &Args, setup: &Setup, device: &Device, variant: Variant) -> candle_core::Result<CandleResult> {
    let (steps, batch) = (args.steps(), args.batch());
    let mut rng = Rng::new(0);
    let (teacher, student) = networks(setup, &mut rng, device)?;
    // Plain tensors, no vars: the teacher's forward records no graph.
    let teacher = teacher.frozen()?.with_fused_kernels(variant.fused_kernels);
    let optimizer_spec = OptimizerSpec::Adamw { lr: 1e-3, weight_decay: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8 };
    let mut optimizer = if variant.fused_optimizer {
        Optimizer::new(optimizer_spec, student.to_vars()?)?
    } else {
        Optimizer::with_tensor_ops(optimizer_spec, student.to_vars()?)?
    };
    let (x, y) = batch_data(setup, batch, &mut rng, device)?;
    // Training mode, as the engine trains: dropout masks from here for the encoders (the MLP and
    // conv nets here have neither dropout nor batch norm), fused layers' gradients handed over.
    let mut dropout_rng = Rng::new(1);
    let mut phases: [Vec<f64>; 4] = Default::default();
    let mut step = |record: bool| -> candle_core::Result<()> {
        let t0 = Instant::now();
        let teacher_logits = teacher.forward(&x, None, &[])?.logits;
        device.synchronize()?;
        let t1 = Instant::now();
        let model = student.with_vars(optimizer.vars(), &[]).with_fused_kernels(variant.fused_kernels);
        let out = model.forward(&x, Some(&mut dropout_rng), &[])?;
        device.synchronize()?;
        let t2 = Instant::now();
        let loss = hinton(&out.logits, Some(&teacher_logits), &y, 4.0, 0.7)?;
        let grads = out.backward(&loss.total)?;
        device.synchronize()?;
        let t3 = Instant::now();
        optimizer.step(&grads, 1e-3)?;
        device.synchronize()?;
        let t4 = Instant::now();
        if record {
            for (slot, (a, b)) in phases.iter_mut().zip([(t0, t1), (t1, t2), (t2, t3), (t3, t4)]) {
                slot.push((b - a).as_secs_f64() * 1000.0);
            }
        }
        Ok(())
    };
    for _ in 0..args.warmup() {
        step(false)?;
    }
    let start = Instant::now();
    for _ in 0..steps {
        step(true)?;
    }
    let samples_per_s = (steps * batch) as f64 / start.elapsed().as_secs_f64();
    let frozen = student.with_vars(optimizer.vars(), &[]).frozen()?.with_fused_kernels(variant.fused_kernels);
    let samples: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let budget = std::time::Duration::from_millis(350);
    let latency = [
        distillery::engine::job::report::latency_ms(&frozen, &samples, 1, device, budget)?,
        distillery::engine::job::report::latency_ms(&frozen, &samples, batch, device, budget)?,
    ];
    Ok(CandleResult { samples_per_s, phases_ms: phases.map(median), latency_ms: latency })
}

/// Runs the committed PyTorch script once.
fn torch_step(python: &str, args: &Args) -> Result<Value, String> {
    let (steps, batch, warmup, dropout) =
        (args.steps().to_string(), args.batch().to_string(), args.warmup().to_string(), args.dropout.to_string());
    let output = Command::new(python)
        .args(["benches/kd_step.py", "--model", args.model.name(), "--steps", &steps, "--reps", "1", "--batch", &batch])
        .args(["--warmup", &warmup, "--dropout", &dropout])
        .output()
        .map_err(|e| format!("running {python}: {e}"))?;
    if !output.status.success() {
        return Err(format!("benches/kd_step.py failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("benches/kd_step.py printed no JSON: {e}"))
}

fn python(args: &Args) -> Result<String, String> {
    if let Some(p) = &args.python {
        return Ok(p.clone());
    }
    let venv = Path::new(".venv/bin/python");
    let has_torch =
        venv.exists() && Command::new(venv).args(["-c", "import torch"]).status().is_ok_and(|s| s.success());
    if !has_torch {
        eprintln!("installing PyTorch into .venv (once)…");
        let ok = Command::new("python3").args(["-m", "venv", ".venv"]).status().is_ok_and(|s| s.success())
            && Command::new(venv)
                .args(["-m", "pip", "install", "--quiet", "torch", "numpy"])
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            return Err("could not install PyTorch into .venv; pass --python or --no-torch".into());
        }
    }
    Ok(venv.display().to_string())
}

fn main() -> anyhow::Result<()> {
    distillery::engine::set_up_threads();
    distillery::engine::tune_allocator();
    let args = Args::parse();
    let torch = || match args.no_torch {
        true => Ok(None),
        false => python(&args).map(Some).map_err(anyhow::Error::msg),
    };
    if args.model == Model::Llama {
        return llama::run(args.rounds, args.steps.unwrap_or(5), torch()?.as_deref());
    }
    if let Some(workload) = args.workload() {
        let defaults = workload.default_sizes();
        let sizes = phase::Sizes {
            train: args.samples.unwrap_or(defaults.train),
            epochs: args.epochs.unwrap_or(defaults.epochs),
            batch: args.batch.unwrap_or(defaults.batch),
            ..defaults
        };
        return phase::run(workload, sizes, args.rounds, torch()?.as_deref());
    }
    kd_steps(&args, torch()?)
}

/// The KD-step configurations (mlp, conv, bert): every variant, then PyTorch, each round; the table.
fn kd_steps(args: &Args, python: Option<String>) -> anyhow::Result<()> {
    let device = Device::Cpu;
    let threads = candle_core::utils::get_num_threads();
    let (steps, batch) = (args.steps(), args.batch());
    let setup = args.model.setup(args.dropout);
    let variants = match args.engine_only {
        true => variants(&setup)[2..].to_vec(),
        false => variants(&setup).to_vec(),
    };
    let flops = step_flops(&setup, batch);
    let peak = sgemm_peak(&device)?;
    let mut candle: Vec<Vec<CandleResult>> = variants.iter().map(|_| Vec::new()).collect();
    let mut torch: Vec<Value> = Vec::new();
    for round in 0..args.rounds {
        eprintln!("round {}/{}", round + 1, args.rounds);
        for (slot, &variant) in candle.iter_mut().zip(&variants) {
            slot.push(candle_step(args, &setup, &device, variant)?);
        }
        // PyTorch runs after candle, never beside it, so the two never compete for the cores.
        if let Some(python) = &python {
            torch.push(torch_step(python, args).map_err(anyhow::Error::msg)?);
        }
    }
    let torch_rates: Vec<f64> = torch.iter().filter_map(|t| t["samples_per_s"].as_f64()).collect();
    let torch_field = |path: [&str; 2]| -> Option<f64> {
        (!torch.is_empty()).then(|| median(torch.iter().filter_map(|t| t[path[0]][path[1]].as_f64()).collect()))
    };

    let gflops = |rate: f64| rate / batch as f64 * flops / 1e9;
    println!("cpu: {}", distillery::engine::kernels::fastmath::cpu_and_dispatch());
    println!("distillation step: {}, Hinton T=4 α=0.7, AdamW, batch {batch}", setup.description);
    println!(
        "{:.2} GFLOP a step; {} rounds × {steps} steps, medians; candle threads {threads}",
        flops / 1e9,
        args.rounds
    );
    let torch_peak =
        (!torch.is_empty()).then(|| median(torch.iter().filter_map(|t| t["sgemm_gflops"].as_f64()).collect()));
    println!(
        "sgemm 2048² peak: candle {peak:.0} GFLOP/s{}",
        torch_peak.map(|p| format!(", torch {p:.0} GFLOP/s")).unwrap_or_default()
    );
    println!();
    println!("{:<30} {:>11} {:>9} {:>13} {:>11}", "", "samples/s", "GFLOP/s", "share of peak", "vs PyTorch");
    let row = |name: &str, rates: &[f64]| {
        let rate = median(rates.to_vec());
        let ratio = if torch_rates.len() == rates.len() {
            format!("{:.2}", median(rates.iter().zip(&torch_rates).map(|(c, t)| c / t).collect()))
        } else {
            "-".into()
        };
        println!("{name:<30} {rate:>11.0} {:>9.1} {:>12.0}% {ratio:>11}", gflops(rate), gflops(rate) / peak * 100.0);
    };
    if !torch_rates.is_empty() {
        row("pytorch", &torch_rates);
    }
    for (variant, results) in variants.iter().zip(&candle) {
        row(variant.name, &results.iter().map(|r| r.samples_per_s).collect::<Vec<_>>());
    }
    let engine = candle.last().expect("at least one variant");
    let cell = |v: Option<f64>, digits: usize| v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into());
    println!();
    print!("{:<18}", "per step (ms)");
    for i in 0..variants.len() {
        print!(" {:>10}", format!("variant {}", i + 1));
    }
    println!(" {:>10}", "pytorch");
    for (i, name) in PHASES.iter().enumerate() {
        print!("{name:<18}");
        for results in &candle {
            print!(" {:>10.2}", median(results.iter().map(|r| r.phases_ms[i]).collect()));
        }
        println!(" {:>10}", cell(torch_field(["phases_ms", name]), 2));
    }
    println!("(variants in the order of the table above)");
    println!();
    println!("{:<18} {:>10} {:>10}", "student latency", "candle", "pytorch");
    for (i, name) in ["batch_1".to_string(), format!("batch_{batch}")].iter().enumerate() {
        let candle_latency = median(engine.iter().map(|r| r.latency_ms[i]).collect());
        println!(
            "{:<18} {candle_latency:>10.3} {:>10}",
            format!("{name} (ms)"),
            cell(torch_field(["latency_ms", name.as_str()]), 3)
        );
    }
    if let Some(t) = torch.first() {
        println!("\ntorch {} with {} threads", t["torch"].as_str().unwrap_or("?"), t["threads"]);
    }
    Ok(())
}
