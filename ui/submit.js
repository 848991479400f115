// Submit a spec (pasted, uploaded or from an example); a refusal is shown next to the field the
// API names, with the line it is on. Also uploads data files for specs to name as file:<id>.

import { api } from './api.js';
import { h } from './dom.js';

/** The line (1-based) of a field path such as `distill.temperature` in the JSON text, if found. */
function lineOf(text, field) {
  let at = 0;
  for (const part of field.split('.')) {
    const key = part.replace(/\[\d+\]$/, '');
    if (/^\d+$/.test(key)) continue;
    const found = text.indexOf(`"${key}"`, at);
    if (found < 0) return null;
    at = found;
  }
  return text.slice(0, at).split('\n').length;
}

function showError(errors, textarea, e) {
  const field = e.field;
  // Malformed JSON names the `body`; its message says where (serde: "at line 3 column 5").
  const parsed = field === 'body' ? /line (\d+)/.exec(e.message) : null;
  const line = parsed ? Number(parsed[1]) : field ? lineOf(textarea.value, field) : null;
  const where = line ? h('button', { type: 'button', class: 'link', onclick: () => selectLine(textarea, line) }, `line ${line}`) : null;
  errors.replaceChildren(h('li', { class: 'field-error', 'data-field': field || '', role: 'alert' },
    field ? h('code', {}, field) : null, e.message, where ? ' · ' : null, where));
  if (line) selectLine(textarea, line);
}

function selectLine(textarea, line) {
  const lines = textarea.value.split('\n');
  const start = lines.slice(0, line - 1).join('\n').length + (line > 1 ? 1 : 0);
  textarea.focus();
  textarea.setSelectionRange(start, start + lines[line - 1].length);
}

async function submit(textarea, errors) {
  errors.replaceChildren();
  try {
    const job = await api('/v1/jobs', { method: 'POST', json: textarea.value });
    location.hash = `#/jobs/${job.id}`;
  } catch (e) {
    showError(errors, textarea, e);
  }
}

function examplePicker(textarea) {
  const select = h('select', { id: 'example' }, h('option', { value: '' }, 'start from an example…'));
  api('/ui/examples.json').then((list) => {
    for (const e of list) select.append(h('option', { value: e.text }, e.name));
  });
  select.addEventListener('change', () => { if (select.value) textarea.value = select.value; });
  return h('span', {}, h('label', { for: 'example' }, 'Example'), select);
}

function specFile(textarea) {
  const input = h('input', { type: 'file', id: 'spec-file', accept: '.json,application/json' });
  input.addEventListener('change', async () => { if (input.files[0]) textarea.value = await input.files[0].text(); });
  return h('span', {}, h('label', { for: 'spec-file' }, 'or open a spec file'), input);
}

function uploadCard() {
  const file = h('input', { type: 'file', id: 'data-file' });
  const purpose = h('select', { id: 'data-purpose' }, h('option', { value: 'dataset' }, 'dataset'), h('option', { value: 'model' }, 'model'));
  const result = h('p', { id: 'upload-result', 'aria-live': 'polite' });
  const send = h('button', { type: 'button', id: 'upload' }, 'Upload');
  send.addEventListener('click', async () => {
    if (!file.files[0]) { result.textContent = 'Choose a file first.'; return; }
    const form = new FormData();
    form.append('purpose', purpose.value);
    form.append('file', file.files[0]);
    result.textContent = 'Uploading…';
    try {
      const up = await api('/v1/files', { method: 'POST', body: form });
      result.replaceChildren('Name it in a spec as ', h('code', { class: 'file-ref' }, `file:${up.id}`), ` (${up.filename}).`);
    } catch (e) {
      result.replaceChildren(h('span', { class: 'error' }, e.message));
    }
  });
  return h('aside', { class: 'card uploaded' }, h('h2', {}, 'Upload a data file'),
    h('p', { class: 'muted' }, 'CSV, JSONL, IDX, safetensors, or a .tar/.zip of a model folder.'),
    h('p', {}, file), h('p', {}, h('label', { for: 'data-purpose' }, 'Purpose'), purpose), send, result);
}

export function submitView(main) {
  const textarea = h('textarea', { id: 'spec', spellcheck: 'false', 'aria-label': 'Job spec (JSON)' });
  const errors = h('ul', { class: 'field-errors', id: 'spec-errors' });
  const go = h('button', { type: 'button', class: 'primary', id: 'submit-spec' }, 'Submit job');
  go.addEventListener('click', () => submit(textarea, errors));
  main.replaceChildren(h('h1', {}, 'Submit a job'),
    h('div', { class: 'submit-layout' },
      h('section', {}, h('div', { class: 'toolbar' }, examplePicker(textarea), specFile(textarea)),
        textarea, errors, h('div', { class: 'toolbar' }, go)),
      uploadCard()));
  return () => {};
}
