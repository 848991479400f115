//! The distillation step, candle (this engine's own code path) against PyTorch on the same
//! machine, in the same run:
//!
//!     cargo run --release --bin bench                # installs PyTorch into .venv when absent
//!     cargo run --release --bin bench -- --no-torch   # candle only
//!
//! Step: frozen teacher MLP 784-1200-1200-10 forward, student MLP 784-800-800-10 forward, Hinton
//! loss (T = 4, α = 0.7), backward, AdamW; batch 128. Prints samples/s, GFLOP/s, the share of the
//! sgemm peak, per-phase times, inference latency and the candle ÷ PyTorch ratios.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use candle_core::{Device, Tensor};
use clap::Parser;
use distillery::engine::loss::hinton;
use distillery::engine::model::{Input, Net};
use distillery::engine::optim::Optimizer;
use distillery::engine::rng::Rng;
use distillery::spec::{ArchSpec, OptimizerSpec};
use serde_json::Value;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Distillation step throughput: candle vs PyTorch")]
struct Args {
    /// Timed steps per repetition.
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Rounds; each runs every candle variant and then PyTorch once, so slow phases of a noisy
    /// machine hit both sides. Medians over rounds are reported, ratios are paired per round.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Skip the PyTorch reference.
    #[arg(long)]
    no_torch: bool,
    /// Python with torch to use (default: .venv/bin/python, created on first use).
    #[arg(long)]
    python: Option<String>,
}

const TEACHER: [usize; 2] = [1200, 1200];
const STUDENT: [usize; 2] = [800, 800];
const FEATURES: usize = 784;
const CLASSES: usize = 10;

fn linear_flops(widths: &[usize], batch: usize) -> f64 {
    widths.windows(2).map(|w| 2.0 * (batch * w[0] * w[1]) as f64).sum()
}

/// Teacher forward + student forward + student backward (weight gradients for every layer,
/// input gradients for all but the first).
fn step_flops(batch: usize) -> f64 {
    let teacher = [&[FEATURES][..], &TEACHER, &[CLASSES]].concat();
    let student = [&[FEATURES][..], &STUDENT, &[CLASSES]].concat();
    let student_forward = linear_flops(&student, batch);
    let first_layer = 2.0 * (batch * FEATURES * STUDENT[0]) as f64;
    linear_flops(&teacher, batch) + student_forward + (2.0 * student_forward - first_layer)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
    fused_linear: bool,
}

const VARIANTS: [Variant; 3] = [
    Variant { name: "candle ops only", fused_optimizer: false, fused_linear: false },
    Variant { name: "+ fused AdamW", fused_optimizer: true, fused_linear: false },
    Variant { name: "+ fused linear (the engine)", fused_optimizer: true, fused_linear: true },
];

fn candle_step(args: &Args, device: &Device, variant: Variant) -> candle_core::Result<CandleResult> {
    let mut rng = Rng::new(0);
    let arch = |hidden: &[usize]| ArchSpec::Mlp { hidden: hidden.to_vec(), dropout: 0.0 };
    let input = Input { features: FEATURES, image: None };
    let teacher = Net::init(&arch(&TEACHER), input, CLASSES, &mut rng, device).map_err(candle_core::Error::Msg)?.with_fused_kernels(variant.fused_linear);
    let student = Net::init(&arch(&STUDENT), input, CLASSES, &mut rng, device).map_err(candle_core::Error::Msg)?;
    let optimizer_spec = OptimizerSpec::Adamw { lr: 1e-3, weight_decay: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8 };
    let mut optimizer = if variant.fused_optimizer {
        Optimizer::new(optimizer_spec, student.to_vars()?)?
    } else {
        Optimizer::with_tensor_ops(optimizer_spec, student.to_vars()?)?
    };
    let x: Vec<f32> = (0..args.batch * FEATURES).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let x = Tensor::from_vec(x, (args.batch, FEATURES), device)?;
    let y: Vec<u32> = (0..args.batch).map(|_| rng.below(CLASSES) as u32).collect();
    let y = Tensor::from_vec(y, args.batch, device)?;
    let mut phases: [Vec<f64>; 4] = Default::default();
    let mut step = |record: bool| -> candle_core::Result<()> {
        let t0 = Instant::now();
        let teacher_logits = teacher.forward(&x, None, &[])?.logits;
        device.synchronize()?;
        let t1 = Instant::now();
        let model = student.with_vars(optimizer.vars(), &[]).with_fused_kernels(variant.fused_linear);
        let logits = model.forward(&x, None, &[])?.logits;
        device.synchronize()?;
        let t2 = Instant::now();
        let loss = hinton(&logits, Some(&teacher_logits), &y, 4.0, 0.7)?;
        let grads = loss.total.backward()?;
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
    for _ in 0..5 {
        step(false)?;
    }
    let start = Instant::now();
    for _ in 0..args.steps {
        step(true)?;
    }
    let samples_per_s = (args.steps * args.batch) as f64 / start.elapsed().as_secs_f64();
    let frozen = student.with_vars(optimizer.vars(), &[]).detached().with_fused_kernels(variant.fused_linear);
    let samples: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let budget = std::time::Duration::from_millis(350);
    let latency = [
        distillery::engine::report::latency_ms(&frozen, &samples, 1, device, budget)?,
        distillery::engine::report::latency_ms(&frozen, &samples, 128, device, budget)?,
    ];
    Ok(CandleResult { samples_per_s, phases_ms: phases.map(median), latency_ms: latency })
}

/// Runs the committed PyTorch script once.
fn torch_step(python: &str, args: &Args) -> Result<Value, String> {
    let output = Command::new(python)
        .args(["benches/kd_step.py", "--steps", &args.steps.to_string(), "--reps", "1", "--batch", &args.batch.to_string()])
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
    let has_torch = venv.exists() && Command::new(venv).args(["-c", "import torch"]).status().is_ok_and(|s| s.success());
    if !has_torch {
        eprintln!("installing PyTorch into .venv (once)…");
        let ok = Command::new("python3").args(["-m", "venv", ".venv"]).status().is_ok_and(|s| s.success())
            && Command::new(venv).args(["-m", "pip", "install", "--quiet", "torch", "numpy"]).status().is_ok_and(|s| s.success());
        if !ok {
            return Err("could not install PyTorch into .venv; pass --python or --no-torch".into());
        }
    }
    Ok(venv.display().to_string())
}

fn main() -> anyhow::Result<()> {
    distillery::engine::pin_thread_count();
    let args = Args::parse();
    let device = Device::Cpu;
    let threads = candle_core::utils::get_num_threads();
    let flops = step_flops(args.batch);
    let peak = sgemm_peak(&device)?;
    let python = if args.no_torch { None } else { Some(python(&args).map_err(anyhow::Error::msg)?) };
    let mut candle: Vec<Vec<CandleResult>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    let mut torch: Vec<Value> = Vec::new();
    for round in 0..args.rounds {
        eprintln!("round {}/{}", round + 1, args.rounds);
        for (slot, &variant) in candle.iter_mut().zip(&VARIANTS) {
            slot.push(candle_step(&args, &device, variant)?);
        }
        // PyTorch runs after candle, never beside it, so the two never compete for the cores.
        if let Some(python) = &python {
            torch.push(torch_step(python, &args).map_err(anyhow::Error::msg)?);
        }
    }
    let torch_rates: Vec<f64> = torch.iter().filter_map(|t| t["samples_per_s"].as_f64()).collect();
    let torch_field = |path: [&str; 2]| -> Option<f64> {
        (!torch.is_empty()).then(|| median(torch.iter().filter_map(|t| t[path[0]][path[1]].as_f64()).collect()))
    };

    let gflops = |rate: f64| rate / args.batch as f64 * flops / 1e9;
    println!("distillation step: teacher 784-1200-1200-10 (frozen), student 784-800-800-10, Hinton T=4 α=0.7, AdamW, batch {}", args.batch);
    println!("{:.2} GFLOP a step; {} rounds × {} steps, medians; candle threads {threads}", flops / 1e9, args.rounds, args.steps);
    let torch_peak = (!torch.is_empty()).then(|| median(torch.iter().filter_map(|t| t["sgemm_gflops"].as_f64()).collect()));
    println!("sgemm 2048² peak: candle {peak:.0} GFLOP/s{}", torch_peak.map(|p| format!(", torch {p:.0} GFLOP/s")).unwrap_or_default());
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
    for (variant, results) in VARIANTS.iter().zip(&candle) {
        row(variant.name, &results.iter().map(|r| r.samples_per_s).collect::<Vec<_>>());
    }
    let engine = candle.last().expect("at least one variant");
    let cell = |v: Option<f64>, digits: usize| v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into());
    println!();
    print!("{:<18}", "per step (ms)");
    for i in 0..VARIANTS.len() {
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
    for (i, name) in ["batch_1", "batch_128"].iter().enumerate() {
        let candle_latency = median(engine.iter().map(|r| r.latency_ms[i]).collect());
        println!("{:<18} {candle_latency:>10.3} {:>10}", format!("{name} (ms)"), cell(torch_field(["latency_ms", name]), 3));
    }
    if let Some(t) = torch.first() {
        println!("\ntorch {} with {} threads", t["torch"].as_str().unwrap_or("?"), t["threads"]);
    }
    Ok(())
}
