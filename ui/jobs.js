// The job list: filter by status, page as the API pages (?limit=&after=), refreshed every 2 s.

import { api } from './api.js';
import { chip, h, progressBar, time } from './dom.js';

const STATUSES = ['', 'queued', 'running', 'succeeded', 'failed', 'cancelled'];
const PAGE = 20;
const POLL_MS = 2000;

/** Kept across visits so the back button returns to the same filter. */
const state = { status: '', cursors: [] };

function row(job) {
  return h('tr', { 'data-id': job.id },
    h('td', {}, h('a', { href: `#/jobs/${job.id}` }, job.name)),
    h('td', {}, chip(job.status)),
    h('td', {}, job.owner || h('span', { class: 'muted' }, '—')),
    h('td', {}, time(job.created_at)),
    h('td', {}, time(job.started_at)),
    h('td', {}, time(job.finished_at)),
    h('td', {}, progressBar(job)));
}

function table() {
  const head = ['name', 'status', 'owner', 'created', 'started', 'finished', 'progress'];
  return h('table', { id: 'jobs-table' },
    h('thead', {}, h('tr', {}, head.map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}));
}

function filter(reload) {
  const select = h('select', { id: 'status-filter', onchange: () => { state.status = select.value; state.cursors = []; reload(); } },
    STATUSES.map((s) => h('option', { value: s, selected: s === state.status }, s || 'all')));
  return h('span', {}, h('label', { for: 'status-filter' }, 'Status'), select);
}

export function jobsView(main) {
  const tbody = h('tbody');
  const list = table();
  list.querySelector('tbody').replaceWith(tbody);
  const newer = h('button', { type: 'button', id: 'newer', onclick: () => { state.cursors.pop(); load(); } }, '← Newer');
  const older = h('button', { type: 'button', id: 'older' }, 'Older →');
  const message = h('p', { class: 'muted' });
  let page = [];
  older.addEventListener('click', () => { state.cursors.push(page[page.length - 1].id); load(); });
  main.replaceChildren(h('h1', {}, 'Jobs'),
    h('div', { class: 'toolbar' }, filter(() => load()), h('span', { class: 'spacer' }), newer, older), list, message);

  async function load() {
    const params = new URLSearchParams({ limit: PAGE });
    if (state.status) params.set('status', state.status);
    if (state.cursors.length) params.set('after', state.cursors[state.cursors.length - 1]);
    try {
      const result = await api(`/v1/jobs?${params}`);
      page = result.data;
      tbody.replaceChildren(...page.map(row));
      message.textContent = page.length ? '' : 'No jobs here yet. Submit one from the Submit page.';
      newer.disabled = state.cursors.length === 0;
      older.disabled = !result.has_more;
    } catch (e) {
      message.textContent = `Could not load the jobs: ${e.message}`;
    }
  }
  load();
  const timer = setInterval(load, POLL_MS);
  return () => clearInterval(timer);
}
