//! A language-model job's report: each model scored on the held-out blocks and continuing the
//! held-out prompts, in the report every job has, with its causal-LM section.

use candle_core::Device;

use super::corpus::{self, Blocks, Corpus};
use super::evaluate::{score_beside, scoring_ms, Scores};
use super::generate::{continue_prompt, rouge_l};
use super::setup::{Job, GENERATIONS_FILE};
use crate::engine::job::report::{
    DatasetSummary, DistillationSummary, GenerationsReport, LanguageModelReport, LanguageModelScores, Latency,
    ModelReport, PairedTest, Report, SampleContinuation, Speedup, Task,
};
use crate::engine::models::llama::Llama;
use crate::engine::rng::Rng;
use crate::engine::train::{CacheReport, PhaseSummary};
use crate::engine::EngineError;
use crate::spec::GenerationSpec;

/// Continuations shown side by side in the report.
const SAMPLES: usize = 3;

/// The teacher's continuations the student trained on, in sequence mode.
pub struct Generated {
    pub prompts: usize,
    pub tokens: usize,
    pub wall_s: f64,
}

pub struct Trained<'a> {
    pub student: &'a (Llama, PhaseSummary),
    pub baseline: Option<&'a (Llama, PhaseSummary)>,
    pub cache: Option<CacheReport>,
    pub generations: Option<Generated>,
}

/// One model judged: held-out scores, continuations, timings.
struct Judged {
    scores: Scores,
    continuations: Vec<Vec<u32>>,
    tokens_per_s: f64,
    latency: Latency,
}

/// `model`'s continuations and timings, with its held-out `scores`.
fn judge(
    model: &Llama,
    scores: Scores,
    held_out: &Blocks,
    prompts: &[Vec<u32>],
    (settings, eos, batch): (&GenerationSpec, u32, usize),
    device: &Device,
) -> Result<Judged, EngineError> {
    let greedy = GenerationSpec { sample: false, ..*settings };
    let (mut continuations, mut tokens, mut seconds) = (Vec::new(), 0usize, 0.0);
    for prompt in prompts {
        let c = continue_prompt(model, prompt, &greedy, Some(eos), &mut Rng::new(0), device)?;
        tokens += c.tokens.len().saturating_sub(1);
        seconds += c.decode_s;
        continuations.push(c.tokens);
    }
    let tokens_per_s = if seconds > 0.0 { tokens as f64 / seconds } else { 0.0 };
    let latency = Latency {
        batch_1_ms: if tokens > 0 { seconds * 1000.0 / tokens as f64 } else { f64::NAN },
        batch_n_ms: scoring_ms(model, held_out, batch, device)?,
        batch_n: batch,
    };
    Ok(Judged { scores, continuations, tokens_per_s, latency })
}

fn model_report(model: &Llama, judged: &Judged, training: Option<&PhaseSummary>) -> ModelReport {
    let parameters = model.config.parameter_count();
    ModelReport {
        parameters,
        size_bytes: parameters as u64 * 4,
        accuracy: judged.scores.accuracy,
        loss: judged.scores.loss,
        agreement: judged.scores.agreement,
        latency: judged.latency.clone(),
        training: training.cloned(),
    }
}

fn lm_scores(judged: &Judged, teacher: &Judged) -> LanguageModelScores {
    let pairs = judged.continuations.iter().zip(&teacher.continuations);
    let rouge: Vec<f64> = pairs.map(|(c, t)| rouge_l(c, t)).collect();
    LanguageModelScores {
        perplexity: judged.scores.perplexity(),
        kl_to_teacher: judged.scores.kl_to_teacher,
        rouge_l: if rouge.is_empty() { f64::NAN } else { rouge.iter().sum::<f64>() / rouge.len() as f64 },
        generation_tokens_per_s: judged.tokens_per_s,
    }
}

pub(super) fn build(
    job: &Job,
    corpus: &Corpus,
    (held_out, train_tokens): (&Blocks, usize),
    trained: Trained,
    device_name: &str,
) -> Result<Report, EngineError> {
    let spec = job.spec;
    let device = job.ctx.device;
    let settings = spec.generation();
    let prompts = corpus::prompts(&corpus.held_out, &settings, spec.block_length(), settings.report_prompts);
    let how = (&settings, job.eos, spec.training.batch_size);
    // The teacher runs once over the held-out blocks, the students beside it.
    let students: Vec<&Llama> = std::iter::once(&trained.student.0).chain(trained.baseline.map(|b| &b.0)).collect();
    let (teacher_scores, scores) = score_beside(job.teacher, &students, held_out, spec.training.batch_size, device)?;
    let mut scores = scores.into_iter();
    let teacher = judge(job.teacher, teacher_scores, held_out, &prompts, how, device)?;
    let student_scores = scores.next().expect("the student was scored");
    let student = judge(&trained.student.0, student_scores, held_out, &prompts, how, device)?;
    let baseline = trained.baseline.zip(scores.next()).map(|(b, s)| judge(&b.0, s, held_out, &prompts, how, device));
    let baseline = baseline.transpose()?;
    let decode = |tokens: &[u32]| job.header.tokenizer.decode(tokens, false).unwrap_or_default();
    let samples = (0..prompts.len().min(SAMPLES))
        .map(|i| SampleContinuation {
            prompt: decode(&prompts[i]),
            teacher: decode(&teacher.continuations[i]),
            student: decode(&student.continuations[i]),
            baseline: baseline.as_ref().map(|b| decode(&b.continuations[i])),
        })
        .collect();
    let language_model = LanguageModelReport {
        mode: spec.distill.mode,
        block_length: spec.block_length(),
        vocabulary: job.teacher.config.vocab_size,
        train_tokens,
        held_out_tokens: held_out.targets(),
        teacher: lm_scores(&teacher, &teacher),
        student: lm_scores(&student, &teacher),
        baseline: baseline.as_ref().map(|b| lm_scores(b, &teacher)),
        train_tokens_per_s: trained.student.1.samples_per_s,
        generations: trained.generations.as_ref().map(|g| GenerationsReport {
            prompts: g.prompts,
            tokens: g.tokens,
            wall_s: g.wall_s,
            file: GENERATIONS_FILE.into(),
        }),
        max_new_tokens: settings.max_new_tokens,
        samples,
    };
    let teacher_row = model_report(job.teacher, &teacher, None);
    let student_row = model_report(&trained.student.0, &student, Some(&trained.student.1));
    let baseline_row = trained.baseline.zip(baseline.as_ref()).map(|(b, j)| model_report(&b.0, j, Some(&b.1)));
    let gain_test = baseline
        .as_ref()
        .map(|b| PairedTest::new(&student.scores.next, &student.scores.predictions, &b.scores.predictions));
    let gain = baseline_row.as_ref().map(|b| student_row.accuracy - b.accuracy);
    let wall_time_s = trained.student.1.wall_s
        + trained.baseline.map_or(0.0, |b| b.1.wall_s)
        + trained.cache.as_ref().map_or(0.0, |c| c.fill_s)
        + trained.generations.as_ref().map_or(0.0, |g| g.wall_s);
    Ok(Report {
        task: Task::LanguageModel,
        dataset: DatasetSummary {
            name: spec.dataset.path.clone().unwrap_or_default(),
            features: spec.block_length(),
            classes: job.teacher.config.vocab_size,
            train_samples: trained.student.1.labelled_samples,
            transfer_samples: 0,
            validation_samples: held_out.count(),
            validation: if spec.dataset.test_path.is_some() { "test_file" } else { "split" }.into(),
        },
        distillation: DistillationSummary {
            temperature: spec.distill.temperature,
            alpha: spec.distill.alpha,
            loss: spec.distill.loss,
            beta: spec.distill.beta,
            intermediate: Vec::new(),
            student_init: job.plan.copies(),
            projection_parameters: 0,
            teacher_cache: trained.cache,
            teacher_weights: vec![1.0],
        },
        device: device_name.to_string(),
        retention: student_row.accuracy / teacher_row.accuracy,
        gain,
        verdict: verdict(&language_model, gain_test.as_ref()),
        gain_test,
        repeats: None,
        sweep: None,
        size_ratio: student_row.parameters as f64 / teacher_row.parameters as f64,
        speedup: Speedup {
            batch_1: teacher_row.latency.batch_1_ms / student_row.latency.batch_1_ms,
            batch_n: teacher_row.latency.batch_n_ms / student_row.latency.batch_n_ms,
        },
        wall_time_s,
        train_samples_per_s: trained.student.1.samples_per_s,
        threads: rayon::current_num_threads(),
        teacher: teacher_row,
        teachers: None,
        student: student_row,
        baseline: baseline_row,
        language_model: Some(language_model),
        warnings: super::setup::warnings(spec, &job.teacher.config, &job.plan.config),
    })
}

/// Relative perplexity difference below which two students are called equal.
const PERPLEXITY_TOLERANCE: f64 = 0.01;

/// One plain sentence from the perplexities (and the paired test of next-token accuracy).
fn verdict(lm: &LanguageModelReport, test: Option<&PairedTest>) -> String {
    let (s, t) = (lm.student.perplexity, lm.teacher.perplexity);
    let kept = format!(
        "held-out perplexity {s:.2} (teacher {t:.2}) and a ROUGE-L of {:.3} between its continuations and the teacher's",
        lm.student.rouge_l
    );
    let Some(b) = &lm.baseline else {
        return format!("the student reaches {kept}; no baseline was trained, so what distillation added is unknown");
    };
    let evidence = test.map_or(String::new(), |t| {
        format!(
            "; next tokens only one of them predicts: distilled {}, baseline {} (p = {:.3})",
            t.distilled_only_correct, t.baseline_only_correct, t.p_value
        )
    });
    let relative = (s - b.perplexity) / b.perplexity;
    if relative < -PERPLEXITY_TOLERANCE {
        format!("distillation helped: the student reaches {kept}, against perplexity {:.2} for the same student trained on the corpus alone{evidence}", b.perplexity)
    } else if relative > PERPLEXITY_TOLERANCE {
        format!("distillation did not help: the same student trained on the corpus alone reaches perplexity {:.2}, the distilled one {kept}{evidence}; try another loss or temperature, more epochs, or more of the teacher's layers", b.perplexity)
    } else {
        format!("distillation made no clear difference: the student reaches {kept}, the same student on the corpus alone perplexity {:.2}{evidence}", b.perplexity)
    }
}
