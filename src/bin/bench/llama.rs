//! `--model llama`: the token-level distillation step of a SmolLM2-shaped teacher (vocabulary
//! 49,152, hidden 576, 30 layers, 9 heads with 3 key/value heads, intermediate 1536) and a
//! 6-layer student over one sequence of 128 random tokens, against the same step in PyTorch
//! (`benches/llama_kd_step.py`) in the same run: teacher forward, student forward, 0.9·KL at
//! T = 1 over the full vocabulary + 0.1·CE on the 127 next tokens, backward, AdamW. Also the
//! engine's own step, which reads the teacher's top 32 logits per token from its cache instead
//! of running the teacher.

use std::process::Command;
use std::time::Instant;

use super::median;
use candle_core::{Device, Tensor, Var};
use distillery::engine::lm::targets::{head_token_loss, TeacherRows};
use distillery::engine::models::llama::{Llama, LlamaConfig};
use distillery::engine::rng::Rng;
use distillery::engine::train::loss::LogitLoss;
use distillery::engine::train::optim::Optimizer;
use distillery::engine::train::top_k_row;
use distillery::spec::OptimizerSpec;
use serde_json::Value;

const TOKENS: usize = 128;
const STUDENT_LAYERS: usize = 6;
const TOP_K: usize = 32;
pub const PHASES: [&str; 4] = ["teacher forward", "student forward", "loss + backward", "AdamW"];

fn config(layers: usize) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 49_152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_layers: layers,
        num_heads: 9,
        num_kv_heads: 3,
        rms_norm_eps: 1e-5,
        rope_theta: 100_000.0,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    }
}

/// Tokens a second and the median milliseconds of each phase.
pub struct StepResult {
    pub tokens_per_s: f64,
    pub phases_ms: [f64; 4],
}

/// The engine's step; `cached`: the teacher's top-k rows come from a cache filled once.
pub fn candle_step(steps: usize, warmup: usize, cached: bool) -> candle_core::Result<StepResult> {
    let device = Device::Cpu;
    let mut rng = Rng::new(0);
    let teacher =
        Llama { config: config(30), tensors: config(30).init(&mut rng, &device)?, transposed: false }.frozen()?;
    let student = Llama {
        config: config(STUDENT_LAYERS),
        tensors: config(STUDENT_LAYERS).init(&mut rng, &device)?,
        transposed: false,
    };
    let named = student.named();
    let vars: Vec<Var> = named.iter().map(|(_, t)| Var::from_tensor(t)).collect::<candle_core::Result<_>>()?;
    let tensors = named.iter().zip(&vars).map(|((n, _), v)| (n.clone(), v.as_tensor().clone())).collect();
    let student = Llama { config: student.config.clone(), tensors, transposed: false };
    let spec = OptimizerSpec::Adamw { lr: 1e-4, weight_decay: 0.0, beta1: 0.9, beta2: 0.999, eps: 1e-8 };
    let mut optimizer = Optimizer::new(spec, vars)?;
    let ids: Vec<u32> = (0..TOKENS).map(|_| rng.below(49_152) as u32).collect();
    let input = Tensor::from_slice(&ids, (1, TOKENS), &device)?;
    let next = Tensor::from_slice(&ids[1..], TOKENS - 1, &device)?;
    // The rows of the 127 positions that have a next token, as the job's targets select them.
    let target_rows = |values: Tensor| values.squeeze(0)?.narrow(0, 0, TOKENS - 1);
    let cache = match cached {
        true => Some(top_k_cache(&target_rows(teacher.forward(&input, false, false)?.logits)?, &device)?),
        false => None,
    };
    let mut phases: [Vec<f64>; 4] = Default::default();
    let mut step = |record: bool| -> candle_core::Result<()> {
        let t0 = Instant::now();
        let target = match &cache {
            Some(rows) => rows(),
            None => Ok(TeacherRows::Full(teacher.logits_of(&target_rows(teacher.final_hidden(&input, false)?)?)?)),
        }?;
        let t1 = Instant::now();
        let hidden = target_rows(student.final_hidden(&input, true)?)?;
        let t2 = Instant::now();
        let loss = head_token_loss(&hidden, student.output_weight(), Some(&target), &next, (LogitLoss::Kl, 1.0, 0.9))?;
        let grads = loss.total.backward()?;
        let t3 = Instant::now();
        optimizer.step(&grads, 1e-4)?;
        let t4 = Instant::now();
        if record {
            for (slot, (a, b)) in phases.iter_mut().zip([(t0, t1), (t1, t2), (t2, t3), (t3, t4)]) {
                slot.push((b - a).as_secs_f64() * 1000.0);
            }
        }
        Ok(())
    };
    for _ in 0..warmup {
        step(false)?;
    }
    let start = Instant::now();
    for _ in 0..steps {
        step(true)?;
    }
    let tokens_per_s = (steps * (TOKENS - 1)) as f64 / start.elapsed().as_secs_f64();
    Ok(StepResult { tokens_per_s, phases_ms: phases.map(median) })
}

/// The teacher's rows as the job's cache keeps them, rebuilt per step as the job reads them.
fn top_k_cache<'d>(
    logits: &Tensor,
    device: &'d Device,
) -> candle_core::Result<impl Fn() -> candle_core::Result<TeacherRows> + 'd> {
    let (mut values, mut ids, mut filler) = (Vec::new(), Vec::new(), Vec::new());
    for row in logits.to_vec2::<f32>()? {
        filler.push(top_k_row(&row, TOP_K, 1.0, &mut values, &mut ids));
    }
    let vocab = logits.dim(1)?;
    Ok(move || TeacherRows::top_k(&values, &ids, &filler, (vocab, 1.0), device))
}

/// Runs `benches/llama_kd_step.py` once.
pub fn torch_step(python: &str, steps: usize, warmup: usize) -> Result<Value, String> {
    let output = Command::new(python)
        .args(["benches/llama_kd_step.py", "--steps", &steps.to_string(), "--warmup", &warmup.to_string()])
        .args(["--tokens", &TOKENS.to_string(), "--student-layers", &STUDENT_LAYERS.to_string()])
        .output()
        .map_err(|e| format!("running {python}: {e}"))?;
    if !output.status.success() {
        return Err(format!("benches/llama_kd_step.py failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("benches/llama_kd_step.py printed no JSON: {e}"))
}

/// The rounds, then the table: tokens/s and per-phase times, engine against PyTorch.
pub fn run(rounds: usize, steps: usize, python: Option<&str>) -> anyhow::Result<()> {
    let warmup = 2;
    let (mut live, mut cached, mut torch) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        live.push(candle_step(steps, warmup, false)?);
        cached.push(candle_step(steps, warmup, true)?);
        if let Some(python) = python {
            torch.push(torch_step(python, steps, warmup).map_err(anyhow::Error::msg)?);
        }
    }
    println!("cpu: {}", distillery::engine::kernels::fastmath::cpu_and_dispatch());
    println!(
        "token-level KD step: SmolLM2-135M-shaped teacher (30 layers, frozen) → 6-layer student, {TOKENS} tokens, \
         0.9·KL (T = 1, full vocabulary 49,152) + 0.1·CE, AdamW; {rounds} rounds × {steps} steps, medians"
    );
    let torch_rates: Vec<f64> = torch.iter().filter_map(|t| t["tokens_per_s"].as_f64()).collect();
    println!("\n{:<36} {:>10} {:>11}", "", "tokens/s", "vs PyTorch");
    let row = |name: &str, rates: Vec<f64>| {
        let ratio = match torch_rates.len() == rates.len() {
            true => format!("{:.2}", median(rates.iter().zip(&torch_rates).map(|(c, t)| c / t).collect())),
            false => "-".into(),
        };
        println!("{name:<36} {:>10.1} {ratio:>11}", median(rates));
    };
    if !torch_rates.is_empty() {
        row("pytorch (teacher every step)", torch_rates.clone());
    }
    row("engine (teacher every step)", live.iter().map(|r| r.tokens_per_s).collect());
    row("engine (teacher top-32 cache)", cached.iter().map(|r| r.tokens_per_s).collect());
    println!("\n{:<18} {:>10} {:>10} {:>10}", "per step (ms)", "engine", "cached", "pytorch");
    for (i, name) in PHASES.iter().enumerate() {
        let torch_ms = (!torch.is_empty())
            .then(|| median(torch.iter().filter_map(|t| t["phases_ms"][name].as_f64()).collect()))
            .map_or("-".into(), |v| format!("{v:.1}"));
        let ours = |results: &[StepResult]| median(results.iter().map(|r| r.phases_ms[i]).collect());
        println!("{name:<18} {:>10.1} {:>10.1} {torch_ms:>10}", ours(&live), ours(&cached));
    }
    if let Some(t) = torch.first() {
        println!("\ntorch {} with {} threads", t["torch"].as_str().unwrap_or("?"), t["threads"]);
    }
    Ok(())
}
