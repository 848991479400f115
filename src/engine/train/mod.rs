//! The training loop of one phase: batches in a seeded order (optionally shifted), the
//! distillation loss (soft targets from one or more teachers, intermediate layers through
//! learned projections), the optimiser, the schedules, a validation pass and a checkpoint after
//! every epoch, early stopping, and resumption from the checkpoint.

pub mod loss;
pub mod optim;

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::engine::data::{gather, Dataset, Split};
use crate::engine::files::{read_safetensors, write_safetensors};
use crate::engine::models::{predictions, Net, Output};
use crate::engine::rng::{streams, Rng};
use crate::engine::train::loss::{feature_loss, labelled_cross_entropy, logit_loss, FeatureLoss, LogitLoss};
use crate::engine::train::optim::Optimizer;
use crate::engine::{CheckpointInfo, Control, EngineError, EngineEvent, EpochMetrics, Phase, Progress, Stop};
use crate::spec::{CacheSpec, EarlyStopping, OptimizerSpec, Schedule, Scheduled};

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
    pub temperature: Scheduled,
    /// Weight of the soft term; the labels get 1 − α. Constant 0 trains on labels alone.
    pub alpha: Scheduled,
    pub loss: LogitLoss,
    pub intermediate: Vec<LayerPair>,
    /// Largest random shift of image inputs, in pixels.
    pub shift: Option<usize>,
    pub early_stopping: Option<EarlyStopping>,
    pub cache: CacheSpec,
    /// Samples an epoch takes when more than the phase draws from, in passes over them, each in
    /// its own seeded order: the baseline of a job with a transfer set takes the student's steps.
    pub epoch_samples: Option<usize>,
    /// Stop after this many epochs, keeping the checkpoint, so a later call with a larger value
    /// carries on (a sweep's rungs); the schedules still span `epochs`.
    pub stop_after: Option<u32>,
}

/// One intermediate-layer term, resolved against both architectures.
#[derive(Debug, Clone)]
pub struct LayerPair {
    pub teacher: usize,
    pub teacher_layer: String,
    pub student_layer: String,
    pub loss: FeatureLoss,
    pub weight: f64,
    /// (student width, teacher width) of the learned projection, where they differ: a linear
    /// map for hidden layers, a 1×1 convolution (the same map per pixel) for feature maps.
    pub projection: Option<(usize, usize)>,
}

/// The frozen teachers of a distillation phase, with their ensemble weights (summing to 1).
pub struct Teachers<'a> {
    pub nets: Vec<&'a Net>,
    pub weights: Vec<f64>,
    /// The teachers' logits over the training samples, filled by the first phase that caches
    /// them and reused by the job's later ones (a sweep's trials, repeated runs).
    pub logits: Option<&'a OnceCell<Vec<Vec<f32>>>>,
}

impl Teachers<'_> {
    /// No teachers: a phase that learns from labels alone.
    pub fn none() -> Self {
        Teachers { nets: Vec::new(), weights: Vec::new(), logits: None }
    }
}

impl PhasePlan {
    pub fn steps_per_epoch(&self, samples: usize) -> u64 {
        samples.div_ceil(self.batch_size) as u64
    }

    /// Learning rate at a 0-based step of `total`.
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        learning_rate(self.optimizer.lr(), self.schedule, self.warmup_steps, step, total)
    }

    /// Whether this phase learns from teachers at all.
    pub fn distils(&self) -> bool {
        self.alpha != Scheduled::Constant(0.0) || !self.intermediate.is_empty()
    }

    /// The training samples an epoch visits: the labelled ones, then the transfer set when the
    /// phase learns from teachers (they have nothing to teach without one).
    pub fn samples(&self, teachers: &Teachers, data: &Dataset) -> usize {
        match self.distils() && !teachers.nets.is_empty() {
            true => data.train.len(),
            false => data.labelled,
        }
    }

    /// Samples an epoch takes: every sample it draws from once, or `epoch_samples` when more.
    pub fn epoch_length(&self, teachers: &Teachers, data: &Dataset) -> usize {
        self.samples(teachers, data).max(self.epoch_samples.unwrap_or(0))
    }
}

/// Learning rate at a 0-based step: linear warm-up from `base`, then constant or cosine decay to 0.
pub fn learning_rate(base: f64, schedule: Schedule, warmup_steps: u64, step: u64, total: u64) -> f64 {
    if step < warmup_steps {
        return base * (step + 1) as f64 / warmup_steps as f64;
    }
    match schedule {
        Schedule::Constant => base,
        Schedule::Cosine => {
            let span = total.saturating_sub(warmup_steps).max(1) as f64;
            let progress = ((step - warmup_steps) as f64 / span).min(1.0);
            base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

/// The `k` largest logits of `row` (appended to `values` and `ids`, largest first) and the one
/// filler logit that gives every other class the same share of their total probability at
/// `temperature`: T·(logsumexp(rest/T) − ln|rest|). `k` < `row.len()`.
pub fn top_k_row(row: &[f32], k: usize, temperature: f64, values: &mut Vec<f32>, ids: &mut Vec<u32>) -> f32 {
    let mut order: Vec<u32> = (0..row.len() as u32).collect();
    let larger = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]);
    order.select_nth_unstable_by(k, larger);
    let (top, rest) = order.split_at_mut(k);
    top.sort_unstable_by(larger);
    values.extend(top.iter().map(|&j| row[j as usize]));
    ids.extend_from_slice(top);
    let max = rest.iter().map(|&j| row[j as usize] as f64 / temperature).fold(f64::NEG_INFINITY, f64::max);
    let lse = max + rest.iter().map(|&j| (row[j as usize] as f64 / temperature - max).exp()).sum::<f64>().ln();
    (temperature * (lse - (rest.len() as f64).ln())) as f32
}

/// Why the teachers' logits were or were not computed once for the whole phase.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CacheReport {
    pub used: bool,
    /// What decided it, in words.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// Memory the cache holds.
    pub bytes: u64,
    /// Time spent filling it (teacher forward passes over the training set).
    pub fill_s: f64,
    /// The logits came from an earlier phase of the job, not from teacher passes of this one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reused: bool,
}

/// What a finished phase hands on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhaseSummary {
    /// Epochs trained (fewer than planned when early stopping ended the phase).
    pub epochs: u32,
    pub steps: u64,
    /// Wall time spent training, over all runs of the phase (resumes included).
    pub wall_s: f64,
    pub samples_per_s: f64,
    pub final_train_loss: f64,
    /// Samples an epoch trained on: with labels, and from the transfer set (no labels).
    #[serde(default)]
    pub labelled_samples: usize,
    #[serde(default)]
    pub transfer_samples: usize,
    /// With early stopping: the epoch whose weights are the result, and whether it stopped early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_epoch: Option<u32>,
    #[serde(default)]
    pub stopped_early: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_cache: Option<CacheReport>,
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
    #[serde(default)]
    best: Option<Best>,
    #[serde(default)]
    stopped_early: bool,
}

impl Position {
    fn start(phase: Phase) -> Self {
        Position {
            phase,
            epochs_done: 0,
            batches_into_epoch: 0,
            partial_loss_sum: 0.0,
            global_step: 0,
            optimizer_steps: 0,
            elapsed_s: 0.0,
            samples_seen: 0,
            last_train_loss: None,
            best: None,
            stopped_early: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Best {
    epoch: u32,
    val_loss: f64,
    epochs_since: u32,
}

pub struct PhaseContext<'a> {
    pub device: &'a Device,
    pub job_dir: &'a Path,
    pub control: &'a Control,
    pub sink: &'a mut dyn FnMut(EngineEvent),
}

fn checkpoint_file(phase: Phase) -> String {
    crate::layout::checkpoint_file(&phase.as_str())
}

fn best_file(phase: Phase) -> String {
    crate::layout::best_file(&phase.as_str())
}

/// The teachers' logits over the training set, computed once when nothing makes them change
/// between epochs (no augmentation, no layer pairs): the phase reads its batches from here.
enum TeacherCache<'t> {
    /// Per teacher: every training sample's logits, row-major; borrowed from the job's shared
    /// copy when there is one.
    Full(Cow<'t, [Vec<f32>]>),
    /// Per teacher: the k largest logits and their classes per sample, and one filler logit
    /// per sample for all other classes, chosen so their total probability at T is exact.
    TopK { k: usize, values: Vec<Vec<f32>>, classes: Vec<Vec<u32>>, filler: Vec<Vec<f32>> },
}

impl TeacherCache<'_> {
    fn batch(&self, teacher: usize, batch: &[usize], classes: usize, device: &Device) -> candle_core::Result<Tensor> {
        let mut out = Vec::with_capacity(batch.len() * classes);
        match self {
            TeacherCache::Full(all) => {
                for &i in batch {
                    out.extend_from_slice(&all[teacher][i * classes..(i + 1) * classes]);
                }
            }
            TeacherCache::TopK { k, values, classes: ids, filler } => {
                for &i in batch {
                    let row = out.len();
                    out.extend(std::iter::repeat_n(filler[teacher][i], classes));
                    for j in i * k..(i + 1) * k {
                        out[row + ids[teacher][j] as usize] = values[teacher][j];
                    }
                }
            }
        }
        Tensor::from_vec(out, (batch.len(), classes), device)
    }

    fn bytes(&self) -> u64 {
        let f = std::mem::size_of::<f32>() as u64;
        match self {
            TeacherCache::Full(all) => all.iter().map(|v| v.len() as u64 * f).sum(),
            TeacherCache::TopK { values, classes, filler, .. } => {
                values.iter().chain(filler).map(|v| v.len() as u64 * f).sum::<u64>()
                    + classes.iter().map(|v| v.len() as u64 * 4).sum::<u64>()
            }
        }
    }
}

/// Fills the cache when it applies; says why when it does not.
fn teacher_targets<'t>(
    plan: &PhasePlan,
    teachers: &Teachers<'t>,
    data: &Dataset,
    device: &Device,
) -> Result<(Option<TeacherCache<'t>>, CacheReport), EngineError> {
    let off = |reason: &str| {
        (None, CacheReport { used: false, reason: reason.into(), top_k: None, bytes: 0, fill_s: 0.0, reused: false })
    };
    if !plan.cache.enabled {
        return Ok(off("disabled by the spec (distill.cache.enabled = false)"));
    }
    if plan.shift.is_some() {
        return Ok(off("inputs are augmented, so the teachers see new inputs every epoch"));
    }
    if !plan.intermediate.is_empty() {
        return Ok(off("intermediate layers need the teachers' feature maps of every batch"));
    }
    let started = Instant::now();
    let classes = data.classes;
    let compute = || -> candle_core::Result<Vec<Vec<f32>>> {
        teachers.nets.iter().map(|t| t.logits(&data.train.x, device)?.flatten_all()?.to_vec1::<f32>()).collect()
    };
    let (logits, reused) = match teachers.logits {
        None => (Cow::Owned(compute()?), false),
        Some(shared) => {
            let reused = shared.get().is_some();
            if !reused {
                // Unset just above, so the value is ours to store.
                let _ = shared.set(compute()?);
            }
            (Cow::Borrowed(shared.get().expect("filled above").as_slice()), reused)
        }
    };
    let targets = match plan.cache.top_k.filter(|&k| k < classes) {
        None => TeacherCache::Full(logits),
        Some(k) => {
            let temperature = plan.temperature.at(0.0);
            let (mut values, mut ids, mut filler) = (Vec::new(), Vec::new(), Vec::new());
            for all in logits.iter() {
                let (mut v, mut c, mut f) = (Vec::new(), Vec::new(), Vec::new());
                for row in all.chunks_exact(classes) {
                    f.push(top_k_row(row, k, temperature, &mut v, &mut c));
                }
                values.push(v);
                ids.push(c);
                filler.push(f);
            }
            TeacherCache::TopK { k, values, classes: ids, filler }
        }
    };
    let top_k = match &targets {
        TeacherCache::TopK { k, .. } => Some(*k),
        TeacherCache::Full(_) => None,
    };
    let report = CacheReport {
        used: true,
        reason: "the teachers are frozen and the inputs are not augmented: their logits are computed once and reused every epoch".into(),
        top_k,
        bytes: targets.bytes(),
        fill_s: started.elapsed().as_secs_f64(),
        reused,
    };
    Ok((Some(targets), report))
}

/// Trains `init` under `plan`, resuming from the phase's checkpoint if one exists.
pub fn train_phase(
    ctx: &mut PhaseContext,
    plan: &PhasePlan,
    init: &Net,
    data: &Dataset,
    teachers: &Teachers,
) -> Result<(Net, PhaseSummary), EngineError> {
    let mut run = PhaseRun::start(ctx, plan, init, data, teachers)?;
    for epoch in run.position.epochs_done..plan.stop_after.unwrap_or(plan.epochs).min(plan.epochs) {
        if run.position.stopped_early {
            break;
        }
        run.epoch(ctx, epoch)?;
    }
    run.finish(ctx)
}

/// One phase's training in progress: the model's variables under the optimiser, where the
/// phase stands, and what every step needs (the teachers' targets, the layers to compare).
struct PhaseRun<'p> {
    plan: &'p PhasePlan,
    init: &'p Net,
    data: &'p Dataset,
    teachers: &'p Teachers<'p>,
    optimizer: Optimizer,
    /// The optimiser's first `student_vars` variables are the model's; the rest are projections.
    student_vars: usize,
    buffers: Vec<Tensor>,
    position: Position,
    checkpoint_path: PathBuf,
    best_path: PathBuf,
    /// Whether the loss has teacher terms.
    distils: bool,
    /// The teachers' logits computed once; without it they run on every batch.
    cache: Option<TeacherCache<'p>>,
    cache_report: Option<CacheReport>,
    student_layers: Vec<&'p str>,
    teacher_layers: Vec<Vec<&'p str>>,
    /// Training samples an epoch draws from: indices `0..samples` of the training split.
    samples: usize,
    /// Samples an epoch takes (more than `samples` only for a baseline that matches the student).
    epoch_length: usize,
    steps_per_epoch: u64,
    total_steps: u64,
    started: Instant,
    elapsed_before: f64,
    /// Unlabelled texts: epochs are judged against the teacher's embeddings of the monitored split.
    embedding_reference: Option<EmbeddingReference>,
}

/// A batch as the step feeds it: inputs, labels, and the samples' indices (for the cache).
struct BatchInputs<'b> {
    x: Tensor,
    y: Tensor,
    indices: &'b [usize],
}

/// Each teacher's logits with its weight, and each teacher's compared layers by name.
type TeacherOutputs = (Vec<(Tensor, f64)>, Vec<HashMap<String, Tensor>>);

/// A training step's loss and its parts.
struct StepLoss {
    total: Tensor,
    hard: Tensor,
    soft: Option<Tensor>,
    features: Option<Tensor>,
}

impl<'p> PhaseRun<'p> {
    fn start(
        ctx: &mut PhaseContext,
        plan: &'p PhasePlan,
        init: &'p Net,
        data: &'p Dataset,
        teachers: &'p Teachers<'p>,
    ) -> Result<Self, EngineError> {
        let mut vars = init.to_vars()?;
        let student_vars = vars.len();
        vars.extend(projection_vars(plan, ctx.device)?);
        let mut optimizer = Optimizer::new(plan.optimizer, vars)?;
        let mut buffers: Vec<Tensor> = init.buffers().to_vec();
        let checkpoint_path = ctx.job_dir.join(checkpoint_file(plan.phase));
        let position = resume(ctx, plan, &checkpoint_path, &mut optimizer, &mut buffers)?;
        // The phase's wall time includes filling the teacher cache: it is part of what it costs.
        let started = Instant::now();
        let distils = plan.distils() && !teachers.nets.is_empty();
        let (cache, cache_report) = match distils {
            true => cached_targets(ctx, plan, teachers, data)?,
            false => (None, None),
        };
        let (samples, epoch_length) = (plan.samples(teachers, data), plan.epoch_length(teachers, data));
        let steps_per_epoch = plan.steps_per_epoch(epoch_length);
        let embedding_reference = match (data.classes, teachers.nets.first()) {
            (0, Some(teacher)) => Some(EmbeddingReference::new(teacher, data.monitored(), ctx.device)?),
            _ => None,
        };
        Ok(Self {
            plan,
            init,
            data,
            teachers,
            optimizer,
            student_vars,
            buffers,
            elapsed_before: position.elapsed_s,
            position,
            checkpoint_path,
            best_path: ctx.job_dir.join(best_file(plan.phase)),
            distils,
            cache,
            cache_report,
            student_layers: plan.intermediate.iter().map(|p| p.student_layer.as_str()).collect(),
            teacher_layers: (0..teachers.nets.len())
                .map(|t| {
                    plan.intermediate.iter().filter(|p| p.teacher == t).map(|p| p.teacher_layer.as_str()).collect()
                })
                .collect(),
            samples,
            epoch_length,
            steps_per_epoch,
            total_steps: steps_per_epoch * plan.epochs as u64,
            started,
            embedding_reference,
        })
    }

    fn model(&self) -> Net {
        self.init.with_vars(&self.optimizer.vars()[..self.student_vars], &self.buffers)
    }

    /// One epoch in the seeded order, from the batch a mid-epoch checkpoint stopped at.
    fn epoch(&mut self, ctx: &mut PhaseContext, epoch: u32) -> Result<(), EngineError> {
        let order = self.epoch_order(epoch);
        let skip = std::mem::take(&mut self.position.batches_into_epoch);
        let mut epoch_loss = std::mem::take(&mut self.position.partial_loss_sum);
        for (batch_index, batch) in order.chunks(self.plan.batch_size).enumerate().skip(skip as usize) {
            if let Some(stop) = ctx.control.check() {
                return Err(match stop {
                    Stop::Cancelled => EngineError::Cancelled,
                    Stop::Interrupted => self.interrupt(ctx, batch_index as u64, epoch_loss)?,
                });
            }
            epoch_loss += self.step(ctx, epoch, batch_index as u64, batch)?;
        }
        self.end_epoch(ctx, epoch, epoch_loss)
    }

    /// The epoch's seeded order: passes over the samples, each shuffled on its own (the first as
    /// a single pass always was), cut to the epoch's length.
    fn epoch_order(&self, epoch: u32) -> Vec<usize> {
        let mut order = Vec::with_capacity(self.epoch_length);
        for pass in 0..self.epoch_length.div_ceil(self.samples) as u64 {
            let mut part: Vec<usize> = (0..self.samples).collect();
            let stream: &[u64] = match pass {
                0 => &[streams::SHUFFLE, epoch as u64],
                _ => &[streams::SHUFFLE, epoch as u64, pass],
            };
            Rng::stream(self.plan.seed, stream).shuffle(&mut part);
            order.extend(part);
        }
        order.truncate(self.epoch_length);
        order
    }

    /// A checkpoint where the epoch stands: data order, shifts and dropout masks derive from
    /// (epoch, batch), so it resumes exactly where it stopped.
    fn interrupt(&mut self, ctx: &mut PhaseContext, batch: u64, epoch_loss: f64) -> Result<EngineError, EngineError> {
        self.position.batches_into_epoch = batch;
        self.position.partial_loss_sum = epoch_loss;
        self.position.elapsed_s = self.elapsed_before + self.started.elapsed().as_secs_f64();
        self.checkpoint(ctx, self.position.epochs_done)?;
        Ok(EngineError::Interrupted)
    }

    /// Saves the checkpoint (the position's time is the caller's to set) and says so.
    fn checkpoint(&mut self, ctx: &mut PhaseContext, epoch: u32) -> Result<(), EngineError> {
        self.position.optimizer_steps = self.optimizer.steps();
        save(&self.checkpoint_path, &self.position, &self.optimizer, &self.buffers)?;
        (ctx.sink)(EngineEvent::Checkpoint(CheckpointInfo {
            phase: self.plan.phase,
            epoch,
            step: self.position.global_step,
            file: checkpoint_file(self.plan.phase),
        }));
        Ok(())
    }

    /// One optimiser step on one batch; returns its loss.
    fn step(
        &mut self,
        ctx: &mut PhaseContext,
        epoch: u32,
        batch_index: u64,
        batch: &[usize],
    ) -> Result<f64, EngineError> {
        let (plan, data) = (self.plan, self.data);
        let coordinates = [epoch as u64, batch_index];
        let mut shift_rng = Rng::stream(plan.seed, &[streams::AUGMENT, coordinates[0], coordinates[1]]);
        let shift = match (plan.shift, data.image) {
            (Some(max), Some(shape)) => Some((max, shape, data.background(), &mut shift_rng)),
            _ => None,
        };
        let (x, y) = gather(&data.train, data.features, batch, shift);
        let x = Tensor::from_vec(x, (batch.len(), data.features), ctx.device)?;
        let y = Tensor::from_vec(y, batch.len(), ctx.device)?;
        let mut dropout_rng = Rng::stream(plan.seed, &[streams::DROPOUT, coordinates[0], coordinates[1]]);
        let out = self.model().forward(&x, Some(&mut dropout_rng), &self.student_layers)?;
        let progress = self.position.global_step as f64 / (self.total_steps.max(2) - 1) as f64;
        let (alpha, temperature) = (plan.alpha.at(progress), plan.temperature.at(progress));
        let inputs = BatchInputs { x, y, indices: batch };
        let losses = self.losses(ctx.device, &out, &inputs, alpha, temperature)?;
        let grads = out.backward(&losses.total)?;
        let lr = plan.lr_at(self.position.global_step, self.total_steps);
        self.optimizer.step(&grads, lr)?;
        self.buffers = out.buffers.iter().map(Tensor::detach).collect();
        self.position.global_step += 1;
        self.position.samples_seen += batch.len() as u64;
        let loss = losses.total.to_scalar::<f32>()? as f64;
        if !loss.is_finite() {
            return Err(EngineError::Diverged {
                phase: plan.phase.as_str().into_owned(),
                step: self.position.global_step,
                loss,
            });
        }
        let scalar = |t: &Option<Tensor>| t.as_ref().map(|s| s.to_scalar::<f32>().map(f64::from)).transpose();
        (ctx.sink)(EngineEvent::Progress(Progress {
            phase: plan.phase,
            epoch: epoch + 1,
            epochs: plan.epochs,
            step: self.position.global_step,
            total_steps: self.total_steps,
            loss,
            soft: scalar(&losses.soft)?,
            hard: losses.hard.to_scalar::<f32>()? as f64,
            features: scalar(&losses.features)?,
            lr,
            alpha: if self.distils { alpha } else { 0.0 },
            temperature,
        }));
        Ok(loss)
    }

    /// The hard (labels), soft (teachers' logits) and feature (teachers' layers) terms, weighted:
    /// α·soft + (1 − α)·hard + features. Soft and feature terms average over the whole batch; the
    /// hard term over its labelled samples alone (0 in a batch of transfer samples only).
    fn losses(
        &self,
        device: &Device,
        out: &Output,
        inputs: &BatchInputs,
        alpha: f64,
        temperature: f64,
    ) -> Result<StepLoss, EngineError> {
        // Unlabelled texts (embedding distillation) learn from the teacher's layers alone.
        let labelled = self.data.classes > 0;
        let hard = match labelled {
            true => {
                let with_label: Vec<bool> = inputs.indices.iter().map(|&i| i < self.data.labelled).collect();
                labelled_cross_entropy(&out.logits, &inputs.y, &with_label)?
            }
            false => Tensor::zeros((), candle_core::DType::F32, device)?,
        };
        let mut loss = StepLoss { total: hard.clone(), hard, soft: None, features: None };
        if !self.distils {
            return Ok(loss);
        }
        let (teacher_logits, teacher_features) = self.teacher_outputs(device, &inputs.x, inputs.indices)?;
        if alpha > 0.0 && labelled {
            let s = logit_loss(self.plan.loss, &out.logits, &teacher_logits, temperature)?;
            loss.total = ((&s * alpha)? + (&loss.hard * (1.0 - alpha))?)?;
            loss.soft = Some(s);
        }
        let mut projections = self.optimizer.vars()[self.student_vars..].chunks(2);
        for pair in &self.plan.intermediate {
            let mut student_feature = out.features[&pair.student_layer].clone();
            if pair.projection.is_some() {
                let wb = projections.next().expect("a projection per projected pair");
                student_feature = project(&student_feature, wb[0].as_tensor(), wb[1].as_tensor())?;
            }
            let teacher_feature = &teacher_features[pair.teacher][&pair.teacher_layer];
            let term = (feature_loss(pair.loss, &student_feature, teacher_feature)? * pair.weight)?;
            loss.features = Some(match loss.features {
                None => term,
                Some(sum) => (sum + term)?,
            });
        }
        if let Some(f) = &loss.features {
            loss.total = if labelled { (loss.total + f)? } else { f.clone() };
        }
        Ok(loss)
    }

    /// Each teacher's logits (with its weight) and compared layers for the batch: from the
    /// cache when there is one, else from a forward pass.
    fn teacher_outputs(&self, device: &Device, x: &Tensor, batch: &[usize]) -> Result<TeacherOutputs, EngineError> {
        let teachers = self.teachers;
        let mut logits = Vec::new();
        let mut features = Vec::new();
        for (t, net) in teachers.nets.iter().enumerate() {
            match &self.cache {
                None => {
                    let o = net.forward(x, None, &self.teacher_layers[t])?;
                    logits.push((o.logits, teachers.weights[t]));
                    features.push(o.features);
                }
                Some(cache) => {
                    logits.push((cache.batch(t, batch, self.data.classes, device)?, teachers.weights[t]));
                    features.push(HashMap::new());
                }
            }
        }
        Ok((logits, features))
    }

    /// Validation, early stopping, the epoch's metrics and its checkpoint.
    fn end_epoch(&mut self, ctx: &mut PhaseContext, epoch: u32, epoch_loss: f64) -> Result<(), EngineError> {
        let train_loss = epoch_loss / self.steps_per_epoch as f64;
        self.position.epochs_done = epoch + 1;
        self.position.last_train_loss = Some(train_loss);
        self.position.elapsed_s = self.elapsed_before + self.started.elapsed().as_secs_f64();
        let model = self.model().detached();
        let validation = match &self.embedding_reference {
            Some(reference) => reference.evaluate(&model, self.data.monitored(), ctx.device)?,
            None => evaluate(&model, self.data.monitored(), ctx.device)?,
        };
        let best = match self.plan.early_stopping {
            Some(rule) => Some(self.judge_epoch(&model, rule, epoch, validation.loss)?),
            None => None,
        };
        (ctx.sink)(EngineEvent::Epoch(EpochMetrics {
            phase: self.plan.phase,
            epoch: epoch + 1,
            epochs: self.plan.epochs,
            step: self.position.global_step,
            train_loss,
            val_loss: validation.loss,
            val_accuracy: validation.accuracy,
            best,
        }));
        if self.position.stopped_early {
            let best = self.position.best.expect("a best epoch before stopping");
            (ctx.sink)(EngineEvent::Log(format!(
                "early stopping in phase {} after epoch {}: validation loss has not improved for {} epochs; keeping epoch {} (loss {:.4})",
                self.plan.phase.as_str(),
                epoch + 1,
                best.epochs_since,
                best.epoch,
                best.val_loss
            )));
        }
        self.checkpoint(ctx, epoch + 1)
    }

    /// Early stopping: keeps the epoch's weights if it is the best so far; returns whether it was.
    fn judge_epoch(
        &mut self,
        model: &Net,
        rule: EarlyStopping,
        epoch: u32,
        val_loss: f64,
    ) -> Result<bool, EngineError> {
        let improved = self.position.best.is_none_or(|b| val_loss < b.val_loss - rule.min_delta);
        if improved {
            write_safetensors(&self.best_path, &model.named(), None)?;
            self.position.best = Some(Best { epoch: epoch + 1, val_loss, epochs_since: 0 });
        } else if let Some(best) = self.position.best.as_mut() {
            best.epochs_since += 1;
            if best.epochs_since >= rule.patience {
                self.position.stopped_early = true;
            }
        }
        Ok(improved)
    }

    /// The phase's result (the best epoch's weights with early stopping) and its summary.
    fn finish(self, ctx: &mut PhaseContext) -> Result<(Net, PhaseSummary), EngineError> {
        let model = match self.position.best {
            Some(_) => {
                let (tensors, _) = read_safetensors(&self.best_path, ctx.device).map_err(EngineError::Corrupt)?;
                self.init.with_named(tensors, ctx.device)?
            }
            None => self.model().detached(),
        };
        let position = &self.position;
        let wall_s = position.elapsed_s.max(1e-9);
        let summary = PhaseSummary {
            epochs: position.epochs_done,
            steps: position.global_step,
            wall_s,
            samples_per_s: position.samples_seen as f64 / wall_s,
            final_train_loss: position.last_train_loss.unwrap_or_default(),
            labelled_samples: self.samples.min(self.data.labelled),
            transfer_samples: self.samples.saturating_sub(self.data.labelled),
            best_epoch: position.best.map(|b| b.epoch),
            stopped_early: position.stopped_early,
            teacher_cache: self.cache_report,
        };
        Ok((model, summary))
    }
}

/// The learned projections of the layer pairs whose widths differ, initialised as nn.Linear's:
/// U(±1/√fan_in), weight then bias per pair.
fn projection_vars(plan: &PhasePlan, device: &Device) -> Result<Vec<Var>, EngineError> {
    let mut rng = Rng::stream(plan.seed, &[streams::PROJECTION_INIT]);
    let mut vars = Vec::new();
    for (from, to) in plan.intermediate.iter().filter_map(|pair| pair.projection) {
        let bound = 1.0 / (from as f32).sqrt();
        let w: Vec<f32> = (0..from * to).map(|_| rng.uniform(-bound, bound)).collect();
        let b: Vec<f32> = (0..to).map(|_| rng.uniform(-bound, bound)).collect();
        vars.push(Var::from_tensor(&Tensor::from_vec(w, (to, from), device)?)?);
        vars.push(Var::from_tensor(&Tensor::from_vec(b, to, device)?)?);
    }
    Ok(vars)
}

/// Where the phase stands: from its checkpoint if there is one, else at the start.
fn resume(
    ctx: &mut PhaseContext,
    plan: &PhasePlan,
    checkpoint_path: &Path,
    optimizer: &mut Optimizer,
    buffers: &mut [Tensor],
) -> Result<Position, EngineError> {
    if !checkpoint_path.exists() {
        return Ok(Position::start(plan.phase));
    }
    let position = restore(checkpoint_path, optimizer, buffers, ctx.device)?;
    let phase_name = plan.phase.as_str();
    (ctx.sink)(EngineEvent::Log(format!(
        "resumed from checkpoint: phase {phase_name}, epoch {}, step {}",
        position.epochs_done, position.global_step
    )));
    if position.epochs_done >= plan.epochs || position.stopped_early {
        (ctx.sink)(EngineEvent::Log(format!("phase {phase_name} had already finished training")));
    }
    Ok(position)
}

/// The teachers' cache for the phase when it applies, saying in the log whether it does.
fn cached_targets<'t>(
    ctx: &mut PhaseContext,
    plan: &PhasePlan,
    teachers: &Teachers<'t>,
    data: &Dataset,
) -> Result<(Option<TeacherCache<'t>>, Option<CacheReport>), EngineError> {
    let (targets, report) = teacher_targets(plan, teachers, data, ctx.device)?;
    (ctx.sink)(EngineEvent::Log(match report.used {
        true => format!(
            "teacher cache: logits of {} teacher(s) for {} training samples{} {} in {:.2} s and reused every epoch ({} KiB{})",
            teachers.nets.len(),
            data.train.len(),
            match data.transfer() {
                0 => String::new(),
                transfer => format!(" ({transfer} of them transfer samples)"),
            },
            if report.reused { "taken from an earlier phase of this job" } else { "computed once" },
            report.fill_s,
            report.bytes / 1024,
            report.top_k.map(|k| format!(", top {k} per sample")).unwrap_or_default()
        ),
        false => format!("teacher cache not used: {}", report.reason),
    }));
    Ok((targets, Some(report)))
}

/// The learned projection of a student feature to the teacher's width: `x·Wᵀ + b` over the last
/// axis, which for channels-last maps is a 1×1 convolution.
fn project(feature: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    let dims = feature.dims().to_vec();
    let width = *dims.last().expect("features have a width");
    let rows = feature.reshape(((), width))?;
    let projected = rows.matmul(&weight.t()?)?.broadcast_add(bias)?;
    let mut shape = dims;
    *shape.last_mut().expect("features have a width") = weight.dim(0)?;
    projected.reshape(shape)
}

/// A model's results on a split, from one forward pass over it.
pub struct Evaluation {
    /// Mean cross-entropy.
    pub loss: f64,
    pub accuracy: f64,
    /// The top-1 class of every sample.
    pub predictions: Vec<u32>,
}

pub fn evaluate(model: &Net, split: &Split, device: &Device) -> candle_core::Result<Evaluation> {
    let logits = model.logits(&split.x, device)?;
    let labels = Tensor::from_slice(&split.y, split.len(), device)?;
    let loss = candle_nn::loss::cross_entropy(&logits, &labels)?.to_scalar::<f32>()? as f64;
    let predictions = predictions(&logits)?;
    let correct = predictions.iter().zip(&split.y).filter(|(p, y)| p == y).count();
    Ok(Evaluation { loss, accuracy: correct as f64 / split.len().max(1) as f64, predictions })
}

/// The teacher's side of judging encoders on a split of unlabelled texts: its unit embeddings
/// and each text's nearest neighbour among the others, computed once and reused for every
/// epoch and every model.
pub struct EmbeddingReference {
    unit: Tensor,
    neighbours: Vec<u32>,
}

fn unit_embeddings(net: &Net, split: &Split, device: &Device) -> candle_core::Result<Tensor> {
    let e = net.logits(&split.x, device)?;
    e.broadcast_div(&e.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?)
}

impl EmbeddingReference {
    pub fn new(teacher: &Net, split: &Split, device: &Device) -> candle_core::Result<Self> {
        let unit = unit_embeddings(teacher, split, device)?;
        Ok(Self { neighbours: nearest_neighbours(&unit)?, unit })
    }

    /// An encoder against the teacher: loss = 1 − the mean cosine between the two embeddings of
    /// each text; accuracy = the share of texts whose nearest other text (cosine) is the one the
    /// teacher's embeddings pick; predictions = those neighbours.
    pub fn evaluate(&self, model: &Net, split: &Split, device: &Device) -> candle_core::Result<Evaluation> {
        let ours = unit_embeddings(model, split, device)?;
        let mean_cosine = (&ours * &self.unit)?.sum(1)?.mean_all()?.to_scalar::<f32>()? as f64;
        let neighbours = nearest_neighbours(&ours)?;
        let agree = neighbours.iter().zip(&self.neighbours).filter(|(a, b)| a == b).count();
        Ok(Evaluation {
            loss: 1.0 - mean_cosine,
            accuracy: agree as f64 / neighbours.len().max(1) as f64,
            predictions: neighbours,
        })
    }

    /// The teacher judged against itself.
    pub fn teacher(&self) -> Evaluation {
        Evaluation { loss: 0.0, accuracy: 1.0, predictions: self.neighbours.clone() }
    }
}

/// For each row of unit vectors, the index of the most similar other row.
pub fn nearest_neighbours(unit: &Tensor) -> candle_core::Result<Vec<u32>> {
    let n = unit.dim(0)?;
    let similarity = unit.matmul(&unit.t()?)?;
    // A row is its own best match; push the diagonal out of the running.
    let diagonal = (Tensor::eye(n, candle_core::DType::F32, unit.device())? * 4.0)?;
    (similarity - diagonal)?.argmax(1)?.to_vec1::<u32>()
}

fn save(path: &Path, position: &Position, optimizer: &Optimizer, buffers: &[Tensor]) -> Result<(), EngineError> {
    let mut tensors: Vec<(String, Tensor)> =
        optimizer.vars().iter().enumerate().map(|(i, v)| (format!("param.{i}"), v.as_tensor().detach())).collect();
    tensors.extend(buffers.iter().enumerate().map(|(i, b)| (format!("buffer.{i}"), b.clone())));
    tensors.extend(optimizer.state()?);
    let meta = serde_json::to_value(position).map_err(|e| EngineError::Internal(e.to_string()))?;
    write_safetensors(path, &tensors, Some(&meta))?;
    Ok(())
}

fn restore(
    path: &Path,
    optimizer: &mut Optimizer,
    buffers: &mut [Tensor],
    device: &Device,
) -> Result<Position, EngineError> {
    let broken = |m: String| EngineError::Corrupt(format!("checkpoint {} is unusable: {m}", path.display()));
    let (mut tensors, meta) = read_safetensors(path, device).map_err(broken)?;
    let meta = meta.ok_or_else(|| broken("no position metadata".into()))?;
    let position: Position = serde_json::from_value(meta).map_err(|e| broken(format!("bad position metadata: {e}")))?;
    for (i, var) in optimizer.vars().iter().enumerate() {
        let t = tensors.remove(&format!("param.{i}")).ok_or_else(|| broken(format!("lacks param.{i}")))?;
        var.set(&t).map_err(|e| broken(e.to_string()))?;
    }
    for (i, buffer) in buffers.iter_mut().enumerate() {
        *buffer = tensors.remove(&format!("buffer.{i}")).ok_or_else(|| broken(format!("lacks buffer.{i}")))?;
    }
    optimizer.restore(position.optimizer_steps, &mut tensors).map_err(|e| broken(e.to_string()))?;
    Ok(position)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(schedule: Schedule, warmup: u64) -> PhasePlan {
        PhasePlan {
            phase: Phase::Student(0),
            epochs: 1,
            batch_size: 8,
            optimizer: OptimizerSpec::Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.0 },
            schedule,
            warmup_steps: warmup,
            seed: 0,
            temperature: Scheduled::Constant(4.0),
            alpha: Scheduled::Constant(0.5),
            loss: LogitLoss::Kl,
            intermediate: Vec::new(),
            shift: None,
            early_stopping: None,
            cache: CacheSpec::default(),
            epoch_samples: None,
            stop_after: None,
        }
    }

    #[test]
    fn nearest_neighbours_skip_the_row_itself() {
        let rows = [[1.0f32, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]];
        let unit = Tensor::new(&rows, &Device::Cpu).unwrap();
        assert_eq!(nearest_neighbours(&unit).unwrap(), vec![1, 0, 1, 2]);
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
