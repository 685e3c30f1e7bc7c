// Build rows: one element per build, created once and patched in place as
// events arrive, at a fixed height so nothing around them moves.

import { h, setText, setAttr } from './dom.js';
import { ago, duration, firstLine, fullTime, shortSHA, statusInfo } from './format.js';

export function statusPill(status, extraClass = '') {
  const el = h('span.pill' + extraClass);
  patchPill(el, status);
  return el;
}

export function patchPill(el, status) {
  const info = statusInfo[status] || { label: status || '…', tone: 'idle' };
  setAttr(el, 'data-tone', info.tone);
  setText(el, info.label);
}

// elapsed is a build's duration: final when it finished, growing while it
// runs (from the local clock, no request).
export function elapsed(b, now = Date.now()) {
  if (b.duration_ms != null) return duration(b.duration_ms);
  if (b.state === 'STARTED' && b.started_at) return duration(now - Date.parse(b.started_at));
  return '';
}

export function buildRow(b) {
  const el = h('li.build', { dataset: { buildId: b.id } },
    h('a.row', { href: `/builds/${b.id}` },
      statusPill(b.status),
      h('span.num'),
      h('span.branch'),
      h('code.sha'),
      h('span.msg'),
      h('span.author'),
      h('span.dur'),
      h('time.when'),
    ));
  patchRow(el, b);
  return el;
}

export function patchRow(el, b, now = Date.now()) {
  const a = el.firstChild;
  const [pill, num, branch, sha, msg, author, dur, when] = a.children;
  setAttr(el, 'data-state', b.state);
  setAttr(el, 'data-status', b.status || '');
  patchPill(pill, b.status);
  setText(num, `#${b.number}`);
  setText(branch, b.branch || b.ref || '');
  setAttr(branch, 'title', b.ref || '');
  setText(sha, shortSHA(b.sha));
  setText(msg, firstLine(b.message) || '(no message)');
  setAttr(msg, 'title', firstLine(b.message));
  setText(author, b.author);
  setText(dur, elapsed(b, now));
  const t = b.finished_at || b.started_at || b.created_at;
  setAttr(when, 'datetime', t || '');
  setAttr(when, 'title', fullTime(t));
  setText(when, ago(t, now));
  const label = `${b.project} #${b.number} ${statusInfo[b.status]?.label || b.state}, ${b.branch || b.ref}, ${firstLine(b.message)}`;
  setAttr(a, 'aria-label', label);
}
