// Small DOM and formatting helpers shared by the views.

/** h('td', {class: 'num'}, '42'): an element with attributes (on* as listeners) and children. */
export function h(tag, attrs = {}, ...children) {
  const svg = ['svg', 'g', 'line', 'polyline', 'text', 'title'].includes(tag);
  const el = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** `f(x)`, or a dash where the value is missing. */
export const orDash = (x, f) => (x === null || x === undefined ? '—' : f(x));

/** Accuracy-like shares as the CLI prints them: 0.97550 → "97.55%". */
export const pct = (x, digits = 2) => (x === null || x === undefined ? '—' : `${(x * 100).toFixed(digits)}%`);
export const fixed = (x, digits = 4) => (x === null || x === undefined ? '—' : Number(x).toFixed(digits));
export const count = (n) => (n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US'));

export function bytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

export function seconds(s) {
  if (s === null || s === undefined) return '—';
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

/** RFC 3339 → local "2026-12-02 11:11:15"; the full value in the title. */
export function time(iso) {
  if (!iso) return h('span', { class: 'muted' }, '—');
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, '0');
  const text = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return h('time', { datetime: iso, title: iso }, text);
}

export const chip = (status) => h('span', { class: `chip ${status} job-status`, 'data-status': status }, status);

export const TERMINAL = ['succeeded', 'failed', 'cancelled'];

/** A progress bar for a job: the current phase's share of its steps. */
export function progressBar(job) {
  const p = job.progress;
  const done = job.status === 'succeeded' ? 1 : p && p.total_steps ? p.step / p.total_steps : 0;
  const fill = h('span');
  fill.style.width = `${Math.round(done * 100)}%`;
  const label = p ? `${p.phase} ${p.epoch}/${p.epochs} ep` : job.status === 'queued' ? 'waiting' : '';
  return h('div', { class: 'progress-cell' },
    h('div', { class: `bar ${job.status}`, role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100,
      'aria-valuenow': Math.round(done * 100), 'aria-label': `${job.name} progress` }, fill),
    h('small', {}, label));
}

/** A confirm step inside the page: `button` is replaced by a question with yes and no. */
export function confirmStep(button, question, yesLabel, onYes) {
  const box = h('span', { class: 'confirm', role: 'group', 'aria-label': question },
    h('span', {}, question),
    h('button', { type: 'button', class: 'danger solid confirm-yes', onclick: () => { box.replaceWith(button); onYes(); } }, yesLabel),
    h('button', { type: 'button', class: 'confirm-no', onclick: () => box.replaceWith(button) }, 'No'));
  button.replaceWith(box);
  box.querySelector('.confirm-yes').focus();
}
