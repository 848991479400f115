//! `sweep.svg`: each trial's validation accuracy against every swept setting (temperature, α,
//! the learning rate on a log axis, the student's parameters), one panel a setting. A trial is
//! a `<circle data-trial>` (hollow when successive halving stopped it), the best one red.

use super::svg::{num, tick_label, Panel, Range, Svg};
use crate::engine::job::report::{SweepReport, TrialReport};

const WIDTH: f64 = 960.0;
const PANEL_WIDTH: f64 = 380.0;
const PANEL_HEIGHT: f64 = 240.0;
const LEFT: f64 = 70.0;
const GAP: f64 = 90.0;
const TOP: f64 = 70.0;

/// A swept setting as a panel: its key (`data-panel`), axis label and each trial's x.
type Axis = (&'static str, &'static str, fn(&TrialReport) -> f64);

const AXES: [Axis; 4] = [
    ("temperature", "temperature T", |t| t.temperature.at(0.0)),
    ("alpha", "α (weight of the teacher)", |t| t.alpha.at(0.0)),
    ("lr", "learning rate (log10)", |t| t.lr.log10()),
    ("student", "student parameters", |t| t.student_parameters as f64),
];

/// `sweep.svg` for the job called `title`.
pub fn render(title: &str, sweep: &SweepReport) -> String {
    let axes: Vec<&Axis> = AXES.iter().filter(|(_, _, x)| distinct(sweep, *x) > 1).collect();
    let rows = axes.len().div_ceil(2).max(1);
    let height = TOP + rows as f64 * (PANEL_HEIGHT + GAP) + 40.0;
    let mut svg = Svg::new(WIDTH, height);
    svg.title(WIDTH, &format!("{title}: sweep of {} trials", sweep.trials.len()));
    let best = &sweep.trials[sweep.best_trial - 1];
    svg.text(
        LEFT,
        TOP - 24.0,
        &[],
        &format!(
            "validation accuracy on {} samples held out of training; best: trial {} ({:.2}%), in red; hollow: stopped by halving",
            sweep.validation_samples,
            best.trial,
            best.validation_accuracy * 100.0
        ),
    );
    let accuracy = Range::of(sweep.trials.iter().map(|t| t.validation_accuracy * 100.0), Range { lo: 0.0, hi: 100.0 });
    let (y, y_ticks) = padded(accuracy).nice(5);
    for (i, (key, label, x_of)) in axes.into_iter().enumerate() {
        let (x, x_ticks) = padded(Range::of(sweep.trials.iter().map(x_of), Range { lo: 0.0, hi: 1.0 })).nice(5);
        let panel = Panel {
            left: LEFT + (i % 2) as f64 * (PANEL_WIDTH + GAP),
            top: TOP + (i / 2) as f64 * (PANEL_HEIGHT + GAP),
            width: PANEL_WIDTH,
            height: PANEL_HEIGHT,
            x,
            y,
        };
        panel.open(&mut svg, key);
        panel.axes(&mut svg, &x_ticks, &y_ticks, &|v| format!("{}%", tick_label(v, &y_ticks)));
        let middle = [("text-anchor", "middle".to_string())];
        svg.text(panel.left + PANEL_WIDTH / 2.0, panel.top + PANEL_HEIGHT + 36.0, &middle, label);
        for trial in &sweep.trials {
            trial_point(&mut svg, &panel, trial, (x_of(trial), trial.validation_accuracy * 100.0), best.trial);
        }
        svg.close("g");
    }
    svg.finish()
}

fn trial_point(svg: &mut Svg, panel: &Panel, trial: &TrialReport, (x, y): (f64, f64), best: usize) {
    let colour = if trial.trial == best { "#d62728" } else { "#1f77b4" };
    svg.element(
        "circle",
        &[
            ("data-trial", trial.trial.to_string()),
            ("cx", num(panel.px(x))),
            ("cy", num(panel.py(y))),
            ("r", if trial.trial == best { "6" } else { "4" }.into()),
            ("stroke", colour.into()),
            ("fill", if trial.stopped_early { "none" } else { colour }.into()),
        ],
    );
}

/// A range widened by a tenth of its span on each side, so no point sits on the frame.
fn padded(range: Range) -> Range {
    let margin = (range.hi - range.lo) / 10.0;
    Range { lo: range.lo - margin, hi: range.hi + margin }
}

/// How many different values the trials take on an axis.
fn distinct(sweep: &SweepReport, x_of: fn(&TrialReport) -> f64) -> usize {
    let mut values: Vec<f64> = sweep.trials.iter().map(x_of).collect();
    values.sort_by(f64::total_cmp);
    values.dedup();
    values.len()
}
