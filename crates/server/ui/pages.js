// The dashboard's pages. Each is `async page(ctx)`: it builds what does not change into
// ctx.root and answers a `refresh()` that loads the page's data from the API, draws it, and
// says whether something on it is under way (so that the shell polls sooner). A page offers
// only what the signed-in user's role allows; the server decides anyway, and its message is
// shown when it refuses.

import { del, get, post, seg } from './api.js';
import { ago, bytes, h, span, status, svg, time, when } from './format.js';

const RANK = { viewer: 0, clone_user: 1, image_creator: 2, admin: 3 };
const can = (me, role) => RANK[me.role] >= RANK[role];
const isAdmin = (me) => me.role === 'admin';
const inTeam = (me, team) => isAdmin(me) || me.teams.includes(team);
/** Whether the user may use a clone (and is given its password): its owner, or an administrator. */
const mayUse = (me, c) => isAdmin(me) || c.owner === me.name;

// A name as the API takes it (api::Name): lower case, digits, `_` and `-`; the `-` escaped
// for the `v` flag browsers compile patterns with.
const NAME_PATTERN = '[a-z0-9][a-z0-9_\\-]{0,62}';

const BUSY_CLONE = ['creating', 'starting', 'stopping', 'resetting', 'checkpointing', 'reverting', 'deleting'];
const BUSY_IMAGE = ['creating', 'deleting'];

function head(title, ...actions) {
  document.title = `${title} · thinclone`;
  return h('div', { class: 'page-head' }, h('h1', {}, title), h('div', { class: 'actions' }, actions));
}

/** A table whose cells carry their column's name, for the narrow layout. */
function table(caption, columns, rows, empty) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h(
    'div',
    { class: 'table-wrap' },
    h(
      'table',
      { class: 'data' },
      h('caption', { class: 'visually-hidden' }, caption),
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c)))),
      h(
        'tbody',
        {},
        rows.map((cells) =>
          h(
            'tr',
            {},
            cells.map((cell, i) => h(i === 0 ? 'th' : 'td', i === 0 ? { scope: 'row', 'data-label': columns[i] } : { 'data-label': columns[i] }, cell)),
          ),
        ),
      ),
    ),
  );
}

/** Runs an action the user asked for, after confirmation; shows the server's answer. */
async function act(ctx, button, question, label, request, done) {
  if (question && !(await ctx.confirm(question, label))) return;
  if (button) button.disabled = true;
  try {
    const op = await request();
    if (op && op.state === 'failed') ctx.notice(op.error || 'The operation failed.');
    else if (done) done(op);
    ctx.refreshSoon();
  } catch (e) {
    ctx.notice(e.message);
  } finally {
    if (button) button.disabled = false;
  }
}

function progress(p) {
  if (!p || !p.total_bytes) return null;
  const pct = Math.min(100, Math.round((100 * p.done_bytes) / p.total_bytes));
  return h(
    'span',
    { class: 'progress' },
    h('progress', { max: p.total_bytes, value: p.done_bytes, 'aria-label': `${pct}% copied` }),
    ` ${pct}% of ${bytes(p.total_bytes)}`,
  );
}

function statusCell(s, message, p) {
  return h(
    'div',
    { class: 'status-cell' },
    status(s),
    progress(p),
    message ? h('div', { class: `message ${s === 'degraded' || s === 'failed' ? 'warn' : ''}` }, message) : null,
  );
}

// ------------------------------------------------------------------------------ images

function maskAndScripts(image) {
  const rules = image.mask || [];
  const scripts = image.scripts || [];
  if (!rules.length && !scripts.length) return '—';
  const words = [];
  if (rules.length) words.push(`${rules.length} masking rule${rules.length === 1 ? '' : 's'}`);
  if (scripts.length) words.push(`${scripts.length} script${scripts.length === 1 ? '' : 's'}`);
  const masked = new Map(((image.report && image.report.masked) || []).map((m) => [`${m.table}.${m.column}`, m.rows]));
  return h(
    'details',
    {},
    h('summary', {}, words.join(', ')),
    rules.length
      ? h(
          'ul',
          {},
          rules.map((r) => {
            const rows = masked.get(`${r.table}.${r.column}`);
            return h('li', {}, h('code', {}, `${r.table}.${r.column}`), ` → ${r.strategy}`, rows === undefined ? '' : ` (${rows} rows)`);
          }),
        )
      : null,
    scripts.length ? h('ol', { class: 'scripts' }, scripts.map((s) => h('li', {}, h('code', {}, s)))) : null,
  );
}

/** For each image, its logical size against what it and its clones really use, drawn and said. */
function storage(images, clones) {
  const rows = images
    .filter((i) => i.status === 'ready')
    .map((image) => {
      const mine = clones.filter((c) => c.image === image.name);
      const clonesBytes = mine.reduce((sum, c) => sum + c.stored_bytes, 0);
      const used = image.stored_bytes + clonesBytes;
      const copies = image.logical_bytes * (mine.length + 1);
      return { image, count: mine.length, clonesBytes, used, copies };
    });
  if (!rows.length) return h('p', { class: 'empty' }, 'No ready image yet.');
  const max = Math.max(...rows.map((r) => Math.max(r.copies, r.used)), 1);
  return h(
    'ul',
    { class: 'storage' },
    rows.map((r) => {
      const n = r.count;
      const words = `${n} clone${n === 1 ? '' : 's'} of ${bytes(r.image.logical_bytes)} use ${bytes(r.clonesBytes)}`;
      const saving = r.copies > 0 ? Math.max(0, Math.round(100 * (1 - r.used / r.copies))) : 0;
      const width = (v) => Math.max(0.5, (100 * v) / max).toFixed(2);
      return h(
        'li',
        { 'data-image': r.image.name },
        h('h3', {}, r.image.name),
        h('p', { class: 'saving' }, `${words}; with the image, ${bytes(r.used)} on disk where full copies would take ${bytes(r.copies)} (${saving}% saved).`),
        svg(
          'svg',
          { viewBox: '0 0 100 22', preserveAspectRatio: 'none', class: 'bars', role: 'img', 'aria-label': `${r.image.name}: ${bytes(r.copies)} as full copies, ${bytes(r.used)} used` },
          svg('rect', { x: 0, y: 1, width: width(r.copies), height: 9, class: 'bar-copies' }),
          svg('rect', { x: 0, y: 12, width: width(r.image.stored_bytes), height: 9, class: 'bar-image' }),
          svg('rect', { x: width(r.image.stored_bytes), y: 12, width: Math.max(0.5, (100 * r.clonesBytes) / max).toFixed(2), height: 9, class: 'bar-clones' }),
        ),
        h(
          'p',
          { class: 'legend' },
          h('span', { class: 'key key-copies' }), ` as full copies ${bytes(r.copies)} `,
          h('span', { class: 'key key-image' }), ` image ${bytes(r.image.stored_bytes)} `,
          h('span', { class: 'key key-clones' }), ` clones ${bytes(r.clonesBytes)}`,
        ),
      );
    }),
  );
}

export async function images(ctx) {
  const { me, root } = ctx;
  root.append(
    head('Images', can(me, 'image_creator') ? h('a', { class: 'button', href: '#/images/new' }, 'Make an image') : null),
    ctx.noticeEl,
  );
  const list = h('div', { id: 'image-list' });
  const chart = h('div', { id: 'storage-chart' });
  root.append(list, h('section', { 'aria-labelledby': 'storage-title' }, h('h2', { id: 'storage-title' }, 'Storage'), chart));
  return async () => {
    const [all, clones] = await Promise.all([get('/v1/images'), get('/v1/clones')]);
    const columns = ['Name', 'Engine', 'Source', 'Made', 'Logical size', 'Stored', 'Clones', 'Status', 'Masking and scripts', ''];
    const rows = all.map((i) => {
      const removable = can(me, 'image_creator') && inTeam(me, i.team) && i.status !== 'deleting';
      const remove = removable
        ? h('button', {
            type: 'button',
            class: 'danger small',
            'aria-label': `Remove image ${i.name}`,
            onclick: (e) =>
              act(ctx, e.currentTarget, `Remove image ${i.name}? Its files are deleted; clones of it must be removed first.`, 'Remove', () =>
                del(`/v1/images/${seg(i.name)}?wait=0`),
              ),
          }, 'Remove')
        : null;
      return [
        h('span', { class: 'name' }, i.name, h('span', { class: 'sub' }, `team ${i.team}`)),
        `${i.engine} ${i.engine_version || ''}`.trim(),
        h('span', { class: 'source' }, i.source, i.schedule ? h('span', { class: 'sub' }, `schedule ${i.schedule}`) : null),
        h('span', {}, time(i.created_at), i.created_by ? ` by ${i.created_by}` : ''),
        bytes(i.logical_bytes),
        bytes(i.stored_bytes),
        String(i.clone_count),
        statusCell(i.status, i.message, i.status === 'creating' ? i.progress : null),
        maskAndScripts(i),
        remove,
      ];
    });
    list.replaceChildren(table('Images', columns, rows, 'No images yet.'));
    chart.replaceChildren(storage(all, clones));
    return all.some((i) => BUSY_IMAGE.includes(i.status));
  };
}

/** Masking rules written one a line: `schema.table column strategy [value or days] [database]`. */
function parseRules(text) {
  const rules = [];
  text.split('\n').forEach((line, n) => {
    const words = line.trim().split(/\s+/).filter(Boolean);
    if (!words.length || words[0].startsWith('#')) return;
    if (words.length < 3) throw new Error(`Masking rule on line ${n + 1}: write "table column strategy".`);
    const [table, column, strategy, extra] = words;
    const rule = { table, column, strategy };
    if (strategy === 'constant') rule.value = extra || '';
    if (strategy === 'date_shift') rule.days = Number(extra || 30);
    rules.push(rule);
  });
  return rules;
}

function field(id, label, input, help) {
  input.id = id;
  if (help) input.setAttribute('aria-describedby', `${id}-help`);
  return h('div', { class: 'field' }, h('label', { for: id }, label), input, help ? h('p', { class: 'help', id: `${id}-help` }, help) : null);
}

export async function newImage(ctx) {
  const { me, root } = ctx;
  root.append(head('Make an image'), ctx.noticeEl);
  if (!can(me, 'image_creator')) {
    root.append(h('p', {}, `Your role (${me.role}) does not make images.`));
    return async () => false;
  }
  const [sources, locations, teams] = await Promise.all([
    get('/v1/sources').catch(() => []),
    get('/v1/locations').catch(() => []),
    isAdmin(me) ? get('/v1/teams').then((t) => t.map((x) => x.name)) : Promise.resolve(me.teams),
  ]);
  const name = h('input', { name: 'name', required: true, autocomplete: 'off', pattern: NAME_PATTERN });
  const team = h('select', { name: 'team' }, teams.map((t) => h('option', { value: t }, t)));
  const kindUrl = h('input', { type: 'radio', name: 'kind', value: 'url', id: 'kind-url' });
  const kindDir = h('input', { type: 'radio', name: 'kind', value: 'dir', id: 'kind-dir', checked: true });
  const from = h('input', { name: 'from', required: true, autocomplete: 'off', list: 'source-dirs' });
  const snapshot = h('input', { type: 'checkbox', name: 'snapshot', id: 'snapshot' });
  const location = h('select', { name: 'location' }, h('option', { value: '' }, 'the default'), locations.map((l) => h('option', { value: l.name }, `${l.name} (${l.path})`)));
  const mask = h('textarea', { name: 'mask', rows: 3, spellcheck: 'false', placeholder: 'public.customers email email' });
  const scripts = h('input', { type: 'file', name: 'scripts', multiple: true, accept: '.sql,text/plain' });
  const submit = h('button', { type: 'submit' }, 'Make the image');
  const help = () =>
    kindUrl.checked
      ? 'A connection URL of a running server; its password is used, never stored.'
      : `A data directory inside a registered source: ${sources.map((s) => s.path).join(', ') || 'none registered'}.`;
  const fromHelp = h('p', { class: 'help', id: 'from-help' }, help());
  for (const r of [kindUrl, kindDir]) r.addEventListener('change', () => (fromHelp.textContent = help()));
  const form = h(
    'form',
    {
      class: 'card form',
      onsubmit: async (event) => {
        event.preventDefault();
        const body = { name: name.value.trim() };
        if (team.value) body.team = team.value;
        if (location.value) body.location = location.value;
        if (kindUrl.checked) body.from_url = from.value.trim();
        else {
          body.from_dir = from.value.trim();
          if (snapshot.checked) body.snapshot = true;
        }
        try {
          const rules = parseRules(mask.value);
          if (rules.length) body.mask = rules;
        } catch (e) {
          ctx.notice(e.message);
          return;
        }
        const files = [...scripts.files];
        if (files.length) body.scripts = await Promise.all(files.map(async (f) => ({ name: f.name, sql: await f.text() })));
        submit.disabled = true;
        try {
          await post('/v1/images?wait=0', body);
          ctx.go('#/images', `Making image ${body.name}.`);
        } catch (e) {
          ctx.notice(e.message);
          submit.disabled = false;
        }
      },
    },
    field('image-name', 'Name', name),
    field('image-team', 'Team', team),
    h('fieldset', {}, h('legend', {}, 'Made from'),
      h('div', { class: 'radio' }, kindDir, h('label', { for: 'kind-dir' }, 'A directory on the server')),
      h('div', { class: 'radio' }, kindUrl, h('label', { for: 'kind-url' }, 'A running server (connection URL)')),
      h('label', { for: 'image-from' }, 'Directory or URL'),
      Object.assign(from, { id: 'image-from' }),
      fromHelp,
      h('datalist', { id: 'source-dirs' }, sources.map((s) => h('option', { value: s.path }))),
      h('div', { class: 'check' }, snapshot, h('label', { for: 'snapshot' }, 'The directory is a crash-consistent snapshot of a running server')),
    ),
    field('image-location', 'Image location', location),
    field('image-mask', 'Masking rules', mask, 'One a line: table column strategy [value or days]. Strategies: email, name, phone, hash, redact, null, constant, shuffle, date_shift.'),
    field('image-scripts', 'Scripts', scripts, 'SQL files, run in order before masking.'),
    submit,
  );
  from.setAttribute('aria-describedby', 'from-help');
  root.append(form);
  name.focus();
  return async () => false;
}

// ------------------------------------------------------------------------------ clones

function connection(c) {
  if (c.url) {
    const code = h('code', { class: 'url' }, c.url);
    const copy = h('button', {
      type: 'button',
      class: 'small quiet copy',
      'aria-label': `Copy the connection string of ${c.name}`,
      onclick: async (e) => {
        const button = e.currentTarget;
        try {
          await navigator.clipboard.writeText(c.url);
          button.textContent = 'Copied';
        } catch {
          // No clipboard here (permissions): select the text for the user to copy.
          window.getSelection().selectAllChildren(code);
          button.textContent = 'Selected';
        }
        setTimeout(() => (button.textContent = 'Copy'), 2000);
      },
    }, 'Copy');
    return h('span', { class: 'conn' }, code, copy);
  }
  return h('span', { class: 'conn' }, h('code', {}, `${c.host}:${c.port}`), h('span', { class: 'sub' }, `user ${c.user}; the password is its owner's`));
}

function protection(c) {
  if (!c.protected) return '—';
  return c.protected_until ? h('span', {}, 'until ', time(c.protected_until, when(c.protected_until))) : 'protected';
}

export async function clones(ctx) {
  const { me, root } = ctx;
  root.append(head('Clones', can(me, 'clone_user') ? h('a', { class: 'button', href: '#/clones/new' }, 'Make a clone') : null), ctx.noticeEl);
  const list = h('div', { id: 'clone-list' });
  root.append(list);
  return async () => {
    const all = await get('/v1/clones');
    const columns = ['Name', 'Owner', 'Team', 'Image', 'Host', 'Status', 'Connection', 'Disk', 'Age', 'Expires', 'Protected'];
    const rows = all.map((c) => [
      h('a', { href: `#/clones/${seg(c.name)}` }, c.name),
      c.owner,
      c.team,
      c.image,
      c.agent,
      statusCell(c.status, c.message),
      connection(c),
      h('span', {}, bytes(c.stored_bytes), h('span', { class: 'sub' }, ` of ${bytes(c.logical_bytes)}`)),
      time(c.created_at, span((Date.now() - Date.parse(c.created_at)) / 1000)),
      c.expires_at ? time(c.expires_at) : 'never',
      protection(c),
    ]);
    list.replaceChildren(table('Clones', columns, rows, 'No clones yet.'));
    return all.some((c) => BUSY_CLONE.includes(c.status));
  };
}

export async function newClone(ctx) {
  const { me, root } = ctx;
  root.append(head('Make a clone'), ctx.noticeEl);
  if (!can(me, 'clone_user')) {
    root.append(h('p', {}, `Your role (${me.role}) does not make clones.`));
    return async () => false;
  }
  const [imageList, agents, templates] = await Promise.all([get('/v1/images'), get('/v1/agents'), get('/v1/templates')]);
  const ready = imageList.filter((i) => i.status === 'ready');
  const name = h('input', { name: 'name', required: true, autocomplete: 'off', pattern: NAME_PATTERN });
  const image = h('select', { name: 'image', required: true }, ready.map((i) => h('option', { value: i.name }, `${i.name} (${i.engine} ${i.engine_version || ''})`)));
  const host = h('select', { name: 'host' }, h('option', { value: '' }, 'let the server choose'), agents.filter((a) => a.status === 'online').map((a) => h('option', { value: a.name }, a.name)));
  const template = h('select', { name: 'template' }, h('option', { value: '' }, 'none'), templates.map((t) => h('option', { value: t.name }, t.name)));
  const expiry = h(
    'select',
    { name: 'expiry' },
    [['', 'never'], [3600, 'in an hour'], [8 * 3600, 'in 8 hours'], [86400, 'in a day'], [7 * 86400, 'in a week'], [30 * 86400, 'in 30 days']].map(([v, t]) => h('option', { value: v }, t)),
  );
  const submit = h('button', { type: 'submit', disabled: !ready.length }, 'Make the clone');
  const form = h(
    'form',
    {
      class: 'card form',
      onsubmit: async (event) => {
        event.preventDefault();
        const body = { name: name.value.trim(), image: image.value };
        if (host.value) body.host = host.value;
        if (template.value) body.template = template.value;
        if (expiry.value) body.expires_in = Number(expiry.value);
        submit.disabled = true;
        try {
          await post('/v1/clones?wait=0', body);
          ctx.go(`#/clones/${seg(body.name)}`, `Making clone ${body.name}.`);
        } catch (e) {
          ctx.notice(e.message);
          submit.disabled = false;
        }
      },
    },
    ready.length ? null : h('p', { class: 'notice error' }, 'There is no ready image you can clone.'),
    field('clone-name', 'Name', name),
    field('clone-image', 'Image', image),
    field('clone-host', 'Host', host),
    field('clone-template', 'Template', template, 'Its scripts run on the clone before it is handed out.'),
    field('clone-expiry', 'Remove it', expiry),
    submit,
  );
  root.append(form);
  name.focus();
  return async () => false;
}

export async function clone(ctx) {
  const { me, root } = ctx;
  const name = ctx.params[0];
  document.title = `${name} · thinclone`;
  root.append(
    h('p', { class: 'crumbs' }, h('a', { href: '#/clones' }, 'Clones'), ' / '),
    h('div', { class: 'page-head' }, h('h1', {}, name)),
    ctx.noticeEl,
  );
  const summary = h('div', { class: 'summary' });
  const actions = h('section', { class: 'card actions-panel', 'aria-labelledby': 'actions-title', hidden: true });
  const checkpoints = h('div');
  const activity = h('div');
  root.append(
    summary,
    actions,
    h('section', { 'aria-labelledby': 'cp-title' }, h('h2', { id: 'cp-title' }, 'Checkpoints'), checkpoints),
    h('section', { 'aria-labelledby': 'act-title' }, h('h2', { id: 'act-title' }, 'Activity'), activity),
  );

  // The actions are built once, so that what the user types survives each refresh; their
  // buttons follow the clone's status.
  const path = `/v1/clones/${seg(name)}`;
  const buttons = {};
  const button = (key, label, cls, onclick) => (buttons[key] = h('button', { type: 'button', class: cls || '', onclick }, label));
  const cpMessage = h('input', { id: 'cp-message', autocomplete: 'off', placeholder: 'before the migration' });
  const revertTo = h('select', { id: 'revert-to' });
  const branchName = h('input', { id: 'branch-name', autocomplete: 'off', pattern: NAME_PATTERN });
  const branchFrom = h('select', { id: 'branch-from' });
  const branchReadOnly = h('input', { type: 'checkbox', id: 'branch-ro' });
  let current = null;
  actions.append(
    h('h2', { id: 'actions-title' }, 'Actions'),
    h(
      'div',
      { class: 'buttons' },
      button('start', 'Start', '', (e) => act(ctx, e.currentTarget, null, null, () => post(`${path}/start?wait=0`))),
      button('stop', 'Stop', '', (e) => act(ctx, e.currentTarget, `Stop clone ${name}? Its connections are closed; its data is kept.`, 'Stop', () => post(`${path}/stop?wait=0`))),
      button('reset', 'Reset', 'warn', (e) =>
        act(ctx, e.currentTarget, `Reset clone ${name} to its image? Every change made in it is lost.`, 'Reset', () => post(`${path}/reset?wait=0`), () => ctx.notice(`Resetting ${name}.`, 'info')),
      ),
      button('protect', 'Protect', '', (e) => {
        const on = !current.protected;
        act(ctx, e.currentTarget, null, null, () => post(`${path}/${on ? 'protect' : 'unprotect'}`, {}));
      }),
      button('remove', 'Remove', 'danger', (e) =>
        act(ctx, e.currentTarget, `Remove clone ${name}? Its data and checkpoints are deleted.`, 'Remove', () => del(`${path}?wait=0`), () =>
          ctx.go('#/clones', `Removing clone ${name}.`),
        ),
      ),
    ),
    h(
      'form',
      { class: 'inline', onsubmit: (e) => {
        e.preventDefault();
        const body = cpMessage.value.trim() ? { message: cpMessage.value.trim() } : {};
        act(ctx, buttons.checkpoint, null, null, () => post(`${path}/checkpoints?wait=0`, body), () => (cpMessage.value = ''));
      } },
      h('label', { for: 'cp-message' }, 'Checkpoint note'),
      cpMessage,
      button('checkpoint', 'Checkpoint', '', null),
    ),
    h(
      'form',
      { class: 'inline', onsubmit: (e) => {
        e.preventDefault();
        act(ctx, buttons.revert, `Revert clone ${name} to ${revertTo.value}? Changes since then, and later checkpoints, are lost.`, 'Revert', () =>
          post(`${path}/revert?wait=0`, { to: revertTo.value }),
        );
      } },
      h('label', { for: 'revert-to' }, 'Revert to'),
      revertTo,
      button('revert', 'Revert', 'warn', null),
    ),
    h(
      'form',
      { class: 'inline', onsubmit: (e) => {
        e.preventDefault();
        const body = { name: branchName.value.trim() };
        if (branchFrom.value) body.checkpoint = branchFrom.value;
        if (branchReadOnly.checked) body.read_only = true;
        act(ctx, buttons.branch, null, null, () => post(`${path}/branches?wait=0`, body), () => ctx.go(`#/clones/${seg(body.name)}`, `Making clone ${body.name}.`));
      } },
      h('label', { for: 'branch-name' }, 'Branch as'),
      branchName,
      h('label', { for: 'branch-from' }, 'from'),
      branchFrom,
      h('span', { class: 'check' }, branchReadOnly, h('label', { for: 'branch-ro' }, 'read-only')),
      button('branch', 'Branch', '', null),
    ),
  );
  for (const key of ['checkpoint', 'revert', 'branch']) buttons[key].type = 'submit';

  let gone = false;
  return async () => {
    if (gone) return false;
    let c;
    try {
      c = await get(path);
    } catch (e) {
      if (e.status !== 404) throw e;
      gone = true;
      summary.replaceChildren(h('p', { class: 'empty' }, e.message));
      actions.hidden = true;
      checkpoints.replaceChildren();
      activity.replaceChildren();
      return false;
    }
    current = c;
    const [cps, log] = await Promise.all([
      get(`${path}/checkpoints`),
      get(`/v1/activity?target=${encodeURIComponent(`clone ${name}`)}&limit=20`),
    ]);
    const item = (term, ...value) => [h('dt', {}, term), h('dd', {}, value)];
    summary.replaceChildren(
      h(
        'dl',
        { class: 'facts' },
        item('Status', statusCell(c.status, c.message)),
        item('Connection', connection(c)),
        item('Owner', c.owner),
        item('Team', c.team),
        item('Image', c.origin ? `${c.image} (branch of ${c.origin})` : c.image),
        item('Engine', `${c.engine} ${c.engine_version}`),
        item('Host', `${c.agent} (${c.host}:${c.port})`),
        item('Storage', `${c.driver}; ${bytes(c.stored_bytes)} used of ${bytes(c.logical_bytes)}`, c.sizes_at ? h('span', { class: 'sub' }, ` measured ${ago(c.sizes_at)}`) : ''),
        item('Made', time(c.created_at), ` (${when(c.created_at)})`),
        item('Expires', c.expires_at ? time(c.expires_at) : 'never'),
        item('Protected', protection(c)),
        c.read_only ? item('Read-only', 'yes: a snapshot view') : null,
      ),
    );
    const usable = mayUse(me, c);
    actions.hidden = !usable;
    if (usable) {
      const busy = BUSY_CLONE.includes(c.status) || c.status === 'unknown';
      buttons.start.disabled = busy || !['stopped', 'failed', 'degraded'].includes(c.status);
      buttons.stop.disabled = busy || c.status === 'stopped';
      buttons.reset.disabled = busy || c.read_only;
      buttons.checkpoint.disabled = busy || c.read_only;
      buttons.revert.disabled = busy || !cps.length;
      buttons.branch.disabled = busy;
      buttons.remove.disabled = c.status === 'deleting' || c.protected;
      buttons.protect.textContent = c.protected ? 'Unprotect' : 'Protect';
      const keep = (select, options) => {
        const value = select.value;
        select.replaceChildren(...options);
        if ([...select.options].some((o) => o.value === value)) select.value = value;
      };
      keep(revertTo, cps.map((cp) => h('option', { value: cp.name }, cp.name)));
      keep(branchFrom, [h('option', { value: '' }, 'a new checkpoint of now'), ...cps.map((cp) => h('option', { value: cp.name }, cp.name))]);
    }
    checkpoints.replaceChildren(
      table('Checkpoints', ['Name', 'Note', 'Made', 'Disk it keeps'], cps.map((cp) => [cp.name, cp.message || '—', time(cp.created_at), bytes(cp.stored_bytes)]), 'No checkpoints.'),
    );
    activity.replaceChildren(activityTable(log, 'Nothing recorded yet.'));
    return BUSY_CLONE.includes(c.status);
  };
}

// ------------------------------------------------------------------------------ agents

export async function agents(ctx) {
  ctx.root.append(head('Agents'), ctx.noticeEl);
  const list = h('div');
  ctx.root.append(list);
  return async () => {
    const all = await get('/v1/agents');
    const columns = ['Name', 'Health', 'Address', 'Last seen', 'Free disk', 'Free ports', 'Clones', 'Engines', 'Drivers', 'Locations'];
    const rows = all.map((a) => [
      a.name,
      status(a.status),
      a.host || '—',
      time(a.last_seen),
      bytes(a.free_bytes),
      a.free_ports === null || a.free_ports === undefined ? '—' : String(a.free_ports),
      String(a.clones),
      a.engines.map((e) => `${e.engine} ${e.versions.join(', ')}`).join('; ') || '—',
      a.drivers.join(', ') || '—',
      a.locations.join(', ') || '—',
    ]);
    list.replaceChildren(table('Agents', columns, rows, 'No agents.'));
    return false;
  };
}

// ------------------------------------------------------------------------------ activity

function activityTable(entries, empty) {
  return table(
    'Activity',
    ['When', 'Who', 'What', 'Of', 'Answer'],
    entries.map((a) => [
      time(a.at, when(a.at)),
      // No actor: an event the server recorded itself (`clone.removed`), or a request made
      // without a valid token (recorded as its method and path).
      a.actor || (a.action.includes(' /') ? '(no valid token)' : 'the server'),
      a.action,
      a.target || '—',
      h('span', { class: a.status >= 400 ? 'refused' : '' }, String(a.status), a.detail ? `: ${a.detail}` : ''),
    ]),
    empty,
  );
}

export async function activity(ctx) {
  ctx.root.append(head('Activity'), ctx.noticeEl);
  const user = h('input', { name: 'user', autocomplete: 'off' });
  const target = h('input', { name: 'target', autocomplete: 'off', placeholder: 'clone alice' });
  const since = h('input', { name: 'since', type: 'datetime-local' });
  const list = h('div');
  let refresh;
  const form = h(
    'form',
    { class: 'filters card', onsubmit: (e) => {
      e.preventDefault();
      refresh().catch((err) => ctx.notice(err.message));
    } },
    field('filter-user', 'User', user),
    field('filter-target', 'Object', target),
    field('filter-since', 'Since', since),
    h('button', { type: 'submit' }, 'Filter'),
  );
  ctx.root.append(form, list);
  refresh = async () => {
    const q = new URLSearchParams({ limit: '200' });
    if (user.value.trim()) q.set('user', user.value.trim());
    if (target.value.trim()) q.set('target', target.value.trim());
    if (since.value) q.set('since', new Date(since.value).toISOString().replace(/\.\d+Z$/, 'Z'));
    const entries = await get(`/v1/activity?${q}`);
    ctx.notice('');
    list.replaceChildren(activityTable(entries, 'Nothing matches.'));
    return false;
  };
  return refresh;
}
