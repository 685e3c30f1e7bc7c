// The dashboard's model: projects and their latest builds, filled once
// from the REST API and then only by pushed events. Events are applied by
// seq: an event older than what a build shows is dropped, so a snapshot
// fetched after a reconnect and the events that race with it agree.

import { deriveStatus } from './format.js';

// How many builds of each project the dashboard shows.
export const LATEST = 5;

// A FINISHED build can never change again; its seq is "infinite".
const FINAL = Number.MAX_SAFE_INTEGER;

export class Model {
  constructor() {
    this.projects = new Map(); // name -> {id, name, builds: Set of build ids}
    this.builds = new Map(); // id -> build
    this.listeners = new Set();
  }

  onChange(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  emit(change) {
    for (const fn of this.listeners) fn(change);
  }

  project(name, id) {
    let p = this.projects.get(name);
    if (!p) {
      p = { id, name, builds: new Set() };
      this.projects.set(name, p);
    }
    if (id && !p.id) p.id = id;
    return p;
  }

  // fromREST turns a build of the REST API into the model's shape. seq is
  // what GET /builds/{id}/events said (0 when not known).
  fromREST(b, seq = 0) {
    const prev = this.builds.get(b.id);
    const build = {
      id: b.id,
      number: b.number,
      project: b.project,
      state: b.state,
      result: b.result || null,
      status: null,
      ref: b.ref,
      branch: b.branch || '',
      sha: b.sha,
      author: b.author || '',
      message: b.message || '',
      reason: b.reason || '',
      created_at: b.created_at,
      started_at: b.started_at,
      finished_at: b.finished_at,
      duration_ms: b.duration_ms ?? null,
      seq: b.state === 'FINISHED' ? FINAL : Math.max(seq, 0),
    };
    if (prev) {
      // A snapshot never moves a build back behind an event it already
      // showed; and an event's status (which knows the previous build) wins.
      if (prev.seq > build.seq) return prev;
      if (prev.status && prev.state === build.state) build.status = prev.status;
    }
    return build;
  }

  // putSnapshot stores builds read from the REST API (newest first) and
  // derives the statuses the API does not send.
  putSnapshot(projectName, projectID, list, seqs = new Map()) {
    const p = this.project(projectName, projectID);
    for (const b of list) {
      const build = this.fromREST({ ...b, project: projectName }, seqs.get(b.id) || 0);
      this.builds.set(build.id, build);
      p.builds.add(build.id);
    }
    this.deriveStatuses(p);
    this.trim(p);
    this.emit({ type: 'snapshot', project: projectName });
  }

  // deriveStatuses fills the status of builds that no event described,
  // from the previous finished, not canceled build of the same branch.
  deriveStatuses(p) {
    const list = this.list(p.name, Infinity).slice().sort((a, b) => a.number - b.number);
    const last = new Map(); // branch -> result of the previous counted build
    for (const b of list) {
      if (!b.status || b.state !== 'FINISHED') {
        b.status = b.state === 'FINISHED' ? deriveStatus(b.state, b.result, last.get(b.branch)) : deriveStatus(b.state);
      }
      if (b.state === 'FINISHED' && b.result !== 'canceled') last.set(b.branch, b.result);
    }
  }

  // applyEvent applies a build-state-changed envelope. It returns the
  // build and the status it had before, or null when the event is older
  // than what the model shows.
  applyEvent(ev) {
    const b = ev.build;
    if (!b || typeof b.id !== 'number' || typeof ev.seq !== 'number') return null;
    const cur = this.builds.get(b.id);
    if (cur && ev.seq <= cur.seq) return null;
    const projectName = ev.project?.name || ev.job?.name || cur?.project;
    if (!projectName) return null;
    const build = {
      ...(cur || {}),
      id: b.id,
      number: b.number,
      project: projectName,
      state: b.state,
      result: b.result || null,
      status: b.status,
      ref: b.ref,
      branch: b.branch || '',
      sha: b.sha,
      author: b.author || '',
      message: b.message || '',
      reason: b.reason || '',
      created_at: cur?.created_at || ev.time,
      started_at: b.started_at,
      finished_at: b.finished_at,
      duration_ms: b.duration_ms ?? null,
      seq: ev.seq,
    };
    this.builds.set(build.id, build);
    const p = this.project(projectName, ev.project?.id);
    p.builds.add(build.id);
    this.trim(p);
    const before = cur ? cur.status : null;
    this.emit({ type: 'build', build, before });
    return { build, before };
  }

  // list returns a project's builds, newest first.
  list(name, n = LATEST) {
    const p = this.projects.get(name);
    if (!p) return [];
    const out = [];
    for (const id of p.builds) {
      const b = this.builds.get(id);
      if (b) out.push(b);
    }
    out.sort((a, b) => b.id - a.id);
    return out.slice(0, n);
  }

  // trim forgets builds past the latest few of a project, except pinned
  // ones (the build page's).
  trim(p) {
    const keep = new Set(this.list(p.name, LATEST + 5).map((b) => b.id));
    for (const id of p.builds) {
      if (!keep.has(id) && id !== this.pinned) {
        p.builds.delete(id);
        this.builds.delete(id);
      }
    }
  }

  // projectsNewestFirst orders projects by their newest build; projects
  // without builds come last, by name.
  projectsNewestFirst() {
    const newest = (p) => {
      let max = 0;
      for (const id of p.builds) max = Math.max(max, id);
      return max;
    };
    return [...this.projects.values()].sort((a, b) => newest(b) - newest(a) || a.name.localeCompare(b.name));
  }

  // failing lists the projects whose latest finished build failed.
  failing() {
    const out = [];
    for (const p of this.projects.values()) {
      const done = this.list(p.name, Infinity).find((b) => b.state === 'FINISHED' && b.result !== 'canceled');
      if (done && (done.result === 'failed' || done.result === 'errored')) out.push(p.name);
    }
    return out;
  }

  running() {
    let n = 0;
    for (const b of this.builds.values()) if (b.state === 'STARTED') n++;
    return n;
  }
}
