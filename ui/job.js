// One job: live curves from its event stream, progress, the event log, the report, artifacts,
// cancel and delete. Events are applied strictly in seq order, each once: the stored page first,
// then the SSE stream from the last seq (EventSource resends Last-Event-ID when it reconnects).

import { api, eventsAfter } from './api.js';
import { accuracyChart, Curves, lossCharts } from './curves.js';
import { bytes, chip, confirmStep, h, pct, progressBar, TERMINAL, time } from './dom.js';
import { languageModelSection, reportTable, runsTable, summaryLine, trialsTable, verdict, warnings } from './report.js';

const TYPES = ['status', 'progress', 'metrics', 'checkpoint', 'log', 'report'];
const CHART_DELAY_MS = 250;

function statusLine(p) {
  const attempt = p.attempt ? ` (attempt ${p.attempt})` : '';
  const why = [p.reason, p.error].filter(Boolean).map((text) => `: ${text}`).join('');
  return `status → ${p.status}${attempt}${why}`;
}

/** One line of the event log; progress events are the charts' and are left out. */
function describe(event) {
  const p = event.payload;
  switch (event.type) {
    case 'status': return statusLine(p);
    case 'metrics': return `${p.phase} epoch ${p.epoch}/${p.epochs}: validation accuracy ${pct(p.val_accuracy)}, loss ${p.val_loss.toFixed(4)}`;
    case 'checkpoint': return `${p.phase} checkpoint at epoch ${p.epoch}, step ${p.step}`;
    case 'log': return p.message;
    case 'report': return 'report ready';
    default: return null;
  }
}

export function jobView(main, id) {
  const view = new JobView(main, id);
  view.start();
  return () => view.stop();
}

class JobView {
  constructor(main, id) {
    Object.assign(this, { main, id, curves: new Curves(), lastSeq: 0, chain: Promise.resolve(), source: null, stopped: false });
    this.el = {
      chip: h('span'), actions: h('div', { class: 'toolbar' }), facts: h('div', { class: 'facts' }),
      notice: h('div', { class: 'notice', role: 'alert', hidden: true }), verdict: h('div'), report: h('section', { id: 'report' }),
      charts: h('div', { class: 'grid', id: 'charts' }), artifacts: h('section', { id: 'artifacts' }),
      log: h('tbody', { id: 'event-log' }),
    };
  }

  async start() {
    try {
      this.job = await api(`/v1/jobs/${this.id}`);
    } catch (e) {
      this.main.replaceChildren(h('p', { class: 'notice' }, `Job ${this.id}: ${e.message}`));
      return;
    }
    this.layout();
    (await eventsAfter(this.id, 0)).forEach((e) => this.apply(e));
    if (this.stopped) return; // left the page while its log loaded
    this.drawCharts();
    if (TERMINAL.includes(this.job.status)) this.finish();
    else this.follow();
  }

  stop() {
    this.stopped = true;
    if (this.source) this.source.close();
    clearTimeout(this.chartTimer);
  }

  layout() {
    const j = this.job;
    this.main.replaceChildren(
      h('div', { class: 'title-row' },
        h('h1', {}, j.name, ' ', this.el.chip), h('span', { class: 'muted mono' }, j.id), h('span', { class: 'spacer' }), this.el.actions),
      this.el.notice, this.el.facts, this.el.verdict,
      h('h2', {}, 'Training curves'), this.el.charts,
      this.el.report, this.el.artifacts,
      h('h2', {}, 'Event log'), h('div', { class: 'log' }, h('table', {}, this.el.log)),
      h('details', {}, h('summary', {}, 'Spec'), h('pre', {}, JSON.stringify(j.spec, null, 2))));
    this.showStatus();
  }

  showStatus() {
    this.el.chip.replaceChildren(chip(this.job.status));
    this.showActions();
    this.showFacts();
  }

  /** Delete once finished, else cancel; rebuilt only when that changes, so an open confirm stays. */
  showActions() {
    const j = this.job;
    const kind = TERMINAL.includes(j.status) ? 'delete' : j.cancel_requested ? 'cancelling' : 'cancel';
    if (kind === this.actionKind) return;
    this.actionKind = kind;
    if (kind === 'cancelling') {
      this.el.actions.replaceChildren(h('button', { type: 'button', disabled: true }, 'Cancelling…'));
      return;
    }
    const [label, question, yes] = kind === 'cancel'
      ? ['Cancel job', 'Cancel this job?', 'Yes, cancel'] : ['Delete job', 'Delete this job and its files?', 'Yes, delete'];
    const button = h('button', { type: 'button', class: 'danger', id: `${kind}-job` }, label);
    button.addEventListener('click', () => confirmStep(button, question, yes, () => this.act(kind)));
    this.el.actions.replaceChildren(button);
  }

  showFacts() {
    const j = this.job;
    const fact = (label, value) => h('div', {}, h('span', {}, label), h('span', {}, value));
    const p = j.progress;
    const facts = [fact('owner', j.owner || '—'), fact('created', time(j.created_at)), fact('started', time(j.started_at)),
      fact('finished', time(j.finished_at)), fact('progress', progressBar(j))];
    if (p) facts.push(fact('step', `${p.step} / ${p.total_steps}`));
    if (p && p.soft !== null && p.soft !== undefined) facts.push(fact('α', p.alpha.toFixed(3)), fact('T', p.temperature.toFixed(2)));
    if (j.error) facts.push(fact('error', h('span', { class: 'error' }, j.error)));
    this.el.facts.replaceChildren(...facts);
  }

  async act(what) {
    try {
      if (what === 'cancel') {
        await api(`/v1/jobs/${this.id}/cancel`, { method: 'POST' });
        // The status itself comes from the stream, which may already be ahead of this answer.
        this.job.cancel_requested = true;
        this.showStatus();
      } else {
        await api(`/v1/jobs/${this.id}`, { method: 'DELETE' });
        location.hash = '#/jobs';
      }
    } catch (e) {
      this.el.notice.textContent = e.message;
      this.el.notice.hidden = false;
    }
  }

  follow() {
    const source = new EventSource(`/v1/jobs/${this.id}/events?after=${this.lastSeq}`);
    this.source = source;
    for (const type of TYPES) source.addEventListener(type, (m) => this.receive(JSON.parse(m.data)));
    // A refused stream (401, server gone) is not retried by the browser: start again later.
    source.addEventListener('error', () => {
      if (source.readyState !== EventSource.CLOSED || this.stopped) return;
      setTimeout(() => { if (!this.stopped && !TERMINAL.includes(this.job.status)) this.follow(); }, 3000);
    });
  }

  /** In order, one at a time: a gap is filled from the stored log before going on. */
  receive(event) {
    this.chain = this.chain.then(async () => {
      if (this.stopped || event.seq <= this.lastSeq) return;
      if (event.seq > this.lastSeq + 1) (await eventsAfter(this.id, this.lastSeq)).forEach((e) => this.apply(e));
      this.apply(event);
      this.scheduleCharts();
      if (TERMINAL.includes(this.job.status)) this.finish();
    }).catch(() => {}); // a failed catch-up is retried at the next event's gap
  }

  apply(event) {
    if (event.seq <= this.lastSeq) return;
    this.lastSeq = event.seq;
    const p = event.payload;
    if (event.type === 'progress') {
      this.curves.addStep(p);
      this.job.progress = p; // shown with the charts, at most every CHART_DELAY_MS
      return;
    }
    if (event.type === 'metrics') this.curves.addEpoch(p);
    if (event.type === 'status') {
      this.job.status = p.status;
      this.showStatus();
    }
    this.appendLog(h('tr', { 'data-seq': event.seq, 'data-type': event.type },
      h('td', { class: 'num muted' }, event.seq), h('td', {}, time(event.created_at)),
      h('td', {}, event.type), h('td', {}, describe(event))));
  }

  /** The log follows new lines while it is scrolled to its end (where it starts). */
  appendLog(row) {
    const box = this.el.log.closest('.log');
    const following = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    this.el.log.append(row);
    if (following) box.scrollTop = box.scrollHeight;
  }

  scheduleCharts() {
    if (this.chartTimer) return;
    this.chartTimer = setTimeout(() => { this.chartTimer = null; this.drawCharts(); }, CHART_DELAY_MS);
  }

  drawCharts() {
    this.showFacts();
    this.el.charts.replaceChildren(accuracyChart(this.curves), ...lossCharts(this.curves));
  }

  /** The job has ended: its final record, the report and the files. */
  async finish() {
    if (this.source) this.source.close();
    this.source = null;
    this.job = await api(`/v1/jobs/${this.id}`);
    this.showStatus();
    this.drawCharts();
    if (this.job.status === 'succeeded') {
      const report = await api(`/v1/jobs/${this.id}/report`);
      this.el.verdict.replaceChildren(verdict(report));
      this.el.report.replaceChildren(h('h2', {}, 'Report'), reportTable(report), summaryLine(report), ...runsTable(report),
        ...trialsTable(report), ...languageModelSection(report), ...warnings(report));
    }
    const artifacts = await api(`/v1/jobs/${this.id}/artifacts`);
    this.el.artifacts.replaceChildren(h('h2', {}, 'Artifacts'), artifactTable(artifacts.data));
  }
}

function artifactTable(files) {
  if (!files.length) return h('p', { class: 'muted' }, 'No files.');
  return h('table', { class: 'narrow', id: 'artifact-table' },
    h('thead', {}, h('tr', {}, h('th', {}, 'file'), h('th', { class: 'num' }, 'size'), h('th', {}, 'sha256'))),
    h('tbody', {}, files.map((f) => h('tr', {},
      h('td', {}, h('a', { href: f.url, download: f.name }, f.name)),
      h('td', { class: 'num' }, bytes(f.size_bytes)),
      h('td', { class: 'mono muted', title: f.sha256 }, `${f.sha256.slice(0, 12)}…`)))));
}
