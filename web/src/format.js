// Small formatting helpers: times, durations, statuses.

export function shortSHA(sha) {
  return (sha || '').slice(0, 8);
}

export function firstLine(s) {
  const text = (s || '').trim();
  const i = text.indexOf('\n');
  return i < 0 ? text : text.slice(0, i);
}

export function duration(ms) {
  if (ms == null || ms < 0) return '';
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, '0')}s`;
  const h = Math.floor(m / 60);
  return `${h}h ${String(m % 60).padStart(2, '0')}m`;
}

// ago says how long ago t (an ISO time) was, in words that stay short.
export function ago(t, now = Date.now()) {
  if (!t) return '';
  const s = Math.max(0, Math.round((now - Date.parse(t)) / 1000));
  if (s < 10) return 'just now';
  if (s < 60) return `${s}s ago`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ago`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ago`;
  return `${Math.floor(h / 24)}d ago`;
}

export function fullTime(t) {
  return t ? new Date(t).toLocaleString() : '';
}

const bad = (r) => r === 'failed' || r === 'errored';

// deriveStatus is the server's status rule (builds.DeriveStatus), for
// builds read from the REST API, which does not carry it.
export function deriveStatus(state, result, previous) {
  if (state === 'QUEUED') return 'queued';
  if (state === 'STARTED') return 'started';
  switch (result) {
    case 'passed': return bad(previous) ? 'fixed' : 'passed';
    case 'failed':
      if (previous === 'passed') return 'broken';
      return bad(previous) ? 'still_failing' : 'failed';
    case 'canceled': return 'canceled';
    default: return 'errored';
  }
}

// Labels and tones of statuses; the tone picks the colour, the label is
// what is read out.
export const statusInfo = {
  queued: { label: 'queued', tone: 'idle' },
  started: { label: 'running', tone: 'run' },
  passed: { label: 'passed', tone: 'ok' },
  fixed: { label: 'fixed', tone: 'ok' },
  failed: { label: 'failed', tone: 'bad' },
  broken: { label: 'broken', tone: 'bad' },
  still_failing: { label: 'still failing', tone: 'bad' },
  errored: { label: 'errored', tone: 'bad' },
  canceled: { label: 'canceled', tone: 'idle' },
};

export function isFailure(status) {
  return statusInfo[status]?.tone === 'bad';
}
