// The report as a table (teacher / distilled / baseline), the summary line and the verdict.

import { bytes, count, fixed, h, pct, seconds } from './dom.js';

const MODELS = [['teacher', 'teacher'], ['student', 'student (distilled)'], ['baseline', 'student (baseline)']];

const ms = (x) => (x === null || x === undefined ? '—' : `${x.toFixed(4)} ms`);

/** [row key, label, value of one model's entry]. */
const ROWS = [
  ['parameters', 'parameters', (m) => count(m.parameters)],
  ['size', 'size on disk', (m) => bytes(m.size_bytes)],
  ['accuracy', 'accuracy', (m) => pct(m.accuracy)],
  ['loss', 'loss', (m) => fixed(m.loss)],
  ['agreement', 'agreement with teacher', (m) => pct(m.agreement)],
  ['latency_1', 'latency, batch 1', (m) => ms(m.latency && m.latency.batch_1_ms)],
  ['latency_n', 'latency, batch N', (m) => ms(m.latency && m.latency.batch_n_ms)],
  ['training', 'training time', (m) => seconds(m.training && m.training.wall_s)],
];

export function reportTable(report) {
  const models = MODELS.filter(([key]) => report[key]);
  const n = report.teacher && report.teacher.latency ? report.teacher.latency.batch_n : 'N';
  return h('table', { class: 'narrow report-table', id: 'report-table' },
    h('thead', {}, h('tr', {}, h('th', {}, ''), models.map(([, label]) => h('th', { class: 'num' }, label)))),
    h('tbody', {}, ROWS.map(([key, label, value]) => h('tr', {},
      h('th', { scope: 'row' }, key === 'latency_n' ? `latency, batch ${n}` : label),
      models.map(([model]) => h('td', { class: 'num', 'data-model': model, 'data-row': key }, value(report[model])))))));
}

/** retention, size ratio, speed-up, gain, as the CLI's line under its table. */
export function summaryLine(report) {
  const parts = [`retention ${pct(report.retention, 1)}`, `size ratio ${pct(report.size_ratio, 1)}`];
  if (report.speedup) {
    const n = report.teacher.latency ? report.teacher.latency.batch_n : 'N';
    parts.push(`speed-up ${report.speedup.batch_1.toFixed(2)}× (batch 1), ${report.speedup.batch_n.toFixed(2)}× (batch ${n})`);
  }
  if (report.gain !== null && report.gain !== undefined) {
    const points = report.gain * 100;
    parts.push(`gain over baseline ${points >= 0 ? '+' : ''}${points.toFixed(2)} points`);
  }
  parts.push(`wall time ${seconds(report.wall_time_s)}`);
  return h('p', { class: 'summary' }, parts.join('  ·  '));
}

export const verdict = (report) => h('p', { class: 'verdict', id: 'verdict' }, report.verdict);
