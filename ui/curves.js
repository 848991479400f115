// Training curves of one job, per phase: the sampled steps (loss, soft, hard) and every epoch's
// validation metrics, built from progress and metrics events, then drawn as charts.

import { lineChart } from './chart.js';
import { h, pct } from './dom.js';

export class Curves {
  constructor() {
    this.phases = new Map();
  }

  phase(name) {
    if (!this.phases.has(name)) this.phases.set(name, { steps: [], epochs: [] });
    return this.phases.get(name);
  }

  /** A progress payload. A resumed job repeats steps after its checkpoint: later wins. */
  addStep(p) {
    const steps = this.phase(p.phase).steps;
    while (steps.length && steps[steps.length - 1].step >= p.step) steps.pop();
    steps.push(p);
  }

  addEpoch(m) {
    const epochs = this.phase(m.phase).epochs;
    while (epochs.length && epochs[epochs.length - 1].epoch >= m.epoch) epochs.pop();
    epochs.push(m);
  }

  /** From `GET /v1/jobs/{id}/metrics`. */
  static fromMetrics(metrics) {
    const curves = new Curves();
    metrics.steps.forEach((p) => curves.addStep(p));
    metrics.epochs.forEach((m) => curves.addEpoch(m));
    return curves;
  }
}

const KEYS = [['loss', 'total'], ['soft', 'soft'], ['hard', 'hard']];

/** Without a soft term the hard loss is the total: one line says it. */
const distilled = (steps) => steps.some((p) => p.soft !== null && p.soft !== undefined);

/** One chart per phase: total, soft and hard loss over its steps (log scale). */
export function lossCharts(curves) {
  return [...curves.phases].filter(([, c]) => c.steps.length).map(([phase, c]) => {
    const keys = distilled(c.steps) ? KEYS : KEYS.slice(0, 1);
    const series = keys.map(([key, name]) => ({ name, points: c.steps.map((p) => [p.step, p[key]]) }));
    const xMax = c.steps[c.steps.length - 1].total_steps;
    return h('figure', { class: 'card loss-chart', 'data-phase': phase },
      lineChart({ title: `${phase}: training loss`, series, xLabel: 'step', log: true, xMax }));
  });
}

/** Validation accuracy per epoch, one line per phase. */
export function accuracyChart(curves) {
  const series = [...curves.phases].filter(([, c]) => c.epochs.length)
    .map(([phase, c]) => ({ name: phase, points: c.epochs.map((m) => [m.epoch, m.val_accuracy]) }));
  const xMax = Math.max(0, ...[...curves.phases.values()].flatMap((c) => c.epochs.map((m) => m.epochs)));
  return h('figure', { class: 'card accuracy-chart' },
    lineChart({ title: 'validation accuracy', series, xLabel: 'epoch', format: (v) => pct(v, 0), xMax }));
}
