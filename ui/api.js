// The /v1 API over fetch. Same origin, so the session cookie rides along; errors become
// ApiError with the API's message, the field it names and the HTTP status.

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.field = error.field || null;
  }
}

/** Listeners for 401s: the app shows the login form. */
const unauthorized = new EventTarget();
export const onUnauthorized = (fn) => unauthorized.addEventListener('401', fn);

/** `api('/v1/jobs', {method: 'POST', json: spec})` → parsed body (null for 204). */
export async function api(path, { method = 'GET', json, body, quiet401 = false } = {}) {
  const init = { method, headers: { accept: 'application/json' }, credentials: 'same-origin' };
  if (json !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = typeof json === 'string' ? json : JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = null; }
  if (!response.ok) {
    if (response.status === 401 && !quiet401) unauthorized.dispatchEvent(new Event('401'));
    throw new ApiError(response.status, parsed);
  }
  return parsed;
}

/** Every event of a job after `after`, page by page. */
export async function eventsAfter(id, after) {
  const events = [];
  for (;;) {
    const page = await api(`/v1/jobs/${id}/events?after=${after}&limit=1000`);
    events.push(...page.data);
    if (!page.has_more || page.data.length === 0) return events;
    after = page.data[page.data.length - 1].seq;
  }
}
