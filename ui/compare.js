// Compare finished jobs: pick two or more, see their student curves overlaid and their reports
// side by side (how one chooses T and α). The choice lives in the hash: #/compare/<id>,<id>.

import { api } from './api.js';
import { lineChart } from './chart.js';
import { Curves } from './curves.js';
import { h, orDash, pct, time } from './dom.js';

function picker(jobs, chosen) {
  const boxes = jobs.map((j) => h('input', { type: 'checkbox', id: `pick-${j.id}`, value: j.id, checked: chosen.includes(j.id) }));
  const go = h('button', { type: 'button', class: 'primary', id: 'compare-go' }, 'Compare');
  go.addEventListener('click', () => {
    const ids = boxes.filter((b) => b.checked).map((b) => b.value);
    location.hash = `#/compare/${ids.join(',')}`;
  });
  return h('div', { class: 'card' },
    h('p', { class: 'muted' }, 'Pick two or more finished jobs.'),
    h('div', { class: 'picker' }, h('table', { class: 'narrow' }, h('tbody', {}, jobs.map((j, i) => h('tr', {},
      h('td', { class: 'check' }, boxes[i]), h('td', {}, h('label', { for: `pick-${j.id}` }, j.name)),
      h('td', { class: 'num' }, j.result ? pct(j.result.student_accuracy) : '—'), h('td', {}, time(j.finished_at))))))),
    h('div', { class: 'toolbar' }, go));
}

/** The label of a job in legends and headers: its name, made unique by its id's tail. */
const label = (job) => `${job.name} ·${job.id.slice(-4)}`;

function overlays(entries) {
  // A job of repeated seeds names its runs student_1 … student_k: show the exported one.
  const phase = (e) => (e.report.repeats ? `student_${e.report.repeats.exported_run}` : 'student');
  const student = (e) => e.curves.phases.get(phase(e)) || { steps: [], epochs: [] };
  const loss = entries.map((e) => ({ name: label(e.job), points: student(e).steps.map((p) => [p.step, p.loss]) }));
  const acc = entries.map((e) => ({ name: label(e.job), points: student(e).epochs.map((m) => [m.epoch, m.val_accuracy]) }));
  return h('div', { class: 'grid wide', id: 'compare-charts' },
    h('figure', { class: 'card' }, lineChart({ title: 'student: training loss', series: loss, xLabel: 'step', log: true })),
    h('figure', { class: 'card' }, lineChart({ title: 'student: validation accuracy', series: acc, xLabel: 'epoch', format: (v) => pct(v, 0) })));
}

const ROWS = [
  ['temperature T', (r) => JSON.stringify(r.distillation.temperature)],
  ['α', (r) => JSON.stringify(r.distillation.alpha)],
  ['soft loss', (r) => r.distillation.loss],
  ['teacher accuracy', (r) => pct(r.teacher.accuracy)],
  ['distilled accuracy', (r) => pct(r.student.accuracy)],
  ['baseline accuracy', (r) => orDash(r.baseline, (b) => pct(b.accuracy))],
  ['gain (points)', (r) => orDash(r.gain, (g) => (g * 100).toFixed(2))],
  ['p (McNemar)', (r) => orDash(r.gain_test, (t) => t.p_value.toPrecision(2))],
  ['retention', (r) => pct(r.retention, 1)],
  ['size ratio', (r) => pct(r.size_ratio, 1)],
  ['speed-up, batch 1', (r) => `${r.speedup.batch_1.toFixed(2)}×`],
  ['wall time', (r) => `${r.wall_time_s.toFixed(1)} s`],
];

function sideBySide(entries) {
  return h('table', { class: 'narrow', id: 'compare-table' },
    h('thead', {}, h('tr', {}, h('th', {}, ''), entries.map((e) => h('th', { class: 'num' }, h('a', { href: `#/jobs/${e.job.id}` }, label(e.job)))))),
    h('tbody', {}, ROWS.map(([name, f]) => h('tr', {}, h('th', { scope: 'row' }, name),
      entries.map((e) => h('td', { class: 'num' }, f(e.report)))))));
}

async function load(id) {
  const [job, metrics, report] = await Promise.all([
    api(`/v1/jobs/${id}`), api(`/v1/jobs/${id}/metrics`), api(`/v1/jobs/${id}/report`)]);
  return { job, curves: Curves.fromMetrics(metrics), report };
}

export function compareView(main, param) {
  const chosen = param ? param.split(',').filter(Boolean) : [];
  const body = h('div');
  main.replaceChildren(h('h1', {}, 'Compare'), body);
  (async () => {
    try {
      const jobs = (await api('/v1/jobs?status=succeeded&limit=100')).data;
      body.replaceChildren(picker(jobs, chosen));
      if (chosen.length === 1) body.append(h('p', { class: 'muted' }, 'Pick at least one more job to compare.'));
      if (chosen.length < 2) return;
      const entries = await Promise.all(chosen.map(load));
      body.append(h('h2', {}, 'Curves'), overlays(entries), h('h2', {}, 'Reports'), sideBySide(entries),
        ...entries.map((e) => h('p', { class: 'verdict' }, h('strong', {}, `${label(e.job)}: `), e.report.verdict)));
    } catch (e) {
      body.append(h('p', { class: 'notice' }, e.message));
    }
  })();
  return () => {};
}
