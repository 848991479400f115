//! The training loop of one phase: batches in a seeded order, the distillation loss, the
//! optimiser, the learning-rate schedule, a validation pass and a checkpoint after every epoch,
//! and resumption from that checkpoint.

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::data::{Dataset, Split};
use super::files::{read_safetensors, write_safetensors};
use super::loss::hinton;
use super::model::{predictions, Mlp};
use super::optim::Optimizer;
use super::rng::{streams, Rng};
use super::{CheckpointInfo, Control, EngineError, EngineEvent, EpochMetrics, Phase, Progress, Stop};
use crate::spec::{OptimizerSpec, Schedule};

/// Everything that decides how a phase trains.
#[derive(Debug, Clone)]
pub struct PhasePlan {
    pub phase: Phase,
    pub epochs: u32,
    pub batch_size: usize,
    pub optimizer: OptimizerSpec,
    pub schedule: Schedule,
    pub warmup_steps: u64,
    pub seed: u64,
    pub temperature: f64,
    /// Weight of the distillation term; 0 trains on labels alone.
    pub alpha: f64,
}

impl PhasePlan {
    pub fn steps_per_epoch(&self, samples: usize) -> u64 {
        samples.div_ceil(self.batch_size) as u64
    }

    /// Learning rate at a 0-based step: linear warm-up, then constant or cosine decay to 0.
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        let base = self.optimizer.lr();
        if step < self.warmup_steps {
            return base * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.schedule {
            Schedule::Constant => base,
            Schedule::Cosine => {
                let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
                base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

/// What a finished phase hands on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhaseSummary {
    pub epochs: u32,
    pub steps: u64,
    /// Wall time spent training, over all runs of the phase (resumes included).
    pub wall_s: f64,
    pub samples_per_s: f64,
    pub final_train_loss: f64,
}

/// Where a checkpoint stands; stored as the file's metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Position {
    phase: Phase,
    epochs_done: u32,
    /// Batches of the next epoch already trained (non-zero after a shutdown mid-epoch).
    batches_into_epoch: u64,
    /// Sum of the losses of those batches, so the epoch's mean loss stays right.
    partial_loss_sum: f64,
    global_step: u64,
    optimizer_steps: u64,
    elapsed_s: f64,
    samples_seen: u64,
    /// Mean training loss of the last finished epoch.
    last_train_loss: Option<f64>,
}

pub struct PhaseContext<'a> {
    pub device: &'a Device,
    pub job_dir: &'a Path,
    pub control: &'a Control,
    pub sink: &'a mut dyn FnMut(EngineEvent),
}

pub fn checkpoint_file(phase: Phase) -> String {
    format!("checkpoint-{}.safetensors", phase.as_str())
}

/// Trains `init` under `plan`, resuming from the phase's checkpoint if one exists.
pub fn train_phase(
    ctx: &mut PhaseContext,
    plan: &PhasePlan,
    init: &Mlp,
    data: &Dataset,
    teacher: Option<&Mlp>,
) -> Result<(Mlp, PhaseSummary), EngineError> {
    let vars = init.to_vars()?;
    let mut optimizer = Optimizer::new(plan.optimizer, vars)?;
    let checkpoint_path = ctx.job_dir.join(checkpoint_file(plan.phase));
    let mut position = Position {
        phase: plan.phase,
        epochs_done: 0,
        batches_into_epoch: 0,
        partial_loss_sum: 0.0,
        global_step: 0,
        optimizer_steps: 0,
        elapsed_s: 0.0,
        samples_seen: 0,
        last_train_loss: None,
    };
    if checkpoint_path.exists() {
        position = restore(&checkpoint_path, &mut optimizer, ctx.device)?;
        (ctx.sink)(EngineEvent::Log(format!(
            "resumed from checkpoint: phase {}, epoch {}, step {}",
            plan.phase.as_str(),
            position.epochs_done,
            position.global_step
        )));
        if position.epochs_done >= plan.epochs {
            (ctx.sink)(EngineEvent::Log(format!("phase {} had already finished training", plan.phase.as_str())));
        }
    }
    // The teacher's logits on the training set never change: compute them once.
    let teacher_logits = match teacher.filter(|_| plan.alpha > 0.0) {
        Some(t) => {
            (ctx.sink)(EngineEvent::Log(format!(
                "teacher logits computed once for the {} training samples and reused every epoch (frozen teacher, no augmentation)",
                data.train.len()
            )));
            Some(t.logits(&data.train.x, data.features, ctx.device)?)
        }
        None => None,
    };
    let samples = data.train.len();
    let steps_per_epoch = plan.steps_per_epoch(samples);
    let total_steps = steps_per_epoch * plan.epochs as u64;
    let started = Instant::now();
    let elapsed_before = position.elapsed_s;
    let dropout = init.dropout();

    for epoch in position.epochs_done..plan.epochs {
        let mut order: Vec<usize> = (0..samples).collect();
        Rng::stream(plan.seed, &[streams::SHUFFLE, epoch as u64]).shuffle(&mut order);
        let skip = std::mem::take(&mut position.batches_into_epoch);
        let mut epoch_loss = std::mem::take(&mut position.partial_loss_sum);
        for (batch_index, batch) in order.chunks(plan.batch_size).enumerate().skip(skip as usize) {
            if let Some(stop) = ctx.control.check() {
                return Err(match stop {
                    Stop::Cancelled => EngineError::Cancelled,
                    Stop::Interrupted => {
                        // Data order and dropout masks derive from (epoch, batch), so a
                        // checkpoint taken mid-epoch resumes exactly where it stopped.
                        position.batches_into_epoch = batch_index as u64;
                        position.partial_loss_sum = epoch_loss;
                        position.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
                        position.optimizer_steps = optimizer.steps();
                        save(&checkpoint_path, &position, &optimizer)?;
                        (ctx.sink)(EngineEvent::Checkpoint(CheckpointInfo {
                            phase: plan.phase,
                            epoch: position.epochs_done,
                            step: position.global_step,
                            file: checkpoint_file(plan.phase),
                        }));
                        EngineError::Interrupted
                    }
                });
            }
            let (x, y) = gather(&data.train, data.features, batch, ctx.device)?;
            let model = Mlp::from_vars(optimizer.vars(), dropout);
            let mut dropout_rng = Rng::stream(plan.seed, &[streams::DROPOUT, epoch as u64, batch_index as u64]);
            let logits = model.forward(&x, Some(&mut dropout_rng))?;
            let teacher_batch = match &teacher_logits {
                Some(all) => Some(all.index_select(&Tensor::from_vec(batch.iter().map(|&i| i as u32).collect::<Vec<_>>(), batch.len(), ctx.device)?, 0)?),
                None => None,
            };
            let loss = hinton(&logits, teacher_batch.as_ref(), &y, plan.temperature, plan.alpha)?;
            let grads = loss.total.backward()?;
            let lr = plan.lr_at(position.global_step, total_steps);
            optimizer.step(&grads, lr)?;
            position.global_step += 1;
            position.samples_seen += batch.len() as u64;
            let total = loss.total.to_scalar::<f32>()? as f64;
            if !total.is_finite() {
                return Err(EngineError::Other(format!(
                    "the loss became {total} in phase {} at step {}; lower the learning rate",
                    plan.phase.as_str(),
                    position.global_step
                )));
            }
            epoch_loss += total;
            (ctx.sink)(EngineEvent::Progress(Progress {
                phase: plan.phase,
                epoch: epoch + 1,
                epochs: plan.epochs,
                step: position.global_step,
                total_steps,
                loss: total,
                soft: loss.soft.as_ref().map(|s| s.to_scalar::<f32>().map(f64::from)).transpose()?,
                hard: loss.hard.to_scalar::<f32>()? as f64,
                lr,
            }));
        }
        position.epochs_done = epoch + 1;
        position.last_train_loss = Some(epoch_loss / steps_per_epoch as f64);
        position.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        let model = Mlp::from_vars(optimizer.vars(), dropout).detached();
        let validation = evaluate(&model, &data.validation, data.features, ctx.device)?;
        (ctx.sink)(EngineEvent::Epoch(EpochMetrics {
            phase: plan.phase,
            epoch: epoch + 1,
            epochs: plan.epochs,
            step: position.global_step,
            train_loss: epoch_loss / steps_per_epoch as f64,
            val_loss: validation.loss,
            val_accuracy: validation.accuracy,
        }));
        position.optimizer_steps = optimizer.steps();
        save(&checkpoint_path, &position, &optimizer)?;
        (ctx.sink)(EngineEvent::Checkpoint(CheckpointInfo {
            phase: plan.phase,
            epoch: epoch + 1,
            step: position.global_step,
            file: checkpoint_file(plan.phase),
        }));
    }
    let model = Mlp::from_vars(optimizer.vars(), dropout).detached();
    let wall_s = position.elapsed_s.max(1e-9);
    Ok((
        model,
        PhaseSummary {
            epochs: plan.epochs,
            steps: position.global_step,
            wall_s,
            samples_per_s: position.samples_seen as f64 / wall_s,
            final_train_loss: position.last_train_loss.unwrap_or_default(),
        },
    ))
}

fn gather(split: &Split, features: usize, batch: &[usize], device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let mut x = Vec::with_capacity(batch.len() * features);
    let mut y = Vec::with_capacity(batch.len());
    for &i in batch {
        x.extend_from_slice(&split.x[i * features..(i + 1) * features]);
        y.push(split.y[i]);
    }
    Ok((Tensor::from_vec(x, (batch.len(), features), device)?, Tensor::from_vec(y, batch.len(), device)?))
}

/// A model's results on a split, from one forward pass over it.
pub struct Evaluation {
    /// Mean cross-entropy.
    pub loss: f64,
    pub accuracy: f64,
    /// The top-1 class of every sample.
    pub predictions: Vec<u32>,
}

pub fn evaluate(model: &Mlp, split: &Split, features: usize, device: &Device) -> candle_core::Result<Evaluation> {
    let logits = model.logits(&split.x, features, device)?;
    let labels = Tensor::from_slice(&split.y, split.len(), device)?;
    let loss = candle_nn::loss::cross_entropy(&logits, &labels)?.to_scalar::<f32>()? as f64;
    let predictions = predictions(&logits)?;
    let correct = predictions.iter().zip(&split.y).filter(|(p, y)| p == y).count();
    Ok(Evaluation { loss, accuracy: correct as f64 / split.len().max(1) as f64, predictions })
}

fn save(path: &Path, position: &Position, optimizer: &Optimizer) -> Result<(), EngineError> {
    let mut tensors: Vec<(String, Tensor)> = optimizer
        .vars()
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("param.{i}"), v.as_tensor().detach()))
        .collect();
    tensors.extend(optimizer.state()?);
    let meta = serde_json::to_value(position).map_err(|e| EngineError::Other(e.to_string()))?;
    write_safetensors(path, &tensors, Some(&meta))?;
    Ok(())
}

fn restore(path: &Path, optimizer: &mut Optimizer, device: &Device) -> Result<Position, EngineError> {
    let broken = |m: String| EngineError::Other(format!("checkpoint {} is unusable: {m}", path.display()));
    let (mut tensors, meta) = read_safetensors(path, device).map_err(broken)?;
    let meta = meta.ok_or_else(|| broken("no position metadata".into()))?;
    let position: Position = serde_json::from_value(meta).map_err(|e| broken(format!("bad position metadata: {e}")))?;
    for (i, var) in optimizer.vars().iter().enumerate() {
        let t = tensors.remove(&format!("param.{i}")).ok_or_else(|| broken(format!("lacks param.{i}")))?;
        var.set(&t).map_err(|e| broken(e.to_string()))?;
    }
    optimizer.restore(position.optimizer_steps, &mut tensors).map_err(broken)?;
    Ok(position)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(schedule: Schedule, warmup: u64) -> PhasePlan {
        PhasePlan {
            phase: Phase::Student,
            epochs: 1,
            batch_size: 8,
            optimizer: OptimizerSpec::Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.0 },
            schedule,
            warmup_steps: warmup,
            seed: 0,
            temperature: 4.0,
            alpha: 0.5,
        }
    }

    #[test]
    fn schedules() {
        let constant = plan(Schedule::Constant, 0);
        assert_eq!(constant.lr_at(0, 100), 0.1);
        assert_eq!(constant.lr_at(99, 100), 0.1);
        let cosine = plan(Schedule::Cosine, 10);
        assert!((cosine.lr_at(0, 110) - 0.01).abs() < 1e-12);
        assert!((cosine.lr_at(9, 110) - 0.1).abs() < 1e-12);
        assert!((cosine.lr_at(10, 110) - 0.1).abs() < 1e-12);
        assert!((cosine.lr_at(60, 110) - 0.05).abs() < 1e-12);
        assert!(cosine.lr_at(109, 110) < 0.001);
        assert_eq!(plan(Schedule::Constant, 0).steps_per_epoch(17), 3);
    }
}
