//! The seed table of the field (teacher, distilled student, baseline) as rows of text, for
//! every rendering of a report: the CLI's table and `report.svg`.

use super::report::{ModelReport, Report, Task};
use crate::engine::Phase;

#[derive(Clone, Copy, PartialEq)]
enum Column {
    Teacher,
    Ensemble,
    Student,
    Baseline,
}

fn cells(m: &ModelReport, column: Column) -> [String; 8] {
    [
        m.parameters.to_string(),
        format!("{:.1} KiB", m.size_bytes as f64 / 1024.0),
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

/// The seed table's contents: the row labels, and each model's column (its name and cells).
pub fn table_columns(report: &Report) -> ([String; 8], Vec<(String, [String; 8])>) {
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
    let embedding = report.task == Task::Embedding;
    let labels = [
        "parameters".to_string(),
        "size on disk".into(),
        if embedding { "neighbour agreement" } else { "accuracy" }.into(),
        if embedding { "1 − mean cosine" } else { "loss" }.into(),
        "agreement with teacher".into(),
        "latency, batch 1".into(),
        format!("latency, batch {}", report.teacher.latency.batch_n),
        "training time".into(),
    ];
    (labels, columns.into_iter().map(|(name, m, column)| (name, cells(m, column))).collect())
}
