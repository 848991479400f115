//! The trainings of one job, in order: each teacher (trained, loaded, or used as found), the
//! distilled student, the baseline. A finished phase is saved with its summary in `state.json`,
//! so a restarted job reloads it instead of training it again.

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::resolve::{load_teacher, Resolved};
use crate::engine::data::root::DataRoot;
use crate::engine::data::Dataset;
use crate::engine::files::{read_safetensors, write_json, write_safetensors};
use crate::engine::job::text::{self, TextSetup};
use crate::engine::models::Net;
use crate::engine::rng::{streams, Rng};
use crate::engine::train::loss::LogitLoss;
use crate::engine::train::{evaluate, train_phase, PhaseContext, PhasePlan, PhaseSummary, Teachers};
use crate::engine::{EngineError, EngineEvent, Phase};
use crate::layout::STATE_FILE;
use crate::spec::{JobSpec, PhaseTrainSpec, Scheduled, SpecError, TeacherSpec};

/// A model of the job and how it was trained here (`None`: loaded, used as found, or an
/// untrained reference).
pub(super) struct Model {
    pub net: Net,
    pub training: Option<PhaseSummary>,
}

/// One seed's distilled student and baseline.
pub(super) struct Run {
    /// The phases' number: 0 for a job's only run, else 1 to k.
    pub number: usize,
    pub seed: u64,
    pub student: Model,
    pub baseline: Option<Model>,
}

/// Phases already finished, kept across restarts.
#[derive(Debug, Default, Serialize, Deserialize)]
struct JobState {
    finished: BTreeMap<String, PhaseSummary>,
    /// A sweep's trials by rung, `trial_3@2` (trial 3 trained to epoch 2).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    trials: BTreeMap<String, TrialScore>,
}

/// A trial judged on the validation split held out of training, at the end of a rung.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct TrialScore {
    pub epochs: u32,
    pub validation_accuracy: f64,
    pub validation_loss: f64,
    /// Training time up to this rung, earlier rungs included.
    pub wall_s: f64,
}

/// The spec one set of phases trains, checked against the data: the job's own, or a trial's.
#[derive(Clone, Copy)]
pub(super) struct Target<'t> {
    pub spec: &'t JobSpec,
    pub resolved: &'t Resolved,
}

/// The job's trainings, with what they share: the data, the resolved spec, where files go and
/// which phases earlier runs finished.
pub(super) struct Trainer<'a> {
    pub spec: &'a JobSpec,
    pub data: &'a Dataset,
    pub text: Option<&'a TextSetup>,
    pub resolved: &'a Resolved,
    pub ctx: PhaseContext<'a>,
    /// The teachers' logits over the training samples, shared by the phases that cache them.
    teacher_logits: &'a OnceCell<Vec<Vec<f32>>>,
    state: JobState,
    state_path: PathBuf,
    /// Files of the job folder that are results, in the order they were written.
    pub artifacts: Vec<String>,
}

impl<'a> Trainer<'a> {
    pub fn new(
        target: Target<'a>,
        data: &'a Dataset,
        text: Option<&'a TextSetup>,
        teacher_logits: &'a OnceCell<Vec<Vec<f32>>>,
        ctx: PhaseContext<'a>,
    ) -> Result<Self, EngineError> {
        let Target { spec, resolved } = target;
        let state_path = ctx.job_dir.join(STATE_FILE);
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| EngineError::Corrupt(format!("state.json is unreadable: {e}")))?,
            Err(_) => JobState::default(),
        };
        Ok(Self { spec, data, text, resolved, ctx, teacher_logits, state, state_path, artifacts: Vec::new() })
    }

    pub fn log(&mut self, message: String) {
        (self.ctx.sink)(EngineEvent::Log(message));
    }

    /// The job's own spec and its resolution.
    pub fn target(&self) -> Target<'a> {
        Target { spec: self.spec, resolved: self.resolved }
    }

    /// The distilled student's plan: the spec's training, α, T, loss and layer pairs, with the
    /// run's seed (its data order, shifts, dropout and projections).
    fn student_plan(&self, phase: Phase, seed: u64) -> PhasePlan {
        student_plan(self.target(), phase, seed)
    }

    /// Teachers and the baseline learn from labels alone.
    fn label_plan(&self, phase: Phase, seed: u64) -> PhasePlan {
        PhasePlan { alpha: Scheduled::Constant(0.0), intermediate: Vec::new(), ..self.student_plan(phase, seed) }
    }

    fn teacher_plan(&self, i: usize, train: &PhaseTrainSpec) -> PhasePlan {
        let training = &self.spec.training;
        PhasePlan {
            epochs: train.epochs,
            batch_size: train.batch_size.unwrap_or(training.batch_size),
            optimizer: train.optimizer.unwrap_or(training.optimizer),
            schedule: train.schedule.unwrap_or(training.schedule),
            ..self.label_plan(Phase::Teacher(i), training.seed)
        }
    }

    /// Every teacher of the spec, in order.
    pub fn teachers(&mut self, data_root: &DataRoot) -> Result<Vec<Model>, EngineError> {
        let spec = self.spec;
        spec.teacher_specs().into_iter().enumerate().map(|(i, teacher)| self.teacher(i, teacher, data_root)).collect()
    }

    fn teacher(&mut self, i: usize, teacher: &TeacherSpec, data_root: &DataRoot) -> Result<Model, EngineError> {
        let stream: Vec<u64> = if i == 0 { vec![streams::TEACHER_INIT] } else { vec![streams::TEACHER_INIT, i as u64] };
        let mut rng = Rng::stream(self.spec.training.seed, &stream);
        let device = self.ctx.device;
        let init = match (self.text, &teacher.weights) {
            (Some(setup), _) => text::teacher_net(self.spec, setup, self.data, &mut rng, device)?,
            (None, Some(weights)) => {
                let net = load_teacher(self.spec, i, weights, data_root, self.data, device)?;
                self.log(format!("{} loaded from {weights}", Phase::Teacher(i).as_str()));
                return Ok(Model { net, training: None });
            }
            (None, None) => Net::init(&teacher.arch, self.resolved.input, self.data.classes, &mut rng, device)?,
        };
        let Some(train) = &teacher.train else {
            let field = self.spec.teacher_field(i);
            let setup = self.text.ok_or_else(|| SpecError::new(field, "a teacher needs `weights` or `train`"))?;
            self.log(format!("teacher used as found in {}", setup.teacher.path));
            return Ok(Model { net: init, training: None });
        };
        let plan = self.teacher_plan(i, train);
        self.phase(&plan, &init, &Teachers::none())
    }

    /// The distilled student and the baseline, once per seed of the spec; run 0 alone without
    /// repeats, else runs 1 to k.
    pub fn runs(&mut self, teachers: &[Model]) -> Result<Vec<Run>, EngineError> {
        let seeds = self.spec.training.run_seeds();
        let k = seeds.len();
        let mut runs = Vec::with_capacity(k);
        for (i, seed) in seeds.into_iter().enumerate() {
            let number = if k > 1 { i + 1 } else { 0 };
            if k > 1 {
                self.log(format!("run {number} of {k}: student and baseline with seed {seed}"));
            }
            let (random_init, student_init) = self.student_inits(self.target(), &teachers[0].net, seed)?;
            let student = self.student(teachers, &student_init, number, seed)?;
            let baseline = self.baseline(&random_init, &student_init, number, seed)?;
            runs.push(Run { number, seed, student, baseline });
        }
        Ok(runs)
    }

    /// The student's two starting points for a seed: the random initialisation (the
    /// baseline's), and the distilled student's, which may copy teacher layers into it.
    fn student_inits(&mut self, target: Target, teacher: &Net, seed: u64) -> Result<(Net, Net), EngineError> {
        let spec = target.spec;
        let mut rng = Rng::stream(seed, &[streams::STUDENT_INIT]);
        let input = target.resolved.input;
        let Some((config, layers)) = &target.resolved.transformer else {
            let random_init = Net::init(&spec.student.arch, input, self.data.classes, &mut rng, self.ctx.device)?;
            let student_init = self.student_from_teacher(target, &random_init, teacher)?;
            return Ok((random_init, student_init));
        };
        if let Some((setup, folder)) = self.text.and_then(|setup| Some((setup, setup.student.as_ref()?))) {
            let init = text::pretrained_student(setup, config, &spec.student.arch, input, &mut rng, self.ctx.device)?;
            self.log(format!(
                "student: pre-trained, from {}: {} layers, hidden {}, {} heads, {} parameters; {}",
                folder.path,
                config.num_layers,
                config.hidden_size,
                config.num_heads,
                init.parameter_count(),
                match setup.own_tokenizer {
                    true => "its own tokenizer",
                    false => "the teacher's tokenizer",
                }
            ));
            return Ok((init.clone(), init));
        }
        let (init, copied) =
            text::student_init(config, layers, &spec.student.arch, teacher, input, &mut rng, self.ctx.device)?;
        self.log(format!(
            "student: {} layers (teacher layers {layers:?}), hidden {}, {} heads, {} parameters; {copied} tensors copied from the teacher",
            config.num_layers,
            config.hidden_size,
            config.num_heads,
            init.parameter_count()
        ));
        // The baseline starts from the same copied layers: a truncated teacher fine-tuned on
        // labels, the usual alternative, so the gain measures the distillation losses alone.
        Ok((init.clone(), init))
    }

    /// `student.init_from_teacher`: the listed layers copied into the random initialisation.
    fn student_from_teacher(&mut self, target: Target, random_init: &Net, teacher: &Net) -> Result<Net, EngineError> {
        let copies = &target.spec.student.init_from_teacher;
        if copies.is_empty() {
            return Ok(random_init.clone());
        }
        let source: HashMap<String, Tensor> = teacher.named().into_iter().collect();
        let mut copied = HashMap::new();
        for copy in copies {
            for (name, _) in target.resolved.student.layer_params(&copy.student_layer) {
                let from = format!("{}{}", copy.teacher_layer, &name[copy.student_layer.len()..]);
                copied.insert(name.clone(), source[&from].copy()?);
            }
        }
        self.log(format!("student initialised with {} tensors copied from the teacher", copied.len()));
        Ok(random_init.clone().with_tensors(&copied))
    }

    /// The distilled student, learning from the teachers weighted as the spec says.
    fn student(&mut self, teachers: &[Model], init: &Net, number: usize, seed: u64) -> Result<Model, EngineError> {
        let plan = self.student_plan(Phase::Student(number), seed);
        let frozen = self.frozen(teachers);
        self.phase(&plan, init, &frozen)
    }

    /// The teachers as a distilling phase sees them, sharing the job's cached logits.
    fn frozen<'t>(&self, teachers: &'t [Model]) -> Teachers<'t>
    where
        'a: 't,
    {
        Teachers {
            nets: teachers.iter().map(|t| &t.net).collect(),
            weights: teacher_weights(self.spec),
            logits: Some(self.teacher_logits),
        }
    }

    /// A sweep's trial trained to `epochs` (carrying on from its last rung's checkpoint) and
    /// judged on the validation split held out of training, or its score from before a restart.
    pub fn trial(
        &mut self,
        target: Target,
        number: usize,
        epochs: u32,
        teachers: &[Model],
    ) -> Result<TrialScore, EngineError> {
        let phase = Phase::Trial(number);
        let key = format!("{}@{epochs}", phase.as_str());
        if let Some(score) = self.state.trials.get(&key).cloned() {
            self.log(format!("{key} was judged before the restart; its score is reused"));
            return Ok(score);
        }
        let seed = target.spec.training.seed;
        let (_, init) = self.student_inits(target, &teachers[0].net, seed)?;
        let mut plan = student_plan(target, phase, seed);
        plan.stop_after = Some(epochs);
        let frozen = self.frozen(teachers);
        let (net, summary) = train_phase(&mut self.ctx, &plan, &init, self.data, &frozen)?;
        let judged = match self.data.monitor.as_ref() {
            Some(validation) => evaluate(&net, validation, self.ctx.device)?,
            None => return Err(EngineError::Internal("a sweep holds validation data out of training".into())),
        };
        let score = TrialScore {
            epochs: summary.epochs,
            validation_accuracy: judged.accuracy,
            validation_loss: judged.loss,
            wall_s: summary.wall_s,
        };
        self.state.trials.insert(key, score.clone());
        write_json(&self.state_path, &self.state)?;
        Ok(score)
    }

    /// The same student without the teachers, when the spec asks for it.
    fn baseline(
        &mut self,
        random_init: &Net,
        student_init: &Net,
        number: usize,
        seed: u64,
    ) -> Result<Option<Model>, EngineError> {
        if !self.spec.baseline {
            return Ok(None);
        }
        if self.data.classes == 0 {
            // Without labels nothing trains without a teacher: the reference is the student's
            // starting point, the teacher's copied layers, untrained.
            self.log("baseline: unlabelled texts teach nothing without a teacher; the untrained student (its copied teacher layers) is the reference".into());
            return Ok(Some(Model { net: student_init.clone(), training: None }));
        }
        // Same initialisation (before any copy from the teacher, except for transformers), data
        // order, shifts and dropout masks; only the teacher is gone.
        let mut plan = self.label_plan(Phase::Baseline(number), seed);
        // With a transfer set, the baseline passes over its labelled samples for as many steps
        // as the student takes, so the gain never comes from training the baseline less.
        plan.epoch_samples = self.student_plan(Phase::Student(number), seed).distils().then_some(self.data.train.len());
        self.phase(&plan, random_init, &Teachers::none()).map(Some)
    }

    /// Runs a phase, or loads its result if an earlier run of this job finished it.
    fn phase(&mut self, plan: &PhasePlan, init: &Net, teachers: &Teachers) -> Result<Model, EngineError> {
        let name = plan.phase.as_str().to_string();
        let path = self.ctx.job_dir.join(file_of(plan.phase));
        self.artifacts.push(file_of(plan.phase));
        if let (Some(summary), true) = (self.state.finished.get(&name), path.exists()) {
            let summary = summary.clone();
            let (tensors, _) = read_safetensors(&path, self.ctx.device).map_err(EngineError::Corrupt)?;
            let net = init.with_named(tensors, self.ctx.device)?;
            self.log(format!("phase {name} was finished before the restart; its weights are reused"));
            return Ok(Model { net, training: Some(summary) });
        }
        let steps = plan.steps_per_epoch(plan.epoch_length(teachers, self.data));
        self.log(format!("phase {name}: {} epochs of {steps} steps", plan.epochs));
        let (net, summary) = train_phase(&mut self.ctx, plan, init, self.data, teachers)?;
        let data = self.data;
        let meta = serde_json::json!({"arch": init.arch(), "input_features": data.features, "image": data.image, "num_classes": data.classes});
        write_safetensors(&path, &net.named(), Some(&meta))?;
        self.state.finished.insert(name, summary.clone());
        write_json(&self.state_path, &self.state)?;
        Ok(Model { net, training: Some(summary) })
    }
}

/// The distilled student's plan for a spec: its training, α, T, loss and layer pairs, with the
/// run's seed (its data order, shifts, dropout and projections).
pub(super) fn student_plan(target: Target, phase: Phase, seed: u64) -> PhasePlan {
    let (training, distill) = (&target.spec.training, &target.spec.distill);
    PhasePlan {
        phase,
        epochs: training.epochs,
        batch_size: training.batch_size,
        optimizer: training.optimizer,
        schedule: training.schedule,
        warmup_steps: training.warmup_steps,
        seed,
        temperature: distill.temperature,
        alpha: distill.alpha,
        loss: LogitLoss::of(distill),
        intermediate: target.resolved.pairs.clone(),
        shift: training.augment.map(|a| a.shift),
        early_stopping: training.early_stopping,
        cache: distill.cache,
        epoch_samples: None,
        stop_after: None,
    }
}

/// Each teacher's weight in the soft targets, normalised to sum to 1.
pub(super) fn teacher_weights(spec: &JobSpec) -> Vec<f64> {
    let total: f64 = spec.teacher_specs().iter().map(|t| t.weight).sum();
    spec.teacher_specs().iter().map(|t| t.weight / total).collect()
}

pub fn file_of(phase: Phase) -> String {
    crate::layout::weights_file(&phase.as_str())
}
