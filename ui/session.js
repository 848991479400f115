// Who is looking: GET /v1/session. With keys on and no session, a form exchanges an API key for
// an HttpOnly cookie (POST /v1/session), which then carries every request and the EventSource.

import { api } from './api.js';
import { h } from './dom.js';

/** {keys_required, user}; a server without sessions is open to whoever reaches it. */
export async function currentSession() {
  try {
    return await api('/v1/session', { quiet401: true });
  } catch (e) {
    if (e.status === 404) return { keys_required: false, user: null };
    throw e;
  }
}

export function loginView(main, onLogin) {
  const key = h('input', { type: 'password', id: 'api-key', autocomplete: 'current-password', placeholder: 'dk_…' });
  const message = h('p', { class: 'error', id: 'login-error', role: 'alert' });
  const form = h('form', { class: 'card login', id: 'login-form' },
    h('h1', {}, 'Log in'),
    h('p', { class: 'muted' }, 'This service needs an API key. Ask your administrator for one.'),
    h('label', { for: 'api-key' }, 'API key'), key,
    h('button', { type: 'submit', class: 'primary', id: 'login' }, 'Log in'), message);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    message.textContent = '';
    try {
      onLogin(await api('/v1/session', { method: 'POST', json: { key: key.value }, quiet401: true }));
    } catch (e) {
      message.textContent = e.message;
    }
  });
  main.replaceChildren(form);
  key.focus();
  return () => {};
}

export const logout = () => api('/v1/session', { method: 'DELETE', quiet401: true });
