//! One causal-LM training phase: epochs over the training blocks in a seeded order, each step
//! the token-level loss (against the teacher's cached or live distributions, or the data alone)
//! and an optimiser update; after each epoch the held-out loss, and a checkpoint from which an
//! interrupted phase resumes at the batch it stopped at.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::corpus::Blocks;
use super::evaluate::score;
use super::targets::{head_token_loss, ids_tensor, Targets, TeacherRows, TopKCache};
use crate::engine::files::{read_safetensors, write_safetensors};
use crate::engine::models::llama::Llama;
use crate::engine::rng::Rng;
use crate::engine::train::loss::LogitLoss;
use crate::engine::train::optim::Optimizer;
use crate::engine::train::{learning_rate, PhaseContext, PhaseSummary};
use crate::engine::{CheckpointInfo, EngineError, EngineEvent, EpochMetrics, Phase, Progress};
use crate::spec::{OptimizerSpec, Schedule, Scheduled};

/// How one phase trains.
#[derive(Debug, Clone)]
pub struct LmPlan {
    pub phase: Phase,
    pub epochs: u32,
    pub batch_size: usize,
    pub optimizer: OptimizerSpec,
    pub schedule: Schedule,
    pub warmup_steps: u64,
    pub seed: u64,
    /// The divergence to the teacher, its temperature and α; `None`: the data alone.
    pub soft: Option<(LogitLoss, f64, Scheduled)>,
}

/// Where the teacher's distributions come from.
pub enum Soft<'a> {
    Cached(&'a TopKCache),
    /// The teacher itself, every step (the cache turned off).
    Live(&'a Llama),
}

/// Where a checkpoint stands; stored as its metadata.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Position {
    epochs_done: u32,
    batches_into_epoch: usize,
    partial_loss_sum: f64,
    step: u64,
    elapsed_s: f64,
    tokens_seen: u64,
    last_train_loss: f64,
}

struct Run<'a, 'c> {
    plan: &'a LmPlan,
    blocks: &'a Blocks,
    soft: Option<Soft<'a>>,
    ctx: &'a mut PhaseContext<'c>,
    model: Llama,
    optimizer: Optimizer,
    position: Position,
    total_steps: u64,
    checkpoint: PathBuf,
}

/// Trains `student` for the phase; returns the trained model and the phase's summary.
pub fn train(
    plan: &LmPlan,
    student: Llama,
    (blocks, held_out): (&Blocks, &Blocks),
    soft: Option<Soft>,
    ctx: &mut PhaseContext,
) -> Result<(Llama, PhaseSummary), EngineError> {
    let named = student.named();
    let vars = named.iter().map(|(_, t)| Var::from_tensor(t)).collect::<candle_core::Result<Vec<_>>>()?;
    let tensors = named.iter().zip(&vars).map(|((n, _), v)| (n.clone(), v.as_tensor().clone())).collect();
    let model = Llama { config: student.config.clone(), tensors, transposed: false };
    let optimizer = Optimizer::new(plan.optimizer, vars)?;
    let checkpoint = ctx.job_dir.join(crate::layout::checkpoint_file(&plan.phase.as_str()));
    let total_steps = plan.epochs as u64 * blocks.count().div_ceil(plan.batch_size) as u64;
    let mut run =
        Run { plan, blocks, soft, ctx, model, optimizer, position: Position::default(), total_steps, checkpoint };
    if run.checkpoint.exists() {
        run.restore()?;
        let p = &run.position;
        run.log(format!(
            "resuming {} at epoch {}, batch {}",
            plan.phase.as_str(),
            p.epochs_done + 1,
            p.batches_into_epoch
        ));
    }
    while run.position.epochs_done < plan.epochs {
        run.epoch()?;
        run.end_epoch(held_out)?;
    }
    let p = &run.position;
    let summary = PhaseSummary {
        epochs: plan.epochs,
        steps: p.step,
        wall_s: p.elapsed_s,
        samples_per_s: p.tokens_seen as f64 / p.elapsed_s.max(1e-9),
        final_train_loss: p.last_train_loss,
        labelled_samples: blocks.count(),
        transfer_samples: 0,
        best_epoch: None,
        stopped_early: false,
        teacher_cache: None,
    };
    Ok((run.model, summary))
}

impl Run<'_, '_> {
    fn log(&mut self, message: String) {
        (self.ctx.sink)(EngineEvent::Log(message));
    }

    /// The rest of the current epoch, from the batch a resume stopped at.
    fn epoch(&mut self) -> Result<(), EngineError> {
        let epoch = self.position.epochs_done;
        let mut order: Vec<usize> = (0..self.blocks.count()).collect();
        Rng::stream(self.plan.seed, &[u64::from(epoch)]).shuffle(&mut order);
        let batches: Vec<Vec<usize>> = order.chunks(self.plan.batch_size).map(<[usize]>::to_vec).collect();
        for batch in &batches[self.position.batches_into_epoch..] {
            if let Some(stop) = self.ctx.control.check() {
                self.save()?;
                return Err(stop.into());
            }
            let started = Instant::now();
            let loss = self.step(batch, epoch)?;
            self.position.elapsed_s += started.elapsed().as_secs_f64();
            self.position.partial_loss_sum += loss;
            self.position.batches_into_epoch += 1;
        }
        Ok(())
    }

    fn step(&mut self, batch: &[usize], epoch: u32) -> Result<f64, EngineError> {
        let device = self.ctx.device;
        let Some(targets) = Targets::of(self.blocks, batch, device)? else { return Ok(0.0) };
        let ids = ids_tensor(self.blocks, batch, device)?;
        let student = targets.select(&self.model.final_hidden(&ids, true)?)?;
        let progress = self.position.step as f64 / self.total_steps.max(1) as f64;
        let (kind, temperature, alpha) = match self.plan.soft {
            Some((kind, temperature, alpha)) => (kind, temperature, alpha.at(progress)),
            None => (LogitLoss::Kl, 1.0, 0.0),
        };
        let teacher = match &self.soft {
            Some(Soft::Cached(cache)) => Some(cache.rows(&targets.positions, temperature, device)?),
            Some(Soft::Live(teacher)) => {
                Some(TeacherRows::Full(teacher.logits_of(&targets.select(&teacher.final_hidden(&ids, false)?)?)?))
            }
            None => None,
        };
        let soft = (kind, temperature, alpha);
        let losses = head_token_loss(&student, self.model.output_weight(), teacher.as_ref(), &targets.next, soft)?;
        let loss = losses.total.to_scalar::<f32>()? as f64;
        if !loss.is_finite() {
            return Err(EngineError::Diverged {
                phase: self.plan.phase.as_str().into(),
                step: self.position.step,
                loss,
            });
        }
        let lr = learning_rate(
            self.plan.optimizer.lr(),
            self.plan.schedule,
            self.plan.warmup_steps,
            self.position.step,
            self.total_steps,
        );
        self.optimizer.step(&losses.total.backward()?, lr)?;
        self.position.step += 1;
        self.position.tokens_seen += targets.positions.len() as u64;
        let scalar = |t: &Option<Tensor>| t.as_ref().map(|s| s.to_scalar::<f32>().map(f64::from)).transpose();
        (self.ctx.sink)(EngineEvent::Progress(Progress {
            phase: self.plan.phase,
            epoch: epoch + 1,
            epochs: self.plan.epochs,
            step: self.position.step,
            total_steps: self.total_steps,
            loss,
            soft: scalar(&losses.soft)?,
            hard: losses.hard.to_scalar::<f32>()? as f64,
            features: None,
            lr,
            alpha,
            temperature,
        }));
        Ok(loss)
    }

    /// The epoch's held-out loss and accuracy, then its checkpoint.
    fn end_epoch(&mut self, held_out: &Blocks) -> Result<(), EngineError> {
        let batches = self.position.batches_into_epoch.max(1);
        self.position.last_train_loss = self.position.partial_loss_sum / batches as f64;
        self.position.epochs_done += 1;
        self.position.batches_into_epoch = 0;
        self.position.partial_loss_sum = 0.0;
        let scores = score(&self.model, held_out, self.plan.batch_size, self.ctx.device)?;
        (self.ctx.sink)(EngineEvent::Epoch(EpochMetrics {
            phase: self.plan.phase,
            epoch: self.position.epochs_done,
            epochs: self.plan.epochs,
            step: self.position.step,
            train_loss: self.position.last_train_loss,
            val_loss: scores.loss,
            val_accuracy: scores.accuracy,
            best: None,
        }));
        self.save()?;
        let file = self.checkpoint.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        (self.ctx.sink)(EngineEvent::Checkpoint(CheckpointInfo {
            phase: self.plan.phase,
            epoch: self.position.epochs_done,
            step: self.position.step,
            file,
        }));
        Ok(())
    }

    fn save(&self) -> Result<(), EngineError> {
        let mut tensors = self.model.named();
        tensors.extend(self.optimizer.state()?);
        let meta = serde_json::to_value(&self.position).map_err(|e| EngineError::Internal(e.to_string()))?;
        write_safetensors(&self.checkpoint, &tensors, Some(&meta))?;
        Ok(())
    }

    fn restore(&mut self) -> Result<(), EngineError> {
        let broken =
            |m: String| EngineError::Corrupt(format!("checkpoint {} is unusable: {m}", self.checkpoint.display()));
        let (mut tensors, meta) = read_safetensors(&self.checkpoint, &Device::Cpu).map_err(broken)?;
        let meta = meta.ok_or_else(|| broken("no position metadata".into()))?;
        let position: Position = serde_json::from_value(meta).map_err(|e| broken(e.to_string()))?;
        for (var, (name, _)) in self.optimizer.vars().iter().zip(self.model.named()) {
            let t = tensors.remove(&name).ok_or_else(|| broken(format!("lacks {name}")))?;
            var.set(&t.to_device(self.ctx.device)?).map_err(|e| broken(e.to_string()))?;
        }
        self.optimizer.restore(position.step, &mut tensors).map_err(|e| broken(e.to_string()))?;
        self.position = position;
        Ok(())
    }
}
