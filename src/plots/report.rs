//! `report.svg`: the report's table (the rows `distillery run` prints), bars of accuracy, size
//! and latency for the teacher, the distilled student and the baseline, and the verdict.

use super::svg::{self, Panel, Range, Svg};
use crate::engine::job::report::{ModelReport, Report};
use crate::engine::job::table::table_columns;

const WIDTH: f64 = 960.0;
const LEFT: f64 = 24.0;
const LABEL_WIDTH: f64 = 190.0;
/// The narrowest a model's column of the table may be.
const COLUMN_WIDTH: f64 = 150.0;
const ROW: f64 = 20.0;
const CHART_HEIGHT: f64 = 220.0;
/// Characters per line of the verdict.
const VERDICT_WIDTH: usize = 130;
const COLOURS: [&str; 3] = ["#1f77b4", "#d62728", "#2ca02c"];

/// A model drawn in the bars: its name and its report.
type Bar<'a> = (&'a str, &'a ModelReport);

/// How a group of bars measures a model (first) against the teacher (second).
type Measure = fn(&ModelReport, &ModelReport) -> f64;

/// Each group of bars: its key (the bars' `data-metric`), its label and its measure.
fn metrics(accuracy_label: &str, batch_n: usize) -> [(&'static str, String, Measure); 4] {
    [
        ("accuracy", accuracy_label.to_string(), |m, _| m.accuracy),
        ("size", "size on disk".into(), |m, t| m.size_bytes as f64 / t.size_bytes as f64),
        ("latency_batch_1", "latency, batch 1".into(), |m, t| m.latency.batch_1_ms / t.latency.batch_1_ms),
        ("latency_batch_n", format!("latency, batch {batch_n}"), |m, t| m.latency.batch_n_ms / t.latency.batch_n_ms),
    ]
}

/// `report.svg` for the job called `title`.
pub fn render(title: &str, report: &Report) -> String {
    let (labels, columns) = table_columns(report);
    // Wide enough for an ensemble's columns too.
    let width = WIDTH.max(2.0 * LEFT + LABEL_WIDTH + COLUMN_WIDTH * columns.len() as f64);
    let column_width = ((width - 2.0 * LEFT - LABEL_WIDTH) / columns.len() as f64).min(170.0);
    let table_height = ROW * (labels.len() + 1) as f64;
    let verdict = svg::wrap(&report.verdict, VERDICT_WIDTH);
    let chart_top = 60.0 + table_height + 50.0;
    let verdict_top = chart_top + CHART_HEIGHT + 70.0;
    let height = verdict_top + 18.0 * verdict.len() as f64 + 20.0;

    let mut svg = Svg::new(width, height);
    svg.title(width, &format!("{title}: distillation report"));

    let end = [("text-anchor", "end".to_string())];
    let header = [("text-anchor", "end".to_string()), ("font-weight", "bold".into())];
    for (i, (name, cells)) in columns.iter().enumerate() {
        let x = LEFT + LABEL_WIDTH + column_width * (i + 1) as f64;
        svg.text(x, 60.0, &header, name);
        for (row, cell) in cells.iter().enumerate() {
            svg.text(x, 60.0 + ROW * (row + 1) as f64, &end, cell);
        }
    }
    for (row, label) in labels.iter().enumerate() {
        svg.text(LEFT, 60.0 + ROW * (row + 1) as f64, &[], label);
    }

    let teacher_name = if report.teachers.is_some() { "ensemble" } else { "teacher" };
    let mut models: Vec<Bar> = vec![(teacher_name, &report.teacher), ("student (distilled)", &report.student)];
    models.extend(report.baseline.as_ref().map(|b| ("student (baseline)", b)));
    bars(&mut svg, chart_top, &labels[2], &models, &report.teacher);

    let lines = verdict.iter().enumerate();
    for (i, line) in lines {
        svg.text(LEFT, verdict_top + 18.0 * i as f64, &[("class", "verdict".into())], line);
    }
    svg.finish()
}

/// The bar chart: a group per metric, a bar per model, each bar carrying its value.
fn bars(svg: &mut Svg, top: f64, accuracy_label: &str, models: &[Bar], teacher: &ModelReport) {
    let metrics = metrics(accuracy_label, teacher.latency.batch_n);
    let values: Vec<Vec<f64>> =
        metrics.iter().map(|(_, _, measure)| models.iter().map(|(_, m)| measure(m, teacher)).collect()).collect();
    let (y, ticks) = Range { lo: 0.0, hi: values.iter().flatten().copied().fold(1.0, f64::max) }.nice(5);
    let y = Range { lo: 0.0, hi: y.hi };
    let panel = Panel { left: LEFT + 50.0, top, width: 640.0, height: CHART_HEIGHT, x: Range { lo: 0.0, hi: 1.0 }, y };
    let percent: Vec<f64> = ticks.iter().map(|t| t * 100.0).collect();
    let label = |v: f64| format!("{}%", svg::tick_label(v * 100.0, &percent));
    panel.open(svg, "bars");
    panel.axes(svg, &[], &ticks, &label);
    let group = panel.width / metrics.len() as f64;
    let bar = group * 0.8 / models.len() as f64;
    let middle = [("text-anchor", "middle".to_string())];
    let small = [("text-anchor", "middle".to_string()), ("font-size", "10".into())];
    for (g, ((key, label, _), values)) in metrics.iter().zip(&values).enumerate() {
        svg.text(panel.left + group * (g as f64 + 0.5), top + CHART_HEIGHT + 16.0, &middle, label);
        for (i, (&value, (model, _))) in values.iter().zip(models).enumerate().filter(|(_, (v, _))| v.is_finite()) {
            let x = panel.left + group * (g as f64 + 0.1) + bar * i as f64;
            let (bar_top, bar_bottom) = (panel.py(value.max(0.0)), panel.py(0.0));
            svg.element(
                "rect",
                &[
                    ("data-model", model.to_string()),
                    ("data-metric", key.to_string()),
                    ("data-value", value.to_string()),
                    ("x", svg::num(x)),
                    ("y", svg::num(bar_top)),
                    ("width", svg::num(bar * 0.9)),
                    ("height", svg::num(bar_bottom - bar_top)),
                    ("fill", COLOURS[i % COLOURS.len()].into()),
                ],
            );
            svg.text(x + bar * 0.45, bar_top - 3.0, &small, &format!("{:.0}%", value * 100.0));
        }
    }
    svg.close("g");
    let note = "size and latency as a share of the teacher's (the teacher is 100%); accuracy as measured";
    svg.text(panel.left, top - 22.0, &[("fill", "#555".into())], note);
    for (i, (model, _)) in models.iter().enumerate() {
        let y = top + 10.0 + 20.0 * i as f64;
        let x = panel.left + panel.width + 24.0;
        let swatch =
            [("x", svg::num(x)), ("y", svg::num(y - 9.0)), ("width", "12".to_string()), ("height", "12".to_string())];
        svg.element("rect", &[&swatch[..], &[("fill", COLOURS[i % COLOURS.len()].to_string())]].concat());
        svg.text(x + 18.0, y + 1.0, &[], model);
    }
}
