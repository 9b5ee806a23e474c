// The dashboard's shell: sign-in and sign-out, the page for the address's #fragment, and the
// polling that keeps the page current (every 1.5 s while something on it is under way,
// every 10 s otherwise). Pages are in pages.js; every request goes through api.js.

import { clearToken, get, onUnauthorized, setToken, token } from './api.js';
import { h } from './format.js';
import * as pages from './pages.js';

const view = document.getElementById('view');
const header = document.querySelector('header.top');
const BUSY_POLL = 1500;
const IDLE_POLL = 10000;

const ROUTES = [
  [/^#\/images$/, 'images', pages.images],
  [/^#\/images\/new$/, 'image-new', pages.newImage],
  [/^#\/clones$/, 'clones', pages.clones],
  [/^#\/clones\/new$/, 'clone-new', pages.newClone],
  [/^#\/clones\/([^/]+)$/, 'clone', pages.clone],
  [/^#\/agents$/, 'agents', pages.agents],
  [/^#\/activity$/, 'activity', pages.activity],
];

let me = null;
let generation = 0;
let timer = null;
let flash = null;
let firstPageOfDocument = true;
let noticeTimer = null;

function stopPolling() {
  generation += 1;
  clearTimeout(timer);
  timer = null;
}

/** The sign-in page, with a message saying why it is shown, if any. */
function signIn(message) {
  stopPolling();
  me = null;
  // A page shown after signing in is not measured from the document's load.
  firstPageOfDocument = false;
  header.hidden = true;
  document.title = 'Sign in · thinclone';
  const error = h('p', { class: 'notice error', role: 'alert', id: 'sign-in-error' }, message || '');
  if (!message) error.hidden = true;
  const input = h('input', {
    id: 'token',
    name: 'token',
    type: 'password',
    autocomplete: 'off',
    spellcheck: 'false',
    required: true,
    'aria-describedby': 'token-help',
  });
  const button = h('button', { type: 'submit' }, 'Sign in');
  const form = h(
    'form',
    {
      class: 'sign-in card',
      onsubmit: async (event) => {
        event.preventDefault();
        button.disabled = true;
        setToken(input.value.trim());
        try {
          me = await get('/v1/whoami');
          if (!ROUTES.some(([re]) => re.test(location.hash))) location.hash = '#/images';
          show();
        } catch (e) {
          clearToken();
          error.textContent = e.message;
          error.hidden = false;
          button.disabled = false;
          input.focus();
        }
      },
    },
    h('h1', {}, h('img', { src: '/ui/icon.svg', alt: '', width: 32, height: 32 }), ' thinclone'),
    error,
    h('label', { for: 'token' }, 'API token'),
    input,
    h(
      'p',
      { id: 'token-help', class: 'help' },
      'A token from ',
      h('code', {}, 'thinclone token create'),
      '. It is kept in this tab only, until you sign out or close it.',
    ),
    button,
  );
  view.replaceChildren(form);
  view.dataset.rendered = 'sign-in';
  document.body.dataset.page = 'sign-in';
  input.focus();
}

onUnauthorized((e) => {
  clearToken();
  signIn(`Your session has ended: ${e.message} Sign in again.`);
});

const dialog = document.getElementById('confirm');
let answer = null;

// The dialog's `close` event is queued, not dispatched at once: one still queued from the last
// question (closed with Escape) could otherwise answer the next one, asked in between. A
// close while the dialog is open again is such a leftover, and is ignored.
dialog.addEventListener('close', () => {
  if (dialog.open || !answer) return;
  const give = answer;
  answer = null;
  give(dialog.returnValue === 'ok');
});

/** Asks for confirmation in a modal dialog; resolves true when confirmed. */
export function confirmAction(text, label) {
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = label || 'Confirm';
  if (answer) answer(false);
  dialog.returnValue = '';
  return new Promise((resolve) => {
    answer = resolve;
    dialog.showModal();
    document.getElementById('confirm-ok').focus();
  });
}

/** Shows the page the address names, and keeps it current. */
async function show() {
  stopPolling();
  const gen = generation;
  if (!token()) {
    signIn();
    return;
  }
  const started = firstPageOfDocument ? 0 : performance.now();
  if (!me) {
    try {
      me = await get('/v1/whoami');
    } catch (e) {
      // A 401 has already brought the sign-in page back.
      if (e.status !== 401) signIn(e.message);
      return;
    }
    if (gen !== generation) return;
  }
  const match = ROUTES.map(([re, name, page]) => [re.exec(location.hash), name, page]).find(([m]) => m);
  if (!match) {
    location.hash = '#/images';
    return;
  }
  const [m, name, page] = match;
  header.hidden = false;
  document.getElementById('who').textContent = `${me.name} (${me.role.replace('_', ' ')})`;
  const section = name.split('-')[0].replace(/^clone$/, 'clones').replace(/^image$/, 'images');
  for (const link of header.querySelectorAll('[data-nav]')) {
    if (link.dataset.nav === section) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  delete view.dataset.rendered;
  // Each page draws into a container of its own, so that a page still loading when the user
  // moves on draws into a container no longer shown.
  const root = h('div', { class: 'page' });
  const notice = h('div', { class: 'notice', role: 'status', 'aria-live': 'polite' });
  notice.hidden = true;
  const ctx = {
    me,
    params: m.slice(1).map(decodeURIComponent),
    root,
    notice(message, kind) {
      notice.textContent = message;
      notice.className = `notice ${kind || 'error'}`;
      notice.setAttribute('role', kind === 'info' ? 'status' : 'alert');
      notice.hidden = !message;
      // What was done is said for a while; a refusal stays until the next message.
      clearTimeout(noticeTimer);
      if (kind === 'info') noticeTimer = setTimeout(() => (notice.hidden = true), 8000);
    },
    noticeEl: notice,
    go(hash, message) {
      flash = message || null;
      location.hash = hash;
    },
    refreshSoon() {
      if (gen !== generation) return;
      clearTimeout(timer);
      timer = setTimeout(tick, 300);
    },
    confirm: confirmAction,
  };
  view.replaceChildren(root);
  let refresh;
  try {
    refresh = await page(ctx);
  } catch (e) {
    if (e.status === 401 || gen !== generation) return;
    root.replaceChildren(notice);
    ctx.notice(e.message);
    return;
  }
  if (flash) {
    ctx.notice(flash, 'info');
    flash = null;
  }
  let first = true;
  async function tick() {
    if (gen !== generation) return;
    let busy = false;
    try {
      busy = await refresh();
    } catch (e) {
      if (e.status === 401 || gen !== generation) return;
      ctx.notice(e.message);
    }
    if (gen !== generation) return;
    if (first) {
      first = false;
      firstPageOfDocument = false;
      // After a move to another page, the keyboard's focus goes to its heading (unless the
      // page put it in a form), so that the next Tab starts from the new page.
      if (!view.contains(document.activeElement)) {
        const heading = view.querySelector('h1');
        if (heading) {
          heading.tabIndex = -1;
          heading.focus({ preventScroll: true });
        }
      }
      performance.measure(`first-render:${name}`, { start: started, end: performance.now() });
      view.dataset.rendered = name;
      document.body.dataset.page = name;
    }
    timer = setTimeout(tick, busy ? BUSY_POLL : IDLE_POLL);
  }
  await tick();
}

document.getElementById('sign-out').addEventListener('click', () => {
  clearToken();
  signIn('You have signed out.');
  const error = document.getElementById('sign-in-error');
  error.className = 'notice info';
  error.setAttribute('role', 'status');
});

// The skip link moves the focus to the page; followed as a link, it would change the
// address's fragment, which names the page.
document.querySelector('.skip').addEventListener('click', (event) => {
  event.preventDefault();
  view.focus();
});

window.addEventListener('hashchange', () => {
  if (token()) show();
});

show();
