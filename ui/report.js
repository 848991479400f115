// The report as a table (teacher / distilled / baseline), the summary line and the verdict.

import { bytes, count, fixed, h, orDash, pct, seconds } from './dom.js';

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

/** Row labels that mean something else for a causal LM (`task: language_model`). */
const LANGUAGE_MODEL_LABELS = {
  accuracy: 'next-token accuracy', loss: 'loss (nats/token)', latency_1: 'ms per generated token',
};

export function reportTable(report) {
  const models = MODELS.filter(([key]) => report[key]);
  const n = report.teacher && report.teacher.latency ? report.teacher.latency.batch_n : 'N';
  const language = report.task === 'language_model';
  return h('table', { class: 'narrow report-table', id: 'report-table' },
    h('thead', {}, h('tr', {}, h('th', {}, ''), models.map(([, label]) => h('th', { class: 'num' }, label)))),
    h('tbody', {}, ROWS.map(([key, label, value]) => h('tr', {},
      h('th', { scope: 'row' }, key === 'latency_n' ? `latency, batch ${n}` : (language && LANGUAGE_MODEL_LABELS[key]) || label),
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

/** A table with one row per seed of a job with repeats, the exported run marked; none for a single run. */
export function runsTable(report) {
  const repeats = report.repeats;
  if (!repeats) return [];
  const points = (x) => (x === null || x === undefined ? '—' : `${x >= 0 ? '+' : ''}${(x * 100).toFixed(2)}`);
  return [h('table', { class: 'narrow', id: 'runs-table' },
    h('thead', {}, h('tr', {}, ['run', 'seed', 'validation', 'distilled', 'baseline', 'gain (points)']
      .map((label, i) => h('th', { class: i ? 'num' : '' }, label)))),
    h('tbody', {}, repeats.runs.map((r) => h('tr', { 'data-run': r.run },
      h('th', { scope: 'row' }, r.run === repeats.exported_run ? `${r.run} (exported)` : `${r.run}`),
      [r.seed, pct(r.validation_accuracy), pct(r.student_accuracy), orDash(r.baseline_accuracy, pct), points(r.gain)]
        .map((cell) => h('td', { class: 'num' }, `${cell}`))))))];
}

/** A sweep's trials, one row each, judged on validation data; the best one marked. None without a sweep. */
export function trialsTable(report) {
  const sweep = report.sweep;
  if (!sweep) return [];
  const value = (v) => (typeof v === 'number' ? `${v}` : `${v.start}→${v.end}`);
  return [h('h3', {}, `Sweep: ${sweep.trials.length} trials on ${sweep.validation_samples} validation samples`),
    h('table', { class: 'narrow', id: 'trials-table' },
      h('thead', {}, h('tr', {}, ['trial', 'T', 'α', 'lr', 'student', 'parameters', 'epochs', 'validation', 'time']
        .map((label, i) => h('th', { class: i ? 'num' : '' }, label)))),
      h('tbody', {}, sweep.trials.map((t) => h('tr', { 'data-trial': t.trial },
        h('th', { scope: 'row' }, t.trial === sweep.best_trial ? `${t.trial} (best)` : `${t.trial}`),
        [value(t.temperature), value(t.alpha), t.lr.toExponential(2), t.student, count(t.student_parameters),
          t.stopped_early ? `${t.epochs} (cut)` : `${t.epochs}`, pct(t.validation_accuracy), seconds(t.wall_s)]
          .map((cell) => h('td', { class: 'num' }, `${cell}`))))))];
}

/** A causal LM's perplexities, KL, ROUGE-L and generation speed, and its continuations side by side. None for other tasks. */
export function languageModelSection(report) {
  const lm = report.language_model;
  if (!lm) return [];
  const models = MODELS.filter(([key]) => lm[key]);
  const rows = [
    ['perplexity', 'perplexity', (m) => m.perplexity.toFixed(2)],
    ['kl', 'KL to teacher (nats/token)', (m) => m.kl_to_teacher.toFixed(4)],
    ['rouge', 'ROUGE-L vs teacher', (m) => m.rouge_l.toFixed(3)],
    ['speed', 'generated tokens/s (batch 1)', (m) => m.generation_tokens_per_s.toFixed(1)],
  ];
  const scores = h('table', { class: 'narrow report-table', id: 'language-model-table' },
    h('thead', {}, h('tr', {}, h('th', {}, ''), models.map(([, label]) => h('th', { class: 'num' }, label)))),
    h('tbody', {}, rows.map(([key, label, value]) => h('tr', {},
      h('th', { scope: 'row' }, label),
      models.map(([model]) => h('td', { class: 'num', 'data-model': model, 'data-row': key }, value(lm[model])))))));
  const generated = lm.generations
    ? [h('p', {}, `trained on the teacher's continuations of ${count(lm.generations.prompts)} prompts (${count(lm.generations.tokens)} tokens, ${lm.generations.file})`)]
    : [];
  const samples = lm.samples.map((s) => h('div', { class: 'sample' },
    h('p', {}, h('strong', {}, 'prompt: '), s.prompt),
    h('p', {}, h('strong', {}, 'teacher: '), s.teacher),
    h('p', {}, h('strong', {}, 'student: '), s.student),
    s.baseline === null || s.baseline === undefined ? [] : h('p', {}, h('strong', {}, 'baseline: '), s.baseline)));
  return [h('h3', {}, `Language model: ${lm.mode}-level distillation, ${count(lm.held_out_tokens)} held-out tokens`),
    scores, ...generated, h('h3', {}, 'Continuations of held-out prompts'), ...samples];
}

/** What the service warns of: a tiny student, T = 1, a teacher with little to teach. */
export const warnings = (report) => (report.warnings || []).map((w) => h('p', { class: 'warning' }, `⚠ ${w}`));

export const verdict = (report) => h('p', { class: 'verdict', id: 'verdict' }, report.verdict);
