//! Warnings for the three ways users lose: a student too small to follow its teacher, soft
//! targets at T = 1, and a teacher with little to teach.

use crate::spec::{JobSpec, LogitLossKind, Scheduled};

/// Below this share of the teacher's parameters a student rarely follows it.
const SMALLEST_STUDENT_SHARE: f64 = 0.10;
/// Accuracy (a fraction) by which the teacher must beat the student trained alone, on
/// validation data, to have something to teach.
const CLEAR_TEACHER_MARGIN: f64 = 0.01;

/// What the spec alone tells: the student's size against the teachers', and the temperature.
pub fn spec_warnings(spec: &JobSpec, student_parameters: u64, teacher_parameters: u64) -> Vec<String> {
    let mut warnings = Vec::new();
    let share = student_parameters as f64 / teacher_parameters.max(1) as f64;
    if share < SMALLEST_STUDENT_SHARE {
        warnings.push(format!(
            "the student has {:.1}% of the teacher's parameters ({student_parameters} of {teacher_parameters}), under {:.0}%: a student this much smaller often cannot follow its teacher; try a larger student, or distil through a mid-sized one first",
            share * 100.0,
            SMALLEST_STUDENT_SHARE * 100.0
        ));
    }
    // MSE between raw logits has no temperature to soften with.
    let softened = spec.distill.alpha != Scheduled::Constant(0.0) && spec.distill.loss != LogitLossKind::Mse;
    if softened && spec.distill.temperature == Scheduled::Constant(1.0) {
        warnings.push(
            "T = 1: the soft targets are the teacher's plain probabilities, which say little beyond its top class where it is confident; T from 2 to 8 usually passes on more".into(),
        );
    }
    warnings
}

/// The teacher's lead over the student trained alone, both judged on `on` (validation data).
pub fn teacher_margin_warning(teacher_accuracy: f64, baseline_accuracy: f64, on: &str) -> Option<String> {
    let margin = teacher_accuracy - baseline_accuracy;
    (margin < CLEAR_TEACHER_MARGIN).then(|| {
        format!(
            "the teacher is not clearly better than the student trained alone on {on} ({:.2}% against {:.2}%, a margin of {:+.2} points): it has little to teach; train a stronger teacher before distilling",
            teacher_accuracy * 100.0,
            baseline_accuracy * 100.0,
            margin * 100.0
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::example;

    fn spec(edit: impl Fn(&mut serde_json::Value)) -> JobSpec {
        let mut value = example();
        edit(&mut value);
        crate::spec::parse(value.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn a_tiny_student_and_t_1_are_warned_of() {
        let plain = spec(|_| {});
        assert!(spec_warnings(&plain, 10, 100).is_empty(), "10% is not under 10%");
        let warnings = spec_warnings(&plain, 9, 100);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with("the student has 9.0% of the teacher's parameters (9 of 100)"), "{warnings:?}");

        let cold = spec(|v| v["distill"]["temperature"] = 1.0.into());
        let warnings = spec_warnings(&cold, 50, 100);
        assert!(warnings.len() == 1 && warnings[0].starts_with("T = 1"), "{warnings:?}");
        // Without a soft term the temperature does nothing, and a schedule from 1 is a choice.
        let labels_only = spec(|v| {
            v["distill"]["temperature"] = 1.0.into();
            v["distill"]["alpha"] = 0.0.into();
        });
        assert!(spec_warnings(&labels_only, 50, 100).is_empty());
        let annealed = spec(|v| v["distill"]["temperature"] = serde_json::json!({"start": 1.0, "end": 4.0}));
        assert!(spec_warnings(&annealed, 50, 100).is_empty());
        let mse = spec(|v| {
            v["distill"]["temperature"] = 1.0.into();
            v["distill"]["loss"] = "mse".into();
        });
        assert!(spec_warnings(&mse, 50, 100).is_empty(), "MSE on raw logits has no temperature");
    }

    #[test]
    fn a_teacher_within_a_point_of_the_baseline_is_warned_of() {
        assert_eq!(teacher_margin_warning(0.95, 0.93, "the validation split"), None);
        let warning = teacher_margin_warning(0.95, 0.945, "the validation split").unwrap();
        assert!(
            warning.contains("on the validation split (95.00% against 94.50%, a margin of +0.50 points)"),
            "{warning}"
        );
        assert!(teacher_margin_warning(0.90, 0.92, "x").unwrap().contains("a margin of -2.00 points"));
    }
}
