//! The seed table of the field (teacher, distilled student, baseline) as rows of text, for
//! every rendering of a report: the CLI's table and `report.svg`.

use super::report::{LanguageModelScores, ModelReport, Report, Task};
use crate::engine::Phase;

#[derive(Clone, Copy, PartialEq)]
enum Column {
    Teacher,
    Ensemble,
    Student,
    Baseline,
}

fn cells(m: &ModelReport, column: Column) -> Vec<String> {
    vec![
        m.parameters.to_string(),
        match m.size_bytes < 10 << 20 {
            true => format!("{:.1} KiB", m.size_bytes as f64 / 1024.0),
            false => format!("{:.1} MiB", m.size_bytes as f64 / (1024.0 * 1024.0)),
        },
        format!("{:.2}%", m.accuracy * 100.0),
        format!("{:.4}", m.loss),
        format!("{:.2}%", m.agreement * 100.0),
        format!("{:.4} ms", m.latency.batch_1_ms),
        format!("{:.4} ms", m.latency.batch_n_ms),
        match (&m.training, column) {
            (Some(t), _) => format!("{:.1} s", t.wall_s),
            (None, Column::Ensemble) => "members".into(),
            (None, Column::Baseline) => "untrained".into(),
            (None, _) => "loaded".into(),
        },
    ]
}

/// A causal LM's rows beyond the shared ones.
fn language_cells(scores: &LanguageModelScores) -> [String; 4] {
    [
        format!("{:.2}", scores.perplexity),
        format!("{:.4}", scores.kl_to_teacher),
        format!("{:.3}", scores.rouge_l),
        format!("{:.1}", scores.generation_tokens_per_s),
    ]
}

/// The seed table's contents: the row labels, and each model's column (its name and cells).
pub fn table_columns(report: &Report) -> (Vec<String>, Vec<(String, Vec<String>)>) {
    let mut columns: Vec<(String, &ModelReport, Column)> = Vec::new();
    for (i, member) in report.teachers.iter().flatten().enumerate() {
        columns.push((Phase::Teacher(i).as_str().into_owned(), member, Column::Teacher));
    }
    match report.teachers.is_some() {
        true => columns.push(("ensemble".into(), &report.teacher, Column::Ensemble)),
        false => columns.push(("teacher".into(), &report.teacher, Column::Teacher)),
    }
    columns.push(("student (distilled)".into(), &report.student, Column::Student));
    if let Some(b) = &report.baseline {
        columns.push(("student (baseline)".into(), b, Column::Baseline));
    }
    let language = report.task == Task::LanguageModel;
    let mut labels = vec![
        "parameters".to_string(),
        "size on disk".into(),
        match report.task {
            Task::Embedding => "neighbour agreement",
            Task::LanguageModel => "next-token accuracy",
            Task::Classification => "accuracy",
        }
        .into(),
        match report.task {
            Task::Embedding => "1 − mean cosine",
            Task::LanguageModel => "loss (nats/token)",
            Task::Classification => "loss",
        }
        .into(),
        "agreement with teacher".into(),
        if language { "ms per generated token" } else { "latency, batch 1" }.into(),
        format!("latency, batch {}", report.teacher.latency.batch_n),
        "training time".into(),
    ];
    let mut columns: Vec<(String, Vec<String>)> =
        columns.into_iter().map(|(name, m, column)| (name, cells(m, column))).collect();
    if let Some(lm) = &report.language_model {
        labels.extend(["perplexity", "KL to teacher", "ROUGE-L vs teacher", "generated tokens/s"].map(String::from));
        let scores = [Some(&lm.teacher), Some(&lm.student), lm.baseline.as_ref()];
        for ((_, cells), scores) in columns.iter_mut().zip(scores.into_iter().flatten()) {
            cells.extend(language_cells(scores));
        }
    }
    (labels, columns)
}
