// The dashboard's entry: hash routing between the views, and the session in the header.

import { onUnauthorized } from './api.js';
import { compareView } from './compare.js';
import { jobView } from './job.js';
import { jobsView } from './jobs.js';
import { currentSession, loginView, logout } from './session.js';
import { submitView } from './submit.js';

const main = document.getElementById('main');
let cleanup = () => {};
let session = { keys_required: false, user: null };

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** '#/jobs/<id>' → jobs and '<id>'; '#/compare/<id>,<id>' → compare and the ids. Anything that
 * is not a job id is dropped: ids go into API paths, where `../keys` would be another route. */
function route() {
  const [view = 'jobs', param = ''] = location.hash.replace(/^#\/?/, '').split('/');
  const ids = decodeURIComponent(param).split(',').filter((id) => UUID.test(id));
  return { view: view || 'jobs', param: ids.join(',') };
}

function show(mount) {
  cleanup();
  cleanup = mount() || (() => {});
}

function render() {
  if (session.keys_required && !session.user) {
    show(() => loginView(main, signedIn));
    return;
  }
  const { view, param } = route();
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.dataset.view === view);
    if (a.dataset.view === view) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (view === 'jobs' && param) show(() => jobView(main, param));
  else if (view === 'compare') show(() => compareView(main, param));
  else if (view === 'submit') show(() => submitView(main));
  else show(() => jobsView(main));
}

function showUser() {
  const user = session.user;
  document.getElementById('user').hidden = !user;
  document.getElementById('nav').hidden = session.keys_required && !user;
  document.getElementById('user-name').textContent = user ? `${user.name}${user.admin ? ' (admin)' : ''}` : '';
}

function signedIn(next) {
  session = next;
  showUser();
  render();
}

document.getElementById('logout').addEventListener('click', async () => {
  await logout().catch(() => {});
  signedIn({ keys_required: true, user: null });
});

// A 401 means the session expired or the key was revoked: back to the login form.
onUnauthorized(() => {
  if (session.user || !session.keys_required) signedIn({ keys_required: true, user: null });
});

window.addEventListener('hashchange', render);

currentSession()
  .then(signedIn)
  .catch((e) => { main.textContent = `The service did not answer: ${e.message}`; });
