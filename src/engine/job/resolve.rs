//! The spec held against its data before anything trains: the dataset loaded, every
//! architecture fitted to the inputs, layer pairs and copies checked, the warm-up checked
//! against the phases' lengths, and the job's peak memory estimated.

use candle_core::Device;

use crate::engine::data::root::DataRoot;
use crate::engine::data::{self, Dataset};
use crate::engine::files::parse_safetensors;
use crate::engine::job::budget::{self, JobSize, MemoryEstimate};
use crate::engine::job::text::{self, TextSetup};
use crate::engine::models::bert::BertConfig;
use crate::engine::models::{Blueprint, Input, Net};
use crate::engine::train::loss::FeatureLoss;
use crate::engine::train::LayerPair;
use crate::spec::{ArchSpec, DatasetSource, FeatureLossKind, JobSpec, SpecError};

/// The spec checked against the data: every architecture fits the inputs, layer names exist,
/// copied layers have the same shapes in both networks.
pub(super) struct Resolved {
    pub input: Input,
    pub teachers: Vec<Blueprint>,
    pub student: Blueprint,
    pub pairs: Vec<LayerPair>,
    /// A transformer student's config and the teacher layer each of its layers maps to.
    pub transformer: Option<(BertConfig, Vec<usize>)>,
}

/// A warm-up longer than a phase would keep its learning rate below the one asked for to the
/// end: almost certainly a mistake.
pub(super) fn check_warmup(spec: &JobSpec, data: &Dataset) -> Result<(), SpecError> {
    let training = &spec.training;
    // The teachers train on the labelled samples; the student on the transfer set too.
    let steps =
        |epochs: u32, samples: usize, batch: usize| u64::from(epochs).saturating_mul(samples.div_ceil(batch) as u64);
    let mut phases = vec![("the student", steps(training.epochs, data.train.len(), training.batch_size))];
    for (i, teacher) in spec.teacher_specs().iter().enumerate() {
        if let Some(train) = &teacher.train {
            phases.push((
                if i == 0 { "the teacher" } else { "a teacher" },
                steps(train.epochs, data.labelled, train.batch_size.unwrap_or(training.batch_size)),
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
pub(super) fn estimate_memory(spec: &JobSpec, data: &Dataset, resolved: &Resolved) -> MemoryEstimate {
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
    // Every run's models stay in memory until the report has judged them all.
    let earlier_runs = spec.training.run_seeds().len() as u64 - 1;
    if earlier_runs > 0 {
        let held = budget::model_bytes(&resolved.student, false).saturating_mul(students * earlier_runs);
        estimate.add("training.repeats", "the earlier runs' students", held);
    }
    let student_phase = budget::activation_bytes(&resolved.student, features, spec.training.batch_size, true)
        .saturating_add(teacher_forward);
    largest_phase = largest_phase.max(student_phase);
    estimate.add("training.batch_size", "activations", largest_phase);
    if spec.distill.cache.enabled {
        // Every logit, kept for the whole job and shared by its phases, and a phase's top k.
        let kept = (data.classes.max(1) + spec.distill.cache.top_k.map_or(0, |k| 2 * k)) as u64;
        let cache = (data.train.len() as u64).saturating_mul(kept).saturating_mul(resolved.teachers.len() as u64);
        estimate.add("distill.cache", "the teacher cache", budget::f32_bytes(cache));
    }
    estimate
}

/// What the size limits count: the largest model, the phase that sees the most samples, the
/// largest batch and the text length.
pub(super) fn job_size(spec: &JobSpec, data: &Dataset, resolved: &Resolved, text: Option<&TextSetup>) -> JobSize {
    let training = &spec.training;
    let mut models = vec![("student.arch".to_string(), budget::parameters(&resolved.student))];
    let (samples, labelled) = (data.train.len() as u64, data.labelled as u64);
    // Repeated seeds train the student k times over: the student's phases count as one, k times as long.
    let runs = training.run_seeds().len() as u64;
    let student_field = if runs > 1 { "training.repeats" } else { "training.epochs" };
    let student_samples = u64::from(training.epochs).saturating_mul(samples).saturating_mul(runs);
    let mut phases = vec![(student_field.to_string(), student_samples)];
    // A sweep's trials, all rungs together, count as one more phase.
    if let Some(sweep) = &spec.sweep {
        phases.push(("sweep".to_string(), sweep.trial_epochs(training.epochs).saturating_mul(samples)));
    }
    let mut batches = vec![("training.batch_size".to_string(), training.batch_size as u64)];
    for (i, (teacher, blueprint)) in spec.teacher_specs().iter().zip(&resolved.teachers).enumerate() {
        let field = spec.teacher_field(i);
        models.push((format!("{field}.arch"), budget::parameters(blueprint)));
        if let Some(train) = &teacher.train {
            phases.push((format!("{field}.train.epochs"), u64::from(train.epochs).saturating_mul(labelled)));
            if let Some(batch) = train.batch_size {
                batches.push((format!("{field}.train.batch_size"), batch as u64));
            }
        }
    }
    // The first of equals wins: the student's field when a teacher is as large.
    let largest = |list: Vec<(String, u64)>| list.into_iter().rev().max_by_key(|(_, n)| *n).unwrap_or_default();
    JobSize {
        parameters: largest(models),
        epoch_samples: largest(phases),
        batch_size: largest(batches),
        sequence_length: text.map(|setup| ("dataset.max_length".to_string(), setup.max_length as u64)),
    }
}

/// The dataset; for text, tokenised with the teacher's tokenizer, with the teacher's folder.
pub(super) fn load_data(
    spec: &JobSpec,
    data_root: &DataRoot,
    device: &Device,
) -> Result<(Dataset, Option<TextSetup>), SpecError> {
    // Repeated seeds pick the exported run on validation data held out of training, so the
    // reported held-out samples stay unseen.
    // So do a sweep's trials, judged on it.
    let monitor = spec.training.early_stopping.is_some() || spec.training.repeated() || spec.sweep.is_some();
    if spec.dataset.source == DatasetSource::Text {
        let (data, setup) = text::load(spec, data_root, monitor, device)?;
        return Ok((data, Some(setup)));
    }
    Ok((data::load(&spec.dataset, data_root, spec.training.seed, monitor)?, None))
}

pub(super) fn input_of(data: &Dataset) -> Input {
    Input { features: data.features, image: data.image }
}

pub(super) fn resolve(spec: &JobSpec, data: &Dataset, text: Option<&TextSetup>) -> Result<Resolved, SpecError> {
    let input = input_of(data);
    if spec.training.augment.is_some() && data.image.is_none() {
        return Err(SpecError::new(
            "training.augment",
            "shifts need image data (an `idx` dataset of H×W or H×W×C samples)",
        ));
    }
    let blueprint = |arch: &ArchSpec, field: String| {
        Blueprint::new(arch, input, data.classes).map_err(|m| SpecError::new(field, m.to_string()))
    };
    let (teachers, student, transformer) = match (text, spec.student.arch.transformer()) {
        (Some(setup), Some(arch)) => {
            let teacher = text::teacher_config(setup, data.classes);
            let (config, layers) = match text::pretrained_config(setup, data.classes) {
                Some(config) => (config, Vec::new()),
                None => text::student_config(&teacher, arch, setup.trimmed.as_ref())?,
            };
            check_tokens_line_up(spec, setup)?;
            if data.classes == 0 && config.hidden_size != teacher.hidden_size {
                let field = if arch.path.is_some() { "student.arch.path" } else { "student.arch.hidden_size" };
                return Err(SpecError::new(field, format!("an embedding student keeps the teacher's width ({}), so its embeddings compare with the teacher's", teacher.hidden_size)));
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
    let pairs = layer_pairs(spec, &teachers, &student)?;
    check_layer_copies(spec, &teachers[0], &student)?;
    Ok(Resolved { input, teachers, student, pairs, transformer })
}

/// A student with its own tokenizer cuts the texts into other tokens: only the pooled embedding
/// pairs with the teacher's, not per-token states or attention maps.
fn check_tokens_line_up(spec: &JobSpec, setup: &TextSetup) -> Result<(), SpecError> {
    if !setup.own_tokenizer {
        return Ok(());
    }
    let per_token =
        spec.distill.intermediate.iter().position(|p| p.teacher_layer != "pooled" || p.student_layer != "pooled");
    match per_token {
        Some(i) => Err(SpecError::new(
            format!("distill.intermediate[{i}]"),
            "the student tokenises with its own tokenizer, so its tokens do not line up with the teacher's: pair `pooled` with `pooled`, or distil through the logits alone",
        )),
        None => Ok(()),
    }
}

/// `distill.intermediate`: each pair's layers exist, fit each other, and take a fitting loss.
fn layer_pairs(spec: &JobSpec, teachers: &[Blueprint], student: &Blueprint) -> Result<Vec<LayerPair>, SpecError> {
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
                format!("the student has no layer `{}`; it has {}", pair.student_layer, layer_list(student)),
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
    Ok(pairs)
}

/// `student.init_from_teacher`: both layers exist and have the same tensor shapes.
fn check_layer_copies(spec: &JobSpec, teacher: &Blueprint, student: &Blueprint) -> Result<(), SpecError> {
    for (i, copy) in spec.student.init_from_teacher.iter().enumerate() {
        let field = format!("student.init_from_teacher[{i}]");
        let ours = student.layer_params(&copy.student_layer);
        let theirs = teacher.layer_params(&copy.teacher_layer);
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
    Ok(())
}

fn layer_list(blueprint: &Blueprint) -> String {
    let names: Vec<&str> = blueprint.outputs.iter().map(|(n, _)| n.as_str()).collect();
    names.join(", ")
}

pub(super) fn load_teacher(
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
