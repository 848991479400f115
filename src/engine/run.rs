//! One job from spec to report: data → teacher → distilled student → baseline → evaluation →
//! export. Every finished phase is saved, so a restarted job skips it; an unfinished phase
//! resumes from its checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::bert::BertConfig;
use super::budget::{self, MemoryEstimate};
use super::data::{self, Dataset};
use super::data_root::DataRoot;
use super::files::{parse_safetensors, read_safetensors, write_json, write_safetensors};
use super::loss::{FeatureLoss, LogitLoss};
use super::model::{predictions, Blueprint, Input, Net};
use super::report::{
    self, DatasetSummary, DistillationSummary, Latency, ModelReport, PairedTest, Report, Speedup, Task,
};
use super::rng::{streams, Rng};
use super::text::{self, TextSetup};
use super::train::{
    evaluate, train_phase, EmbeddingReference, Evaluation, LayerPair, PhaseContext, PhasePlan, PhaseSummary, Teachers,
};
use super::{Control, EngineError, EngineEvent, Phase};
use crate::spec::{ArchSpec, FeatureLossKind, JobSpec, LogitLossKind, PhaseTrainSpec, Scheduled, SpecError};

pub const STUDENT_FILE: &str = "student.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const REPORT_FILE: &str = "report.json";
const STATE_FILE: &str = "state.json";

pub struct RunOutput {
    pub report: Report,
    /// Files in the job folder that are the job's results.
    pub artifacts: Vec<String>,
}

/// Phases already finished, kept across restarts.
#[derive(Debug, Default, Serialize, Deserialize)]
struct JobState {
    finished: BTreeMap<String, PhaseSummary>,
}

/// The spec checked against the data: every architecture fits the inputs, layer names exist,
/// copied layers have the same shapes in both networks.
struct Resolved {
    input: Input,
    teachers: Vec<Blueprint>,
    student: Blueprint,
    pairs: Vec<LayerPair>,
    /// A transformer student's config and the teacher layer each of its layers maps to.
    transformer: Option<(BertConfig, Vec<usize>)>,
}

/// The checks a spec must pass before it is accepted: ranges, then the dataset and the teacher
/// files, read for real, and the architectures against the data. A job that passes can still
/// fail later if its files change.
pub fn preflight(spec: &JobSpec, data_root: &DataRoot) -> Result<MemoryEstimate, SpecError> {
    spec.validate()?;
    let (data, text) = load_data(spec, data_root, &Device::Cpu)?;
    let resolved = resolve(spec, &data, text.as_ref())?;
    check_warmup(spec, &data)?;
    if let Some(setup) = &text {
        text::teacher_net(spec, setup, &data, &mut Rng::new(0), &Device::Cpu)?;
    } else {
        for (i, teacher) in spec.teacher_specs().iter().enumerate() {
            if let Some(weights) = &teacher.weights {
                load_teacher(spec, i, weights, data_root, &data, &Device::Cpu)?;
            }
        }
    }
    Ok(estimate_memory(spec, &data, &resolved))
}

/// A warm-up longer than a phase would keep its learning rate below the one asked for to the
/// end: almost certainly a mistake.
fn check_warmup(spec: &JobSpec, data: &Dataset) -> Result<(), SpecError> {
    let training = &spec.training;
    let steps = |epochs: u32, batch: usize| u64::from(epochs).saturating_mul(data.train.len().div_ceil(batch) as u64);
    let mut phases = vec![("the student", steps(training.epochs, training.batch_size))];
    for (i, teacher) in spec.teacher_specs().iter().enumerate() {
        if let Some(train) = &teacher.train {
            phases.push((
                if i == 0 { "the teacher" } else { "a teacher" },
                steps(train.epochs, train.batch_size.unwrap_or(training.batch_size)),
            ));
        }
    }
    let (phase, shortest) = phases.into_iter().min_by_key(|(_, steps)| *steps).expect("the student trains");
    if training.warmup_steps > shortest {
        return Err(SpecError::new(
            "training.warmup_steps",
            format!(
                "{} warm-up steps, but {phase} trains for {shortest} steps in all; use at most {shortest}",
                training.warmup_steps
            ),
        ));
    }
    Ok(())
}

/// The job's peak memory: every model it holds, the data, the teacher cache and the largest
/// phase's activations.
fn estimate_memory(spec: &JobSpec, data: &Dataset, resolved: &Resolved) -> MemoryEstimate {
    let mut estimate = MemoryEstimate::default();
    let samples = (data.train.len() + data.validation.len() + data.monitor.as_ref().map_or(0, |m| m.len())) as u64;
    estimate.add("dataset", "the dataset", budget::f32_bytes(samples.saturating_mul(data.features as u64 + 1)));
    let features = data.features;
    let mut teacher_forward = 0u64;
    let mut largest_phase = 0u64;
    for (i, (teacher, blueprint)) in spec.teacher_specs().iter().zip(&resolved.teachers).enumerate() {
        let field = format!("{}.arch", spec.teacher_field(i));
        estimate.add(&field, format!("teacher {i}'s weights"), budget::model_bytes(blueprint, teacher.train.is_some()));
        teacher_forward = teacher_forward.saturating_add(budget::activation_bytes(
            blueprint,
            features,
            spec.training.batch_size,
            false,
        ));
        if let Some(train) = &teacher.train {
            let batch = train.batch_size.unwrap_or(spec.training.batch_size);
            largest_phase = largest_phase.max(budget::activation_bytes(blueprint, features, batch, true));
        }
        largest_phase = largest_phase.max(budget::inference_bytes(blueprint, features));
    }
    let students = if spec.baseline { 2 } else { 1 };
    estimate.add(
        "student.arch",
        "the student's weights",
        budget::model_bytes(&resolved.student, true).saturating_mul(students),
    );
    let student_phase = budget::activation_bytes(&resolved.student, features, spec.training.batch_size, true)
        .saturating_add(teacher_forward);
    largest_phase = largest_phase.max(student_phase);
    estimate.add("training.batch_size", "activations", largest_phase);
    if spec.distill.cache.enabled {
        let kept = spec.distill.cache.top_k.map_or(data.classes.max(1), |k| 2 * k) as u64;
        let cache = (data.train.len() as u64).saturating_mul(kept).saturating_mul(resolved.teachers.len() as u64);
        estimate.add("distill.cache", "the teacher cache", budget::f32_bytes(cache));
    }
    estimate
}

/// The dataset; for text, tokenised with the teacher's tokenizer, with the teacher's folder.
fn load_data(spec: &JobSpec, data_root: &DataRoot, device: &Device) -> Result<(Dataset, Option<TextSetup>), SpecError> {
    let monitor = spec.training.early_stopping.is_some();
    if spec.dataset.source == "text" {
        let (data, setup) = text::load(spec, data_root, monitor, device)?;
        return Ok((data, Some(setup)));
    }
    Ok((data::load(&spec.dataset, data_root, spec.training.seed, monitor)?, None))
}

fn input_of(data: &Dataset) -> Input {
    Input { features: data.features, image: data.image }
}

fn resolve(spec: &JobSpec, data: &Dataset, text: Option<&TextSetup>) -> Result<Resolved, SpecError> {
    let input = input_of(data);
    if spec.training.augment.is_some() && data.image.is_none() {
        return Err(SpecError::new(
            "training.augment",
            "shifts need image data (an `idx` dataset of H×W or H×W×C samples)",
        ));
    }
    let blueprint = |arch: &ArchSpec, field: String| {
        Blueprint::new(arch, input, data.classes).map_err(|m| SpecError::new(field, m))
    };
    let (teachers, student, transformer) = match (text, spec.student.arch.transformer()) {
        (Some(setup), Some(arch)) => {
            let teacher = text::teacher_config(setup, data.classes);
            let (config, layers) = text::student_config(&teacher, arch)?;
            if data.classes == 0 && config.hidden_size != teacher.hidden_size {
                return Err(SpecError::new("student.arch.hidden_size", format!("an embedding student keeps the teacher's width ({}), so its embeddings compare with the teacher's", teacher.hidden_size)));
            }
            let length = setup.max_length;
            (
                vec![Blueprint::transformer(&teacher, length)],
                Blueprint::transformer(&config, length),
                Some((config, layers)),
            )
        }
        _ => {
            let teachers: Vec<Blueprint> = spec
                .teacher_specs()
                .iter()
                .enumerate()
                .map(|(i, t)| blueprint(&t.arch, format!("{}.arch", spec.teacher_field(i))))
                .collect::<Result<_, _>>()?;
            (teachers, blueprint(&spec.student.arch, "student.arch".into())?, None)
        }
    };
    let mut pairs = Vec::new();
    for (i, pair) in spec.distill.intermediate.iter().enumerate() {
        let field = format!("distill.intermediate[{i}]");
        let t = teachers[pair.teacher].output(&pair.teacher_layer).ok_or_else(|| {
            SpecError::new(
                format!("{field}.teacher_layer"),
                format!(
                    "the teacher has no layer `{}`; it has {}",
                    pair.teacher_layer,
                    layer_list(&teachers[pair.teacher])
                ),
            )
        })?;
        let s = student.output(&pair.student_layer).ok_or_else(|| {
            SpecError::new(
                format!("{field}.student_layer"),
                format!("the student has no layer `{}`; it has {}", pair.student_layer, layer_list(&student)),
            )
        })?;
        if t.len() != s.len() || t[..t.len() - 1] != s[..s.len() - 1] {
            return Err(SpecError::new(
                field,
                format!("the student's output {s:?} and the teacher's {t:?} must agree in all but the width (channels); pair layers of the same kind and map size"),
            ));
        }
        let maps = pair.teacher_layer.starts_with("attentions.") || pair.student_layer.starts_with("attentions.");
        if maps && pair.teacher_layer.split('.').next() != pair.student_layer.split('.').next() {
            return Err(SpecError::new(
                field,
                "pair attention maps with attention maps (`attentions.N` on both sides)",
            ));
        }
        if (pair.loss == FeatureLossKind::Kl) != maps {
            return Err(SpecError::new(
                format!("{field}.loss"),
                "`kl` compares attention maps (`attentions.N`); hidden states take `mse` or `cosine`",
            ));
        }
        let (sw, tw) = (s[s.len() - 1], t[t.len() - 1]);
        pairs.push(LayerPair {
            teacher: pair.teacher,
            teacher_layer: pair.teacher_layer.clone(),
            student_layer: pair.student_layer.clone(),
            loss: match pair.loss {
                FeatureLossKind::Mse => FeatureLoss::Mse,
                FeatureLossKind::Cosine => FeatureLoss::Cosine,
                FeatureLossKind::Kl => FeatureLoss::Kl,
            },
            weight: pair.weight,
            projection: (sw != tw).then_some((sw, tw)),
        });
    }
    for (i, copy) in spec.student.init_from_teacher.iter().enumerate() {
        let field = format!("student.init_from_teacher[{i}]");
        let ours = student.layer_params(&copy.student_layer);
        let theirs = teachers[0].layer_params(&copy.teacher_layer);
        if ours.is_empty() {
            return Err(SpecError::new(
                format!("{field}.student_layer"),
                format!("the student has no layer `{}`", copy.student_layer),
            ));
        }
        if theirs.is_empty() {
            return Err(SpecError::new(
                format!("{field}.teacher_layer"),
                format!("the teacher has no layer `{}`", copy.teacher_layer),
            ));
        }
        let shapes = |list: &[&(String, Vec<usize>)], prefix: &str| -> Vec<(String, Vec<usize>)> {
            list.iter().map(|(n, s)| (n[prefix.len()..].to_string(), s.clone())).collect()
        };
        let (a, b) = (shapes(&ours, &copy.student_layer), shapes(&theirs, &copy.teacher_layer));
        if a != b {
            return Err(SpecError::new(field, format!("shapes differ: student {a:?}, teacher {b:?}")));
        }
    }
    Ok(Resolved { input, teachers, student, pairs, transformer })
}

fn layer_list(blueprint: &Blueprint) -> String {
    let names: Vec<&str> = blueprint.outputs.iter().map(|(n, _)| n.as_str()).collect();
    names.join(", ")
}

fn load_teacher(
    spec: &JobSpec,
    index: usize,
    weights: &str,
    data_root: &DataRoot,
    data: &Dataset,
    device: &Device,
) -> Result<Net, SpecError> {
    let field = format!("{}.weights", spec.teacher_field(index));
    let bytes = data_root.read(weights, &field)?;
    let (tensors, _) = parse_safetensors(&bytes, device).map_err(|m| SpecError::new(&field, m))?;
    Net::from_named(&spec.teacher_specs()[index].arch, input_of(data), data.classes, tensors, device)
        .map_err(|m| SpecError::new(&field, format!("does not fit the teacher's arch and the dataset: {m}")))
}

/// `student.init_from_teacher`: the listed layers copied into the random initialisation.
fn student_from_teacher(
    spec: &JobSpec,
    resolved: &Resolved,
    random_init: &Net,
    teacher: &Net,
    ctx: &mut PhaseContext,
) -> Result<Net, EngineError> {
    if spec.student.init_from_teacher.is_empty() {
        return Ok(random_init.clone());
    }
    let source: HashMap<String, Tensor> = teacher.named().into_iter().collect();
    let mut copied = HashMap::new();
    for copy in &spec.student.init_from_teacher {
        for (name, _) in resolved.student.layer_params(&copy.student_layer) {
            let from = format!("{}{}", copy.teacher_layer, &name[copy.student_layer.len()..]);
            copied.insert(name.clone(), source[&from].copy()?);
        }
    }
    (ctx.sink)(EngineEvent::Log(format!("student initialised with {} tensors copied from the teacher", copied.len())));
    Ok(random_init.clone().with_tensors(&copied))
}

/// Runs the job on `spec.device`, or on `default_device` when the spec names none.
pub fn run(
    spec: &JobSpec,
    default_device: &str,
    data_root: &DataRoot,
    job_dir: &Path,
    control: &Control,
    sink: &mut dyn FnMut(EngineEvent),
) -> Result<RunOutput, EngineError> {
    let device_name = spec.device.as_deref().unwrap_or(default_device);
    let device = super::device(device_name)?;
    std::fs::create_dir_all(job_dir)?;
    let (data, text) = load_data(spec, data_root, &device)?;
    if let Some(setup) = &text {
        let c = &setup.teacher.config;
        sink(EngineEvent::Log(format!(
            "teacher {}: {} layers, hidden {}, {} heads{}; texts cut to {} tokens ({} were longer)",
            c.family.model_type(),
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            if setup.teacher.has_head {
                format!(", a {}-class head", c.num_labels)
            } else {
                ", no classification head".into()
            },
            setup.max_length,
            setup.truncated
        )));
    }
    sink(EngineEvent::Log(format!(
        "dataset {}: {} training and {} held-out samples{}, {} features{}, {} classes",
        data.name,
        data.train.len(),
        data.validation.len(),
        data.monitor
            .as_ref()
            .map(|m| format!(" ({} more held out of training for early stopping)", m.len()))
            .unwrap_or_default(),
        data.features,
        data.image.map(|i| format!(" ({}×{}×{} images)", i.channels, i.height, i.width)).unwrap_or_default(),
        data.classes
    )));
    let resolved = resolve(spec, &data, text.as_ref())?;
    let state_path = job_dir.join(STATE_FILE);
    let mut state: JobState = match std::fs::read(&state_path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| EngineError::Other(format!("state.json is unreadable: {e}")))?
        }
        Err(_) => JobState::default(),
    };
    let mut ctx = PhaseContext { device: &device, job_dir, control, sink };
    let mut artifacts = Vec::new();
    let input = resolved.input;

    let training = &spec.training;
    let student_plan = PhasePlan {
        phase: Phase::Student,
        epochs: training.epochs,
        batch_size: training.batch_size,
        optimizer: training.optimizer,
        schedule: training.schedule,
        warmup_steps: training.warmup_steps,
        seed: training.seed,
        temperature: spec.distill.temperature,
        alpha: spec.distill.alpha,
        loss: match spec.distill.loss {
            LogitLossKind::Kl => LogitLoss::Kl,
            LogitLossKind::ReverseKl => LogitLoss::ReverseKl,
            LogitLossKind::Js => LogitLoss::Js { beta: spec.distill.beta.unwrap_or(0.5) },
            LogitLossKind::Mse => LogitLoss::Mse,
        },
        intermediate: resolved.pairs.clone(),
        shift: training.augment.map(|a| a.shift),
        early_stopping: training.early_stopping,
        cache: spec.distill.cache,
    };
    // Teachers and the baseline learn from labels alone.
    let label_plan = PhasePlan { alpha: Scheduled::Constant(0.0), intermediate: Vec::new(), ..student_plan.clone() };

    let teacher_plan = |i: usize, train: &PhaseTrainSpec| PhasePlan {
        phase: Phase::Teacher(i),
        epochs: train.epochs,
        batch_size: train.batch_size.unwrap_or(training.batch_size),
        optimizer: train.optimizer.unwrap_or(training.optimizer),
        schedule: train.schedule.unwrap_or(training.schedule),
        ..label_plan.clone()
    };
    let mut teachers = Vec::new();
    let mut teacher_trainings = Vec::new();
    for (i, teacher) in spec.teacher_specs().into_iter().enumerate() {
        let stream: Vec<u64> = if i == 0 { vec![streams::TEACHER_INIT] } else { vec![streams::TEACHER_INIT, i as u64] };
        if let Some(setup) = &text {
            let loaded = text::teacher_net(spec, setup, &data, &mut Rng::stream(training.seed, &stream), &device)?;
            match &teacher.train {
                None => {
                    (ctx.sink)(EngineEvent::Log(format!("teacher used as found in {}", setup.teacher.path)));
                    teachers.push(loaded);
                    teacher_trainings.push(None);
                }
                Some(train) => {
                    let plan = teacher_plan(i, train);
                    let (net, summary) = phase(
                        &mut ctx,
                        &mut state,
                        &state_path,
                        &plan,
                        &loaded,
                        &data,
                        &Teachers { nets: Vec::new(), weights: Vec::new() },
                    )?;
                    artifacts.push(file_of(Phase::Teacher(i)));
                    teachers.push(net);
                    teacher_trainings.push(Some(summary));
                }
            }
            continue;
        }
        match (&teacher.weights, &teacher.train) {
            (Some(weights), _) => {
                let net = load_teacher(spec, i, weights, data_root, &data, &device)?;
                (ctx.sink)(EngineEvent::Log(format!("{} loaded from {weights}", Phase::Teacher(i).as_str())));
                teachers.push(net);
                teacher_trainings.push(None);
            }
            (None, Some(train)) => {
                let plan = teacher_plan(i, train);
                let init =
                    Net::init(&teacher.arch, input, data.classes, &mut Rng::stream(training.seed, &stream), &device)
                        .map_err(EngineError::Other)?;
                let (net, summary) = phase(
                    &mut ctx,
                    &mut state,
                    &state_path,
                    &plan,
                    &init,
                    &data,
                    &Teachers { nets: Vec::new(), weights: Vec::new() },
                )?;
                artifacts.push(file_of(Phase::Teacher(i)));
                teachers.push(net);
                teacher_trainings.push(Some(summary));
            }
            (None, None) => return Err(EngineError::Other("a teacher has neither weights nor training".into())),
        }
    }
    let total_weight: f64 = spec.teacher_specs().iter().map(|t| t.weight).sum();
    let teacher_weights: Vec<f64> = spec.teacher_specs().iter().map(|t| t.weight / total_weight).collect();

    let mut student_rng = Rng::stream(training.seed, &[streams::STUDENT_INIT]);
    let (random_init, student_init) = match &resolved.transformer {
        Some((config, layers)) => {
            let (init, copied) =
                text::student_init(config, layers, &spec.student.arch, &teachers[0], input, &mut student_rng, &device)
                    .map_err(EngineError::Other)?;
            (ctx.sink)(EngineEvent::Log(format!(
                "student: {} layers (teacher layers {layers:?}), hidden {}, {} heads, {} parameters; {copied} tensors copied from the teacher",
                config.num_layers,
                config.hidden_size,
                config.num_heads,
                init.parameter_count()
            )));
            // The baseline starts from the same copied layers: a truncated teacher fine-tuned on
            // labels, the usual alternative, so the gain measures the distillation losses alone.
            (init.clone(), init)
        }
        None => {
            let random_init = Net::init(&spec.student.arch, input, data.classes, &mut student_rng, &device)
                .map_err(EngineError::Other)?;
            let student_init = student_from_teacher(spec, &resolved, &random_init, &teachers[0], &mut ctx)?;
            (random_init, student_init)
        }
    };
    let frozen = Teachers { nets: teachers.iter().collect(), weights: teacher_weights.clone() };
    let (student, student_training) =
        phase(&mut ctx, &mut state, &state_path, &student_plan, &student_init, &data, &frozen)?;
    artifacts.push(file_of(Phase::Student));

    let unlabelled = data.classes == 0;
    let baseline = if spec.baseline && unlabelled {
        // Without labels nothing trains without a teacher: the reference is the student's
        // starting point, the teacher's copied layers, untrained.
        (ctx.sink)(EngineEvent::Log("baseline: unlabelled texts teach nothing without a teacher; the untrained student (its copied teacher layers) is the reference".into()));
        Some((student_init.clone(), None))
    } else if spec.baseline {
        // Same initialisation (before any copy from the teacher, except for transformers),
        // data order, shifts and dropout masks; only the teacher is gone.
        let plan = PhasePlan { phase: Phase::Baseline, ..label_plan.clone() };
        let no_teacher = Teachers { nets: Vec::new(), weights: Vec::new() };
        let (model, summary) = phase(&mut ctx, &mut state, &state_path, &plan, &random_init, &data, &no_teacher)?;
        artifacts.push(file_of(Phase::Baseline));
        Some((model, Some(summary)))
    } else {
        None
    };

    (ctx.sink)(EngineEvent::Log("evaluating on the held-out split and measuring latency".into()));
    // Text latency is per sequence at the dataset's length, at batch 1 and 32.
    let batch_n = if text.is_some() { 32 } else { 256 }.min(data.validation.len().max(1));
    // Unlabelled texts: each model is judged by how closely its embeddings follow the teacher's.
    let reference =
        if unlabelled { Some(EmbeddingReference::new(&teachers[0], &data.validation, &device)?) } else { None };
    let judge = |model: &Net| match &reference {
        Some(reference) => reference.evaluate(model, &data.validation, &device),
        None => evaluate(model, &data.validation, &device),
    };
    let teacher_evaluations: Vec<Evaluation> = match &reference {
        Some(reference) => vec![reference.teacher()],
        None => teachers.iter().map(judge).collect::<candle_core::Result<_>>()?,
    };
    let ensemble_evaluation =
        if teachers.len() > 1 { Some(ensemble(&teachers, &teacher_weights, &data, &device)?) } else { None };
    let reference = ensemble_evaluation.as_ref().unwrap_or(&teacher_evaluations[0]);
    let student_evaluation = judge(&student)?;
    let baseline_evaluation = baseline.as_ref().map(|(m, _)| judge(m)).transpose()?;
    let teacher_predictions = reference.predictions.clone();
    let agreement = |e: &Evaluation| {
        e.predictions.iter().zip(&teacher_predictions).filter(|(a, b)| a == b).count() as f64
            / e.predictions.len().max(1) as f64
    };
    let measure = |model: &Net,
                   evaluation: &Evaluation,
                   file: Option<String>,
                   training: Option<PhaseSummary>|
     -> Result<ModelReport, EngineError> {
        let budget = Duration::from_millis(150);
        let size_bytes = match file {
            Some(f) => std::fs::metadata(job_dir.join(f))?.len(),
            None => safetensors_size(model)?,
        };
        Ok(ModelReport {
            parameters: model.parameter_count(),
            size_bytes,
            accuracy: evaluation.accuracy,
            loss: evaluation.loss,
            agreement: agreement(evaluation),
            latency: Latency {
                batch_1_ms: report::latency_ms(model, &data.validation.x, 1, &device, budget)?,
                batch_n_ms: report::latency_ms(model, &data.validation.x, batch_n, &device, budget)?,
                batch_n,
            },
            training,
        })
    };
    let mut member_reports = Vec::new();
    for (i, (net, evaluation)) in teachers.iter().zip(&teacher_evaluations).enumerate() {
        let file = teacher_trainings[i].as_ref().map(|_| file_of(Phase::Teacher(i)));
        member_reports.push(measure(net, evaluation, file, teacher_trainings[i].clone())?);
    }
    let (teacher_report, teachers_report) = match &ensemble_evaluation {
        None => (member_reports.remove(0), None),
        Some(e) => {
            let sum = |f: &dyn Fn(&ModelReport) -> f64| member_reports.iter().map(f).sum::<f64>();
            let whole = ModelReport {
                parameters: member_reports.iter().map(|m| m.parameters).sum(),
                size_bytes: member_reports.iter().map(|m| m.size_bytes).sum(),
                accuracy: e.accuracy,
                loss: e.loss,
                agreement: 1.0,
                latency: Latency {
                    batch_1_ms: sum(&|m| m.latency.batch_1_ms),
                    batch_n_ms: sum(&|m| m.latency.batch_n_ms),
                    batch_n,
                },
                training: None,
            };
            (whole, Some(member_reports))
        }
    };
    let student_report =
        measure(&student, &student_evaluation, Some(file_of(Phase::Student)), Some(student_training.clone()))?;
    let (baseline_report, gain_test) = match (&baseline, &baseline_evaluation) {
        (Some((model, summary)), Some(evaluation)) => (
            Some(measure(model, evaluation, summary.as_ref().map(|_| file_of(Phase::Baseline)), summary.clone())?),
            // Without labels, "right" means the teacher's nearest neighbour.
            Some(PairedTest::new(
                if unlabelled { &teacher_predictions } else { &data.validation.y },
                &student_evaluation.predictions,
                &evaluation.predictions,
            )),
        ),
        _ => (None, None),
    };

    let retention = student_report.accuracy / teacher_report.accuracy.max(f64::MIN_POSITIVE);
    let gain = baseline_report.as_ref().map(|b| student_report.accuracy - b.accuracy);
    let wall_time_s = teachers_report
        .iter()
        .flatten()
        .chain([&teacher_report, &student_report])
        .chain(baseline_report.as_ref())
        .filter_map(|m| m.training.as_ref())
        .map(|t| t.wall_s)
        .sum();
    let projection_parameters =
        resolved.pairs.iter().filter_map(|p| p.projection).map(|(from, to)| from * to + to).sum();
    let report = Report {
        task: if unlabelled { Task::Embedding } else { Task::Classification },
        dataset: DatasetSummary {
            name: data.name.clone(),
            features: data.features,
            classes: data.classes,
            train_samples: data.train.len(),
            validation_samples: data.validation.len(),
            validation: if spec.dataset.has_test_file() { "test_file" } else { "split" }.into(),
        },
        distillation: DistillationSummary {
            temperature: spec.distill.temperature,
            alpha: spec.distill.alpha,
            loss: spec.distill.loss,
            beta: spec.distill.beta,
            intermediate: spec.distill.intermediate.clone(),
            student_init: spec.student.init_from_teacher.clone(),
            projection_parameters,
            teacher_cache: student_training.teacher_cache.clone(),
            teacher_weights,
        },
        device: device_name.to_string(),
        retention,
        gain,
        verdict: match unlabelled {
            true => report::embedding_verdict(&student_report, baseline_report.as_ref(), gain_test.as_ref()),
            false => report::verdict(retention, gain, gain_test.as_ref()),
        },
        gain_test,
        size_ratio: student_report.parameters as f64 / teacher_report.parameters as f64,
        speedup: Speedup {
            batch_1: teacher_report.latency.batch_1_ms / student_report.latency.batch_1_ms,
            batch_n: teacher_report.latency.batch_n_ms / student_report.latency.batch_n_ms,
        },
        wall_time_s,
        train_samples_per_s: student_report.training.as_ref().map(|t| t.samples_per_s).unwrap_or_default(),
        teacher: teacher_report,
        teachers: teachers_report,
        student: student_report,
        baseline: baseline_report,
    };
    if let Some(setup) = &text {
        let names: Vec<String> =
            data.label_names.clone().unwrap_or_else(|| (0..data.classes).map(|c| c.to_string()).collect());
        text::export(&student, &names, &setup.teacher, job_dir)
            .map_err(|m| EngineError::Other(format!("exporting the Hugging Face folder: {m}")))?;
        (ctx.sink)(EngineEvent::Log(format!(
            "student exported as a Hugging Face folder: {} (and {})",
            text::HF_FOLDER,
            text::HF_ARCHIVE
        )));
        artifacts.push(text::HF_ARCHIVE.into());
    }
    write_json(&job_dir.join(CONFIG_FILE), &export_config(&spec.student.arch, &data, &resolved.student))?;
    write_json(&job_dir.join(REPORT_FILE), &report)?;
    artifacts.push(CONFIG_FILE.into());
    artifacts.push(REPORT_FILE.into());
    Ok(RunOutput { report, artifacts })
}

/// The ensemble on the held-out split: the weighted average of the members' probabilities.
fn ensemble(teachers: &[Net], weights: &[f64], data: &Dataset, device: &Device) -> candle_core::Result<Evaluation> {
    let mut mixture: Option<Tensor> = None;
    for (net, &w) in teachers.iter().zip(weights) {
        let p = (candle_nn::ops::softmax_last_dim(&net.logits(&data.validation.x, device)?)? * w)?;
        mixture = Some(match mixture {
            None => p,
            Some(m) => (m + p)?,
        });
    }
    let mixture = mixture.expect("an ensemble has members");
    let labels = Tensor::from_slice(&data.validation.y, data.validation.len(), device)?;
    let loss = candle_nn::loss::nll(&mixture.clamp(1e-12f32, 1f32)?.log()?, &labels)?.to_scalar::<f32>()? as f64;
    let predictions = predictions(&mixture)?;
    let correct = predictions.iter().zip(&data.validation.y).filter(|(p, y)| p == y).count();
    Ok(Evaluation { loss, accuracy: correct as f64 / data.validation.len().max(1) as f64, predictions })
}

pub fn file_of(phase: Phase) -> String {
    format!("{}.safetensors", phase.as_str())
}

/// Runs a phase, or loads its result if an earlier run of this job finished it.
fn phase(
    ctx: &mut PhaseContext,
    state: &mut JobState,
    state_path: &Path,
    plan: &PhasePlan,
    init: &Net,
    data: &Dataset,
    teachers: &Teachers,
) -> Result<(Net, PhaseSummary), EngineError> {
    let name = plan.phase.as_str().to_string();
    let path = ctx.job_dir.join(file_of(plan.phase));
    if let (Some(summary), true) = (state.finished.get(&name), path.exists()) {
        let (tensors, _) = read_safetensors(&path, ctx.device).map_err(EngineError::Other)?;
        let model = init.with_named(tensors, ctx.device).map_err(EngineError::Other)?;
        (ctx.sink)(EngineEvent::Log(format!("phase {name} was finished before the restart; its weights are reused")));
        return Ok((model, summary.clone()));
    }
    (ctx.sink)(EngineEvent::Log(format!(
        "phase {name}: {} epochs of {} steps",
        plan.epochs,
        plan.steps_per_epoch(data.train.len())
    )));
    let (model, summary) = train_phase(ctx, plan, init, data, teachers)?;
    let meta = serde_json::json!({"arch": init.arch(), "input_features": data.features, "image": data.image, "num_classes": data.classes});
    write_safetensors(&path, &model.named(), Some(&meta))?;
    state.finished.insert(name, summary.clone());
    write_json(state_path, state)?;
    Ok((model, summary))
}

fn safetensors_size(model: &Net) -> Result<u64, EngineError> {
    let named = model.named();
    let views: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Ok(safetensors::serialize(views, None).map_err(|e| EngineError::Other(e.to_string()))?.len() as u64)
}

/// `config.json`: everything needed to rebuild the student and feed it inputs.
fn export_config(arch: &ArchSpec, data: &Dataset, blueprint: &Blueprint) -> serde_json::Value {
    let tensors: Vec<&str> = blueprint.params.iter().chain(&blueprint.buffers).map(|(n, _)| n.as_str()).collect();
    let (format, layout) = match arch {
        ArchSpec::Mlp { .. } => ("distillery.mlp", "layers.{i}.weight is out×in, y = x·Wᵀ + b, ReLU between layers, no activation after the last"),
        ArchSpec::Transformer(_) => (
            "distillery.transformer",
            "a Hugging Face BERT-family model; student-hf.tar holds it as a folder (config.json, model.safetensors with Hugging Face names, the tokenizer) that transformers and candle load; input rows here are token ids, segment ids and attention mask, each max_length long",
        ),
        ArchSpec::Conv { .. } => (
            "distillery.conv",
            "input as C×H×W; each block: conv (PyTorch Conv2d layout out×in×k×k, zero padding) → BatchNorm2d (eps 1e-5, running statistics) when present → ReLU → pooling (window = stride = pool_size); then flatten in C×H×W order and the MLP head as in distillery.mlp",
        ),
    };
    serde_json::json!({
        "format": format,
        "version": 1,
        "arch": arch,
        "input_features": data.features,
        "image": data.image,
        "num_classes": data.classes,
        "label_names": data.label_names,
        "layer_outputs": blueprint.outputs,
        "activation": "relu",
        "tensors": tensors,
        "layout": layout,
        "dtype": "f32",
        "normalization": data.normalization,
        "input_preparation": "x = (raw − normalization.mean) / normalization.std, per feature",
    })
}
