//! Causal language-model jobs, from spec to report, on the same job API, events, checkpoints
//! and report as the classifiers: read the teacher (a Hugging Face folder or a GGUF file) and
//! the corpus → (sequence mode) the teacher's continuations of the training prompts → the
//! teacher's top-k cache → the distilled student → the baseline (the same student on the corpus
//! alone) → held-out perplexity, agreement, continuations → export as a Hugging Face folder.
//! A finished phase's weights are kept and reloaded by a restarted job; an unfinished phase
//! resumes from its checkpoint.

pub mod corpus;
mod evaluate;
mod export;
mod generate;
mod report;
pub mod setup;
pub mod targets;
mod train;

use std::time::Instant;

use candle_core::Device;
use tokenizers::Tokenizer;

use crate::engine::data::root::DataRoot;
use crate::engine::files::{read_safetensors, write_safetensors};
use crate::engine::job::budget::{self, JobSize, MemoryEstimate};
use crate::engine::job::{Admission, RunOutput};
use crate::engine::models::llama::{Llama, LlamaConfig};
use crate::engine::rng::Rng;
use crate::engine::train::loss::LogitLoss;
use crate::engine::train::{CacheReport, PhaseContext, PhaseSummary};
use crate::engine::{EngineError, EngineEvent, Phase};
use crate::layout::{weights_file, HF_ARCHIVE, HF_FOLDER};
use crate::spec::{DistillMode, JobSpec, SpecError};
use corpus::{Blocks, Corpus, Document};
use setup::{Job, GENERATIONS_FILE};
use targets::TopKCache;
use train::{LmPlan, Soft};

const CACHE_FILE: &str = "teacher-top-k.bin";

/// The end-of-sequence token: the config's, or the tokenizer's `<|endoftext|>` or `</s>`.
fn eos_token(config: &LlamaConfig, tokenizer: &Tokenizer) -> Result<u32, SpecError> {
    config
        .eos_token_id
        .or_else(|| ["<|endoftext|>", "</s>"].iter().find_map(|t| tokenizer.token_to_id(t)))
        .ok_or_else(|| SpecError::new("teacher.arch.path", "the teacher names no end-of-sequence token"))
}

/// The checks a language-model spec must pass before it is accepted: the teacher's header,
/// the student derived from it, and the corpus, tokenised for real.
pub fn preflight(spec: &JobSpec, root: &DataRoot) -> Result<Admission, SpecError> {
    let header = setup::read_header(spec, root)?;
    let student = setup::student_plan(spec, &header.config)?;
    let corpus = corpus::read(spec, root, &header.tokenizer)?;
    let blocks = corpus::pack(
        &corpus.train,
        spec.block_length(),
        eos_token(&header.config, &header.tokenizer)?,
        spec.dataset.limit,
    );
    if blocks.targets() == 0 {
        return Err(SpecError::new("dataset.path", "the corpus has no tokens to train on"));
    }
    Ok(Admission {
        memory: estimate_memory(spec, &header.config, &student.config, blocks.count()),
        size: job_size(spec, &header.config, &student.config, blocks.count()),
        warnings: setup::warnings(spec, &header.config, &student.config),
    })
}

fn estimate_memory(spec: &JobSpec, teacher: &LlamaConfig, student: &LlamaConfig, blocks: usize) -> MemoryEstimate {
    let mut estimate = MemoryEstimate::default();
    let f32s = |n: usize| budget::f32_bytes(n as u64);
    estimate.add(
        "teacher.arch.path",
        "the teacher's weights (and its file while read)",
        f32s(teacher.parameter_count()) * 2,
    );
    let students = if spec.baseline { 2 } else { 1 };
    // Weights, gradients, two optimiser moments and a checkpoint's copy; the finished one kept.
    estimate.add("student.arch", "the students' weights", f32s(student.parameter_count()) * (5 + students - 1));
    let tokens = spec.training.batch_size * spec.block_length();
    let per_layer =
        student.hidden_size * 12 + student.intermediate_size * 4 + student.num_heads * spec.block_length() * 3;
    // Logits, their log-softmax, gradients and the teacher's rows, all vocabulary-wide.
    let logits = tokens * student.vocab_size * 6;
    let teacher_live = match spec.language_top_k() {
        Some(_) => 0,
        None => tokens * (teacher.vocab_size * 2 + teacher.num_layers * teacher.hidden_size * 6),
    };
    estimate.add(
        "training.batch_size",
        "activations",
        f32s(tokens * student.num_layers * per_layer + logits + teacher_live),
    );
    estimate.add("dataset.path", "the corpus", (blocks * spec.block_length() * 5) as u64);
    estimate
}

fn job_size(spec: &JobSpec, teacher: &LlamaConfig, student: &LlamaConfig, blocks: usize) -> JobSize {
    let (t, s) = (teacher.parameter_count() as u64, student.parameter_count() as u64);
    JobSize {
        parameters: if s >= t { ("student.arch".into(), s) } else { ("teacher.arch.path".into(), t) },
        epoch_samples: ("training.epochs".into(), u64::from(spec.training.epochs) * blocks as u64),
        batch_size: ("training.batch_size".into(), spec.training.batch_size as u64),
        sequence_length: Some(("dataset.max_length".into(), spec.block_length() as u64)),
    }
}

/// Runs a language-model job on `device` (named `device_name` in the report).
pub fn run(
    spec: &JobSpec,
    (device_name, device): (&str, &Device),
    root: &DataRoot,
    ctx: PhaseContext,
) -> Result<RunOutput, EngineError> {
    let (teacher, header) = setup::read_teacher(spec, root, device)?;
    // Frozen for good: its projections in the layout inference runs fastest in.
    let teacher = teacher.frozen()?;
    let plan = setup::student_plan(spec, &teacher.config)?;
    let eos = eos_token(&teacher.config, &header.tokenizer)?;
    let corpus = corpus::read(spec, root, &header.tokenizer)?;
    let mut job = Job { spec, teacher: &teacher, header: &header, plan: &plan, ctx, eos };
    job.log_inputs(&corpus);
    let limit = spec.dataset.limit;
    let corpus_blocks = corpus::pack(&corpus.train, spec.block_length(), eos, limit);
    let held_out = corpus::pack(&corpus.held_out, spec.block_length(), eos, None);
    let (student_blocks, generations) = match spec.distill.mode {
        DistillMode::Token => (corpus_blocks.clone(), None),
        DistillMode::Sequence => {
            let (documents, generated) = job.teacher_generations(&corpus)?;
            (corpus::pack(&documents, spec.block_length(), eos, limit), Some(generated))
        }
    };
    let (student, cache) = job.student(&student_blocks, &held_out)?;
    let baseline = match spec.baseline {
        true => Some(job.phase(Phase::Baseline(0), &corpus_blocks, &held_out, None)?),
        false => None,
    };
    job.log("evaluating on the held-out blocks and generating continuations".into());
    let trained = report::Trained { student: &student, baseline: baseline.as_ref(), cache, generations };
    let report = report::build(&job, &corpus, (&held_out, student_blocks.targets()), trained, device_name)?;
    let artifacts = export::write(&job, &student.0, &report)?;
    job.log(format!("student exported as a Hugging Face LlamaForCausalLM folder: {HF_FOLDER} (and {HF_ARCHIVE})"));
    let _ = std::fs::remove_file(job.ctx.job_dir.join(CACHE_FILE));
    Ok(RunOutput { report, artifacts })
}

impl Job<'_, '_> {
    fn log(&mut self, message: String) {
        (self.ctx.sink)(EngineEvent::Log(message));
    }

    fn log_inputs(&mut self, corpus: &Corpus) {
        let c = &self.teacher.config;
        let s = &self.plan.config;
        let message = format!(
            "teacher llama: {} layers, hidden {}, {} heads ({} key/value), vocabulary {}, {} parameters; student: {} layers (teacher layers {:?}), hidden {}, {} parameters; corpus: {} training and {} held-out documents, {} tokens",
            c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size, c.parameter_count(),
            s.num_layers, self.plan.layer_map, s.hidden_size, s.parameter_count(),
            corpus.train.len(), corpus.held_out.len(), corpus.tokens()
        );
        self.log(message);
    }

    fn train_plan(&self, phase: Phase, soft: bool) -> LmPlan {
        let t = &self.spec.training;
        let d = &self.spec.distill;
        LmPlan {
            phase,
            epochs: t.epochs,
            batch_size: t.batch_size,
            optimizer: t.optimizer,
            schedule: t.schedule,
            warmup_steps: t.warmup_steps,
            seed: t.seed,
            // `mse` is refused for causal LMs at submission.
            soft: soft.then(|| (LogitLoss::of(d), d.temperature.at(0.0), d.alpha)),
        }
    }

    /// The distilled student: with the teacher's distributions (token mode, cached when the
    /// spec allows) or on the teacher's continuations (sequence mode).
    fn student(
        &mut self,
        blocks: &Blocks,
        held_out: &Blocks,
    ) -> Result<((Llama, PhaseSummary), Option<CacheReport>), EngineError> {
        if self.spec.distill.mode == DistillMode::Sequence {
            return Ok((self.phase(Phase::Student(0), blocks, held_out, None)?, None));
        }
        let Some(k) = self.spec.language_top_k() else {
            let soft = Some(Soft::Live(self.teacher));
            let off = CacheReport {
                used: false,
                reason: "disabled by the spec (distill.cache.enabled = false): the teacher runs at every step".into(),
                top_k: None,
                bytes: 0,
                fill_s: 0.0,
                reused: false,
            };
            return Ok((self.phase(Phase::Student(0), blocks, held_out, soft)?, Some(off)));
        };
        if let Some(done) = self.finished(Phase::Student(0))? {
            return Ok((done, None));
        }
        let started = Instant::now();
        let temperature = self.spec.distill.temperature.at(0.0);
        let (teacher, device, path) = (self.teacher, self.ctx.device, self.ctx.job_dir.join(CACHE_FILE));
        let sink = &mut *self.ctx.sink;
        let control = self.ctx.control;
        let mut progress = |done: usize, all: usize| -> Result<(), EngineError> {
            sink(EngineEvent::Log(format!("teacher cache: {done} of {all} blocks scored")));
            control.check().map_or(Ok(()), |stop| Err(stop.into()))
        };
        let (cache, reused) = TopKCache::open_or_fill(&path, teacher, blocks, (k, temperature), device, &mut progress)?;
        let report = CacheReport {
            used: true,
            reason: format!("the teacher is frozen: its top {} logits per token are computed once, kept on disk and read every epoch", cache.k),
            top_k: Some(cache.k),
            bytes: TopKCache::bytes(blocks.ids.len(), cache.k),
            fill_s: started.elapsed().as_secs_f64(),
            reused,
        };
        Ok((self.phase(Phase::Student(0), blocks, held_out, Some(Soft::Cached(&cache)))?, Some(report)))
    }

    /// A phase's result: reloaded when an earlier run finished it, else trained and saved.
    fn phase(
        &mut self,
        phase: Phase,
        blocks: &Blocks,
        held_out: &Blocks,
        soft: Option<Soft>,
    ) -> Result<(Llama, PhaseSummary), EngineError> {
        if let Some(done) = self.finished(phase)? {
            return Ok(done);
        }
        let plan = self.train_plan(phase, soft.is_some());
        let initial = self.plan.init(self.teacher, self.spec.training.seed, self.ctx.device)?;
        let (model, summary) = train::train(&plan, initial, (blocks, held_out), soft, &mut self.ctx)?;
        let meta = serde_json::to_value(&summary).map_err(|e| EngineError::Internal(e.to_string()))?;
        write_safetensors(&self.ctx.job_dir.join(weights_file(&phase.as_str())), &model.named(), Some(&meta))?;
        Ok((model, summary))
    }

    fn finished(&mut self, phase: Phase) -> Result<Option<(Llama, PhaseSummary)>, EngineError> {
        let path = self.ctx.job_dir.join(weights_file(&phase.as_str()));
        if !path.exists() {
            return Ok(None);
        }
        let broken = |m: String| EngineError::Corrupt(format!("{} is unusable: {m}", path.display()));
        let (tensors, meta) = read_safetensors(&path, self.ctx.device).map_err(broken)?;
        let summary: PhaseSummary = serde_json::from_value(meta.ok_or_else(|| broken("no summary".into()))?)
            .map_err(|e| broken(e.to_string()))?;
        let model = Llama::new(self.plan.config.clone(), tensors).map_err(|e| broken(e.to_string()))?;
        self.log(format!("{} was finished by an earlier run; reloaded", phase.as_str()));
        Ok(Some((model, summary)))
    }

    /// Sequence mode: the teacher's continuation of each training prompt, appended to
    /// [`GENERATIONS_FILE`] as it goes (a restarted job carries on after the last whole line).
    fn teacher_generations(&mut self, corpus: &Corpus) -> Result<(Vec<Document>, report::Generated), EngineError> {
        let settings = self.spec.generation();
        let count = settings.max_prompts.unwrap_or(usize::MAX);
        let prompts = corpus::prompts(&corpus.train, &settings, self.spec.block_length(), count);
        if prompts.is_empty() {
            return Err(SpecError::new(
                "distill.generation.prompt_tokens",
                "no training document is longer than a prompt",
            )
            .into());
        }
        let path = self.ctx.job_dir.join(GENERATIONS_FILE);
        let mut done = export::read_generations(&path)?;
        let started = Instant::now();
        let mut rng = Rng::stream(settings.seed, &[done.len() as u64]);
        for (i, prompt) in prompts.iter().enumerate().skip(done.len()) {
            if let Some(stop) = self.ctx.control.check() {
                return Err(stop.into());
            }
            let mut tokens =
                generate::continue_prompt(self.teacher, prompt, &settings, Some(self.eos), &mut rng, self.ctx.device)?
                    .tokens;
            tokens.retain(|&t| t != self.eos);
            export::append_generation(&path, &self.header.tokenizer, prompt, &tokens)?;
            done.push(Document { prompt: prompt.clone(), body: tokens });
            if (i + 1) % 10 == 0 || i + 1 == prompts.len() {
                self.log(format!("teacher generations: {} of {} prompts continued", i + 1, prompts.len()));
            }
        }
        let tokens = done.iter().map(|d| d.body.len()).sum();
        let generated = report::Generated { prompts: done.len(), tokens, wall_s: started.elapsed().as_secs_f64() };
        Ok((done, generated))
    }
}
