//! `curves.svg`: the training loss of every phase over its steps, and its validation accuracy
//! over its epochs, from the engine's events as they happen or from the stored ones.

use serde::Deserialize;

use super::svg::{self, Panel, Range, Svg};
use crate::engine::{EngineEvent, EpochMetrics, Phase, Progress};
use crate::store::TrainingLog;

/// Points a drawn series keeps at most; longer ones are thinned by [`downsample`].
pub const MAX_POINTS: usize = 1000;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 660.0;
const LEFT: f64 = 70.0;
const PANEL_WIDTH: f64 = 620.0;
const LOSS_BOX: (f64, f64) = (60.0, 280.0);
const ACCURACY_BOX: (f64, f64) = (410.0, 200.0);
/// One colour per phase, in phase order.
const COLOURS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

#[derive(Debug, Clone, Copy, PartialEq)]
struct StepPoint {
    step: u64,
    loss: f64,
    soft: Option<f64>,
    hard: f64,
}

#[derive(Debug, Clone, PartialEq)]
struct PhaseCurves {
    phase: Phase,
    steps: Vec<StepPoint>,
    /// (epoch, validation accuracy).
    epochs: Vec<(u32, f64)>,
}

/// The curves of a job's phases, in phase order (teachers, student, baseline).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    phases: Vec<PhaseCurves>,
}

/// Where a phase sorts: the teachers in their order, then the students' runs, then the
/// baselines'.
fn order(phase: Phase) -> (u8, usize) {
    match phase {
        Phase::Teacher(i) => (0, i),
        Phase::Trial(t) => (1, t),
        Phase::Student(r) => (2, r),
        Phase::Baseline(r) => (3, r),
    }
}

impl History {
    /// The curves the stored events tell, over every attempt of the job.
    pub fn from_log(log: &TrainingLog) -> Self {
        let mut history = History::default();
        for progress in log.steps.iter().filter_map(|v| Progress::deserialize(v).ok()) {
            history.progress(&progress);
        }
        for metrics in log.epochs.iter().filter_map(|v| EpochMetrics::deserialize(v).ok()) {
            history.epoch(&metrics);
        }
        history
    }

    pub fn observe(&mut self, event: &EngineEvent) {
        match event {
            EngineEvent::Progress(p) => self.progress(p),
            EngineEvent::Epoch(m) => self.epoch(m),
            EngineEvent::Log(_) | EngineEvent::Checkpoint(_) => {}
        }
    }

    /// A resumed attempt repeats the steps after its checkpoint: its samples replace the earlier
    /// ones. A sweep's trials are left to `sweep.svg`: dozens of them would bury the job's curves.
    pub fn progress(&mut self, p: &Progress) {
        if matches!(p.phase, Phase::Trial(_)) {
            return;
        }
        let steps = &mut self.phase(p.phase).steps;
        while steps.last().is_some_and(|s| s.step >= p.step) {
            steps.pop();
        }
        steps.push(StepPoint { step: p.step, loss: p.loss, soft: p.soft, hard: p.hard });
    }

    pub fn epoch(&mut self, m: &EpochMetrics) {
        if matches!(m.phase, Phase::Trial(_)) {
            return;
        }
        let epochs = &mut self.phase(m.phase).epochs;
        while epochs.last().is_some_and(|(epoch, _)| *epoch >= m.epoch) {
            epochs.pop();
        }
        epochs.push((m.epoch, m.val_accuracy));
    }

    fn phase(&mut self, phase: Phase) -> &mut PhaseCurves {
        let at = match self.phases.iter().position(|c| c.phase == phase) {
            Some(at) => at,
            None => {
                let at = self.phases.partition_point(|c| order(c.phase) < order(phase));
                self.phases.insert(at, PhaseCurves { phase, steps: Vec::new(), epochs: Vec::new() });
                at
            }
        };
        &mut self.phases[at]
    }
}

/// A line to draw: its name (the `data-series` attribute), style and points in data units.
struct Series {
    name: String,
    colour: &'static str,
    dash: Option<&'static str>,
    points: Vec<(f64, f64)>,
}

/// Total loss per phase; soft and hard parts for phases with a teacher term (without one, the
/// hard part is the total), of the first run only when seeds repeat, so the legend fits.
fn loss_series(history: &History) -> Vec<Series> {
    let mut series = Vec::new();
    for (i, curves) in history.phases.iter().enumerate().filter(|(_, c)| !c.steps.is_empty()) {
        let colour = COLOURS[i % COLOURS.len()];
        let phase = curves.phase.as_str();
        let line = |part: &str, dash, value: &dyn Fn(&StepPoint) -> Option<f64>| Series {
            name: format!("{phase} {part}"),
            colour,
            dash,
            points: downsample(
                &curves.steps.iter().filter_map(|s| Some((s.step as f64, value(s)?))).collect::<Vec<_>>(),
                MAX_POINTS,
            ),
        };
        series.push(line("total", None, &|s| Some(s.loss)));
        let first_run = !matches!(curves.phase, Phase::Student(r) if r > 1);
        if first_run && curves.steps.iter().any(|s| s.soft.is_some()) {
            series.push(line("soft", Some("6 3"), &|s| s.soft));
            series.push(line("hard", Some("2 2"), &|s| Some(s.hard)));
        }
    }
    series
}

fn accuracy_series(history: &History) -> Vec<Series> {
    let phases = history.phases.iter().enumerate().filter(|(_, c)| !c.epochs.is_empty());
    phases
        .map(|(i, curves)| Series {
            name: format!("{} accuracy", curves.phase.as_str()),
            colour: COLOURS[i % COLOURS.len()],
            dash: None,
            points: downsample(&curves.epochs.iter().map(|&(e, a)| (e as f64, a)).collect::<Vec<_>>(), MAX_POINTS),
        })
        .collect()
}

/// At most `max` (≥ 4) of `points`, for drawing: the first and the last, and from each of the
/// equal runs between them its lowest and its highest point, in order, so spikes survive.
pub fn downsample(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max {
        return points.to_vec();
    }
    let inner = &points[1..points.len() - 1];
    let runs = (max - 2) / 2;
    let mut kept = vec![points[0]];
    for run in 0..runs {
        let chunk = &inner[run * inner.len() / runs..(run + 1) * inner.len() / runs];
        let by_y = |a: &&(f64, f64), b: &&(f64, f64)| a.1.total_cmp(&b.1);
        let lowest = chunk.iter().enumerate().min_by(|a, b| by_y(&a.1, &b.1));
        let highest = chunk.iter().enumerate().max_by(|a, b| by_y(&a.1, &b.1));
        if let (Some((l, &low)), Some((h, &high))) = (lowest, highest) {
            match l.cmp(&h) {
                std::cmp::Ordering::Less => kept.extend([low, high]),
                std::cmp::Ordering::Greater => kept.extend([high, low]),
                std::cmp::Ordering::Equal => kept.push(low),
            }
        }
    }
    kept.push(points[points.len() - 1]);
    kept
}

/// `curves.svg` for the job called `title`.
pub fn render(title: &str, history: &History) -> String {
    let mut svg = Svg::new(WIDTH, HEIGHT);
    svg.title(WIDTH, &format!("{title}: training curves"));

    let losses = loss_series(history);
    let all = |series: &[Series], axis: fn(&(f64, f64)) -> f64| -> Vec<f64> {
        series.iter().flat_map(|s| s.points.iter().map(axis)).collect()
    };
    let (x, x_ticks) = Range { lo: 0.0, ..Range::of(all(&losses, |p| p.0), Range { lo: 0.0, hi: 1.0 }) }.nice_whole(6);
    let y_data = Range::of(all(&losses, |p| p.1), Range { lo: 0.0, hi: 1.0 });
    let (y, y_ticks) = Range { lo: y_data.lo.min(0.0), ..y_data }.nice(5);
    let loss = Panel { left: LEFT, top: LOSS_BOX.0, width: PANEL_WIDTH, height: LOSS_BOX.1, x, y };
    let label = |v: f64| svg::tick_label(v, &y_ticks);
    draw(&mut svg, ("loss", "training loss", "training step"), &loss, (&x_ticks, &y_ticks, &label), &losses);

    let accuracies = accuracy_series(history);
    let (x, x_ticks) = Range::of(all(&accuracies, |p| p.0), Range { lo: 1.0, hi: 2.0 }).nice_whole(6);
    let (y, y_ticks) = Range::of(all(&accuracies, |p| p.1), Range { lo: 0.0, hi: 1.0 }).nice(5);
    let y = Range { lo: y.lo.max(0.0), hi: y.hi.min(1.0) };
    let y_ticks: Vec<f64> = y_ticks.into_iter().filter(|t| (y.lo..=y.hi).contains(t)).collect();
    let percent: Vec<f64> = y_ticks.iter().map(|t| t * 100.0).collect();
    let label = |v: f64| format!("{}%", svg::tick_label(v * 100.0, &percent));
    let accuracy = Panel { left: LEFT, top: ACCURACY_BOX.0, width: PANEL_WIDTH, height: ACCURACY_BOX.1, x, y };
    let names = ("accuracy", "validation accuracy", "epoch");
    draw(&mut svg, names, &accuracy, (&x_ticks, &y_ticks, &label), &accuracies);
    svg.finish()
}

type Ticks<'a> = (&'a [f64], &'a [f64], &'a dyn Fn(f64) -> String);

/// One panel: its group (the mapping, the axes, a polyline per series, markers), then its
/// labels and legend outside the group.
fn draw(svg: &mut Svg, (name, y_label, x_label): (&str, &str, &str), panel: &Panel, ticks: Ticks, series: &[Series]) {
    panel.open(svg, name);
    panel.axes(svg, ticks.0, ticks.1, ticks.2);
    for s in series {
        let mut attrs = vec![
            ("data-series", s.name.clone()),
            ("points", panel.points(&s.points)),
            ("fill", "none".to_string()),
            ("stroke", s.colour.to_string()),
            ("stroke-width", "1.5".to_string()),
        ];
        attrs.extend(s.dash.map(|d| ("stroke-dasharray", d.to_string())));
        svg.element("polyline", &attrs);
        // A series of one point draws no line; a marker shows it.
        if s.points.len() == 1 {
            let (x, y) = s.points[0];
            let marker = [("cx", svg::num(panel.px(x))), ("cy", svg::num(panel.py(y))), ("r", "3".into())];
            svg.element("circle", &[&marker[..], &[("fill", s.colour.to_string())]].concat());
        }
    }
    if series.is_empty() {
        let middle = [("text-anchor", "middle".to_string()), ("fill", "#888".into())];
        svg.text(panel.left + panel.width / 2.0, panel.top + panel.height / 2.0, &middle, "no data");
    }
    svg.close("g");
    svg.text(panel.left, panel.top - 8.0, &[("font-weight", "bold".into())], y_label);
    let middle = [("text-anchor", "middle".to_string())];
    svg.text(panel.left + panel.width / 2.0, panel.top + panel.height + 34.0, &middle, x_label);
    let legend_x = panel.left + panel.width + 24.0;
    for (i, s) in series.iter().enumerate() {
        let y = panel.top + 8.0 + 18.0 * i as f64;
        let mut attrs = vec![
            ("x1", svg::num(legend_x)),
            ("y1", svg::num(y)),
            ("x2", svg::num(legend_x + 28.0)),
            ("y2", svg::num(y)),
            ("stroke", s.colour.to_string()),
            ("stroke-width", "2".to_string()),
        ];
        attrs.extend(s.dash.map(|d| ("stroke-dasharray", d.to_string())));
        svg.element("line", &attrs);
        svg.text(legend_x + 36.0, y + 4.0, &[], &s.name);
    }
}
