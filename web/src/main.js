// The buildbridge dashboard. Sign-in exchanges an API token for a session
// cookie; after that every update comes from pushed events on the user's
// private channel. The page fetches state only when it (re)subscribes and
// when the user opens a page: it never polls.

import './app.css';
import { ApiError, get, json, post, raw, request, setCSRF, csrfToken } from './api.js';
import { h, setText, setAttr } from './dom.js';
import { ago, duration, firstLine, fullTime, shortSHA, statusInfo } from './format.js';
import { Live } from './live.js';
import { LATEST, Model } from './model.js';
import { buildRow, elapsed, patchPill, patchRow, statusPill } from './rows.js';
import { notificationsOn, notificationsSupported, notifyChange, showTabStatus, toggleNotifications } from './status.js';
import { BuildLog } from './buildlog.js';

const $main = document.getElementById('main');
const $nav = document.getElementById('nav');
const $account = document.getElementById('account');
const $conn = document.getElementById('conn');
const $announce = document.getElementById('announce');

const app = {
  user: null,
  model: new Model(),
  live: null,
  view: null, // the current page: {title, onBuild?, onLog?, onSynced?, close?, tick?}
  deliveries: false, // GET /api/v1/deliveries exists
  synced: false, // the first snapshot is in
};

// For tests and the curious: read-only handles on the running app.
window.buildbridge = app;

function announce(text) {
  setText($announce, '');
  setTimeout(() => setText($announce, text), 50);
}

function showError(where, err) {
  const msg = err instanceof ApiError ? err.message : String(err?.message || err);
  where.replaceChildren(h('p.error', { role: 'alert' }, msg));
}

function pageTitle(t) {
  if (app.view) app.view.title = t;
  showTabStatus(app.model, t);
}

// ---- routing -------------------------------------------------------------

function navigate(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', path);
  else if (location.pathname + location.search !== path) history.pushState(null, '', path);
  route();
}

document.addEventListener('click', (e) => {
  const a = e.target.closest('a[href]');
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || a.hasAttribute('download') || url.pathname.startsWith('/api/')) return;
  e.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener('popstate', () => route());

function route() {
  app.view?.close?.();
  app.view = null;
  const path = location.pathname;
  if (!app.user) {
    renderSignIn();
    return;
  }
  let m;
  if (path === '/' || path === '/signin') renderDashboard();
  else if ((m = path.match(/^\/builds\/(\d+)$/))) renderBuild(Number(m[1]));
  else if ((m = path.match(/^\/projects\/([^/]+)$/))) renderProject(decodeURIComponent(m[1]));
  else if (path === '/deliveries' && app.deliveries) renderDeliveries();
  else renderNotFound();
  renderNav();
  $main.focus({ preventScroll: true });
}

// ---- header ----------------------------------------------------------------

function renderNav() {
  const here = location.pathname;
  const link = (href, text) => h('a', { href, 'aria-current': here === href ? 'page' : null }, text);
  $nav.replaceChildren(...[link('/', 'Builds'), app.deliveries && link('/deliveries', 'Deliveries')].filter(Boolean));
}

function renderAccount() {
  if (!app.user) {
    $account.replaceChildren();
    return;
  }
  const notify = notificationsSupported()
    ? h('button.ghost', { type: 'button', 'aria-pressed': String(notificationsOn()), title: 'Browser notifications when a build breaks or is fixed' },
      notificationsOn() ? 'Notifications on' : 'Notify me')
    : null;
  notify?.addEventListener('click', async () => {
    const on = await toggleNotifications();
    setAttr(notify, 'aria-pressed', String(on));
    setText(notify, on ? 'Notifications on' : 'Notify me');
    if (!on && Notification.permission === 'denied') announce('Notifications are blocked in this browser’s site settings.');
  });
  const out = h('button.ghost', { type: 'button' }, 'Sign out');
  out.addEventListener('click', signOut);
  $account.replaceChildren(...[notify, h('span.who', app.user.name), out].filter(Boolean));
}

function showConn(state, text) {
  setAttr($conn, 'data-state', state);
  setText($conn, text || '');
}

// ---- sign-in -------------------------------------------------------------

function renderSignIn(message = '') {
  history.replaceState(null, '', '/signin' + (message ? '' : location.search));
  document.title = 'Sign in · buildbridge';
  $nav.replaceChildren();
  renderAccount();
  const err = h('p.error', { id: 'signin-error', role: 'alert' });
  const params = new URLSearchParams(location.search);
  setText(err, message || (params.get('error') === 'bad_token' ? 'That token is not valid or was revoked.' : ''));
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false',
    required: true, 'aria-describedby': 'token-help signin-error', placeholder: 'bb_…' });
  const form = h('form.signin', { method: 'post', action: '/session' },
    h('h1', 'Sign in'),
    h('label', { for: 'token' }, 'API token'),
    input,
    h('p.help', { id: 'token-help' }, 'The token printed by “buildbridge user add” or “buildbridge token create”. It is exchanged for a browser session and not kept by the page.'),
    h('button', { type: 'submit' }, 'Sign in'),
    err);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    setText(err, '');
    try {
      const s = await json('POST', '/session', { token: input.value.trim() });
      input.value = '';
      await start(s);
      navigate('/', { replace: true });
    } catch (ex) {
      setText(err, ex.status === 401 ? 'That token is not valid or was revoked.' : ex.message);
      input.focus();
    }
  });
  $main.replaceChildren(form);
  input.focus();
}

async function signOut() {
  try {
    await json('DELETE', '/session');
  } catch (err) {
    announce(`Sign-out failed: ${err.message}`);
    return;
  }
  stop();
  renderSignIn('');
}

// ---- start and sync ----------------------------------------------------------

async function start(session) {
  app.user = session.user;
  setCSRF(session.csrf_token);
  renderAccount();
  app.model = new Model();
  app.synced = false;
  app.model.onChange((c) => {
    if (c.type === 'build') showTabStatus(app.model, app.view?.title);
  });
  const [info] = await Promise.all([get('/api/v1/user/channel'), detectDeliveries()]);
  app.live = new Live(info, csrfToken(), {
    onEvent,
    onSynced: sync,
    onStatus: showConn,
  });
}

function stop() {
  app.live?.close();
  app.live = null;
  app.user = null;
  app.view?.close?.();
  app.view = null;
  setCSRF('');
  showConn('', '');
}

async function detectDeliveries() {
  const r = await request('GET', '/api/v1/deliveries?status=failed&limit=1');
  app.deliveries = r.ok;
}

// sync fetches, once per (re)subscription, what the page shows: the
// projects with their latest builds, and the open page's own data. For
// builds still running it reads their last seq, so events that raced
// with the fetch are applied or dropped correctly.
async function sync() {
  const { projects } = await get('/api/v1/projects');
  await Promise.all(projects.map(async (p) => {
    const { builds } = await get(`/api/v1/projects/${encodeURIComponent(p.name)}/builds?limit=${LATEST}`);
    const seqs = new Map();
    await Promise.all(builds.filter((b) => b.state !== 'FINISHED').map(async (b) => {
      const { events } = await get(`/api/v1/builds/${b.id}/events`);
      if (events.length) seqs.set(b.id, events[events.length - 1].seq);
    }));
    app.model.putSnapshot(p.name, p.id, builds, seqs);
  }));
  app.synced = true;
  await app.view?.onSynced?.();
  showTabStatus(app.model, app.view?.title);
}

function onEvent(type, data) {
  if (type === 'build-log') {
    app.view?.onLog?.(data);
    return;
  }
  if (type !== 'build-state-changed') return;
  const res = app.model.applyEvent(data);
  if (!res) return;
  const { build, before } = res;
  if (build.state === 'FINISHED' && before !== build.status && (build.status === 'broken' || build.status === 'fixed')) {
    announce(`${build.project} #${build.number} is ${statusInfo[build.status].label}`);
    notifyChange(build, (id) => navigate(`/builds/${id}`));
  }
}

// A local clock refreshes relative times and running durations; it reads
// nothing from the server.
setInterval(() => app.view?.tick?.(), 1000);

// ---- dashboard -----------------------------------------------------------------

function renderDashboard() {
  const sections = new Map(); // project name -> {el, list, rows: Map id -> li}
  const container = h('div.projects');
  const empty = h('p.empty', 'No projects yet. Create one with POST /api/v1/projects, then push or trigger a build.');
  $main.replaceChildren(h('h1.visually-hidden', 'Projects and their latest builds'), container);

  const section = (name) => {
    let s = sections.get(name);
    if (!s) {
      const list = h('ol.builds', { 'aria-label': `Latest builds of ${name}` });
      const el = h('section.project', { dataset: { project: name }, 'aria-labelledby': `p-${cssId(name)}` },
        h('h2', { id: `p-${cssId(name)}` }, h('a', { href: `/projects/${encodeURIComponent(name)}` }, name)),
        list);
      s = { el, list, rows: new Map() };
      sections.set(name, s);
    }
    return s;
  };

  const draw = () => {
    if (!app.synced) {
      container.replaceChildren(h('p.loading', 'Loading…'));
      return;
    }
    const order = app.model.projectsNewestFirst();
    container.querySelector('.loading')?.remove();
    if (!order.length) {
      container.replaceChildren(empty);
      return;
    }
    empty.remove();
    order.forEach((p, i) => {
      const s = section(p.name);
      if (container.children[i] !== s.el) container.insertBefore(s.el, container.children[i] || null);
      drawList(s, app.model.list(p.name));
    });
  };

  app.view = {
    title: '',
    onSynced: draw,
    tick: () => {
      const now = Date.now();
      for (const s of sections.values()) for (const [id, li] of s.rows) {
        const b = app.model.builds.get(id);
        if (b) patchRow(li, b, now);
      }
    },
    close: app.model.onChange((c) => {
      if (c.type === 'build' || c.type === 'snapshot') draw();
    }),
  };
  pageTitle('');
  draw();
}

// drawList shows exactly the builds given, newest first, reusing rows.
function drawList(s, builds) {
  const want = new Set(builds.map((b) => b.id));
  for (const [id, li] of s.rows) {
    if (!want.has(id)) {
      li.remove();
      s.rows.delete(id);
    }
  }
  builds.forEach((b, i) => {
    let li = s.rows.get(b.id);
    if (!li) {
      li = buildRow(b);
      s.rows.set(b.id, li);
    } else {
      patchRow(li, b);
    }
    if (s.list.children[i] !== li) s.list.insertBefore(li, s.list.children[i] || null);
  });
}

function cssId(name) {
  return name.replace(/[^A-Za-z0-9_-]/g, '_');
}

function renderNotFound() {
  pageTitle('Not found');
  $main.replaceChildren(h('h1', 'Not found'), h('p', h('a', { href: '/' }, 'Back to the builds')));
}

// ---- project page -------------------------------------------------------------

function renderProject(name) {
  const list = h('ol.builds', { 'aria-label': `Builds of ${name}` });
  const s = { list, rows: new Map() };
  let builds = [];
  const status = h('p.loading', 'Loading…');
  $main.replaceChildren(
    h('nav.crumbs', { 'aria-label': 'Breadcrumb' }, h('a', { href: '/' }, 'Builds'), ' / ', name),
    h('h1', name), status, list);
  pageTitle(name);
  const load = async () => {
    try {
      const r = await get(`/api/v1/projects/${encodeURIComponent(name)}/builds?limit=50`);
      const m = new Model();
      m.putSnapshot(name, 0, r.builds);
      // Statuses the live model knows (from events) are better than derived.
      builds = m.list(name, Infinity).map((b) => {
        const live = app.model.builds.get(b.id);
        return live && live.seq >= b.seq ? live : b;
      });
      status.remove();
      drawList(s, builds);
    } catch (err) {
      showError(status, err);
    }
  };
  const unsubscribe = app.model.onChange((c) => {
    if (c.type !== 'build' || c.build.project !== name) return;
    builds = [c.build, ...builds.filter((b) => b.id !== c.build.id)].sort((a, b) => b.id - a.id).slice(0, 50);
    drawList(s, builds);
  });
  app.view = {
    title: name,
    onSynced: load,
    tick: () => {
      const now = Date.now();
      for (const [id, li] of s.rows) {
        const b = builds.find((x) => x.id === id);
        if (b) patchRow(li, b, now);
      }
    },
    close: unsubscribe,
  };
  if (app.synced) load();
}

// ---- build page ---------------------------------------------------------------

function renderBuild(id) {
  app.model.pinned = id;
  const pill = statusPill(null, '.big');
  const heading = h('h1.build-title');
  const meta = h('dl.meta');
  const rebuild = h('button', { type: 'button' }, 'Rebuild');
  const cancel = h('button.danger', { type: 'button' }, 'Cancel');
  const actionMsg = h('span.action-msg', { role: 'status' });
  const steps = h('ol.steps', { 'aria-label': 'Steps' });
  const logEl = h('pre.log', { tabindex: '0', 'aria-label': 'Build log' });
  const artifacts = h('ul.artifacts');
  const crumbs = h('nav.crumbs', { 'aria-label': 'Breadcrumb' }, h('a', { href: '/' }, 'Builds'));
  const page = h('article.build-page', { dataset: { buildId: id } },
    crumbs,
    h('header.build-head', pill, heading),
    meta,
    h('div.actions', rebuild, cancel, actionMsg),
    h('section', { 'aria-labelledby': 'steps-h' }, h('h2', { id: 'steps-h' }, 'Steps'), steps),
    h('section', { 'aria-labelledby': 'log-h' }, h('h2', { id: 'log-h' }, 'Log'), logEl),
    h('section', { 'aria-labelledby': 'art-h' }, h('h2', { id: 'art-h' }, 'Artifacts'), artifacts));
  $main.replaceChildren(h('p.loading', 'Loading…'));

  let build = null;
  const log = new BuildLog(id, logEl, (offset) => raw('GET', `/api/v1/builds/${id}/log?offset=${offset}`));
  log.onSteps = () => drawSteps();

  const metaRow = (k, v, cls = '') => [h('dt', k), h('dd' + cls, v)];
  const draw = () => {
    if (!build) return;
    page.dataset.state = build.state;
    page.dataset.status = build.status || '';
    patchPill(pill, build.status);
    setText(heading, `${build.project} #${build.number}: ${firstLine(build.message) || '(no message)'}`);
    const when = build.finished_at || build.started_at || build.created_at;
    meta.replaceChildren(
      ...metaRow('Branch', build.branch || build.ref),
      ...metaRow('Commit', h('code', shortSHA(build.sha)), ''),
      ...metaRow('Author', build.author || '—'),
      ...metaRow('Duration', h('span.dur', elapsed(build) || '—')),
      ...metaRow('When', h('time', { datetime: when || '', title: fullTime(when) }, ago(when))),
      ...(build.reason ? metaRow('Reason', build.reason) : []));
    crumbs.replaceChildren(h('a', { href: '/' }, 'Builds'), ' / ',
      h('a', { href: `/projects/${encodeURIComponent(build.project)}` }, build.project), ` / #${build.number}`);
    cancel.disabled = build.state === 'FINISHED';
    setAttr(cancel, 'aria-disabled', build.state === 'FINISHED' ? 'true' : null);
    pageTitle(`${build.project} #${build.number} ${statusInfo[build.status]?.label || ''}`.trim());
    drawSteps();
  };
  const drawSteps = () => {
    const list = log.steps;
    const items = list.map((name, i) => {
      let st = 'passed';
      if (i === list.length - 1 && build) {
        if (build.state === 'STARTED') st = 'started';
        else if (build.state === 'FINISHED') st = build.result === 'passed' ? 'passed' : build.result;
      }
      return h('li.step', { dataset: { status: st } }, statusPill(st === 'failed' ? 'failed' : st), h('span', name));
    });
    if (!items.length) items.push(h('li.step.none', build?.state === 'QUEUED' ? 'Waiting to start…' : 'No steps yet.'));
    steps.replaceChildren(...items);
  };

  const loadArtifacts = async () => {
    try {
      const r = await get(`/api/v1/builds/${id}/artifacts`);
      const list = r.artifacts || [];
      artifacts.replaceChildren(...(list.length ? list.map((a) => h('li',
        h('a', { href: `/api/v1/builds/${id}/artifacts/${a.path.split('/').map(encodeURIComponent).join('/')}`, download: a.path.split('/').pop() }, a.path),
        h('span.size', ` ${formatBytes(a.size)}`))) : [h('li.none', build?.state === 'FINISHED' ? 'No artifacts.' : 'Artifacts appear when the build finishes.')]));
    } catch (err) {
      showError(artifacts, err);
    }
  };

  // load reads the build once: on open and after each reconnect.
  const load = async () => {
    try {
      const [b, ev] = await Promise.all([get(`/api/v1/builds/${id}`), get(`/api/v1/builds/${id}/events`)]);
      const last = ev.events.length ? ev.events[ev.events.length - 1].seq : 0;
      let fresh = app.model.fromREST(b, last);
      if (!fresh.status) fresh.status = await statusOf(b);
      const known = app.model.builds.get(id);
      build = known && known.seq >= fresh.seq ? known : fresh;
      app.model.builds.set(id, build);
      app.model.project(build.project).builds.add(id);
      if (!page.isConnected) $main.replaceChildren(page);
      draw();
      await Promise.all([log.resync(), loadArtifacts()]);
    } catch (err) {
      showError($main, err);
    }
  };

  const unsubscribe = app.model.onChange((c) => {
    if (c.type !== 'build' || c.build.id !== id) return;
    const finishedNow = c.build.state === 'FINISHED' && build?.state !== 'FINISHED';
    build = c.build;
    draw();
    if (finishedNow) loadArtifacts();
  });

  const act = async (what, path) => {
    rebuild.disabled = true;
    cancel.disabled = true;
    setText(actionMsg, what === 'rebuild' ? 'Queuing a rebuild…' : 'Canceling…');
    try {
      const b = await post(path);
      if (what === 'rebuild') {
        setText(actionMsg, '');
        navigate(`/builds/${b.id}`);
        return;
      }
      setText(actionMsg, b.state === 'FINISHED' ? 'Canceled.' : 'Cancel requested; the build stops within a second.');
    } catch (err) {
      setText(actionMsg, err.message);
    } finally {
      rebuild.disabled = false;
      if (build) cancel.disabled = build.state === 'FINISHED';
    }
  };
  rebuild.addEventListener('click', () => act('rebuild', `/api/v1/builds/${id}/rebuild`));
  cancel.addEventListener('click', () => act('cancel', `/api/v1/builds/${id}/cancel`));

  app.view = {
    title: `#${id}`,
    onSynced: load,
    onLog: (ev) => {
      if (ev.build?.id === id) log.event(ev.data);
    },
    tick: () => {
      if (build?.state === 'STARTED') draw();
    },
    close: () => {
      unsubscribe();
      log.close();
      if (app.model.pinned === id) app.model.pinned = null;
    },
  };
  pageTitle(`#${id}`);
  if (app.synced && !app.live?.held) load(); // otherwise the coming sync loads it
}

// statusOf derives a REST build's status from the previous finished build
// of its branch (one request, only when no event told it).
async function statusOf(b) {
  if (b.state !== 'FINISHED') return b.state === 'QUEUED' ? 'queued' : 'started';
  if (b.result !== 'passed' && b.result !== 'failed') return b.result === 'canceled' ? 'canceled' : 'errored';
  const q = new URLSearchParams({ state: 'FINISHED', cursor: String(b.id), limit: '20' });
  if (b.branch) q.set('branch', b.branch);
  try {
    const r = await get(`/api/v1/projects/${encodeURIComponent(b.project)}/builds?${q}`);
    const prev = r.builds.find((x) => x.result !== 'canceled' && (x.branch || '') === (b.branch || ''));
    const m = new Model();
    m.putSnapshot(b.project, 0, prev ? [b, prev] : [b]);
    return m.builds.get(b.id).status;
  } catch {
    return b.result;
  }
}

function formatBytes(n) {
  if (n == null) return '';
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

// ---- deliveries page ----------------------------------------------------------

function renderDeliveries() {
  const list = h('ul.deliveries');
  const status = h('p.loading', 'Loading…');
  $main.replaceChildren(h('h1', 'Failed deliveries'),
    h('p.help', 'Messages a sink could not deliver after its retries. Redeliver sends one again now.'), status, list);
  pageTitle('Deliveries');
  const load = async () => {
    try {
      const r = await get('/api/v1/deliveries?status=failed&limit=100');
      const items = r.deliveries || r.items || [];
      status.remove();
      if (!items.length) {
        list.replaceChildren(h('li.none', 'No failed deliveries.'));
        return;
      }
      list.replaceChildren(...items.map((d) => {
        const btn = h('button', { type: 'button' }, 'Redeliver');
        const msg = h('span.action-msg', { role: 'status' });
        btn.addEventListener('click', async () => {
          btn.disabled = true;
          try {
            await post(`/api/v1/deliveries/${d.id}/redeliver`);
            setText(msg, 'Queued for delivery.');
          } catch (err) {
            setText(msg, err.message);
            btn.disabled = false;
          }
        });
        return h('li.delivery', { dataset: { deliveryId: d.id } },
          h('div.d-head', h('strong', d.sink || '?'), ' → ', h('code', d.target || ''), h('span.d-type', d.event_type || '')),
          h('div.d-error', d.last_error || (d.last_status_code ? `HTTP ${d.last_status_code}` : 'no error recorded')),
          h('div.d-meta', `${d.attempt_count ?? d.tries ?? 0} attempts · `, h('time', { datetime: d.updated_at || '' }, ago(d.updated_at))),
          h('div.actions', btn, msg));
      }));
    } catch (err) {
      showError(status, err);
    }
  };
  app.view = { title: 'Deliveries', onSynced: load, close: () => {} };
  if (app.synced) load();
}

// ---- boot ---------------------------------------------------------------------

async function boot() {
  const r = await request('GET', '/session');
  if (r.status === 401) {
    renderSignIn();
    return;
  }
  if (!r.ok) {
    $main.replaceChildren(h('p.error', { role: 'alert' }, `The server answered ${r.status}; reload to try again.`));
    return;
  }
  try {
    await start(await r.json());
  } catch (err) {
    showError($main, err);
    return;
  }
  route();
}

boot();
