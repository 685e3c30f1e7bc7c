// Shared helpers for the client tests: a real `buildbridge serve` in a
// temporary data directory, API calls, and a bare git repository.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import Pusher from 'pusher-js';

const here = dirname(fileURLToPath(import.meta.url));
export const bin = process.env.BUILDBRIDGE_BIN || resolve(here, '../../bin/buildbridge');

export function tempDir(prefix = 'bb-') {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function cli(...args) {
  return execFileSync(bin, args, { encoding: 'utf8', env: { ...process.env, BUILDBRIDGE_CONFIG: '' } }).trim();
}

export async function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
    s.on('error', fail);
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Hub runs `buildbridge serve` and stops it on request.
export class Hub {
  constructor(data, port, args = []) {
    this.data = data;
    this.port = port;
    this.args = args;
    this.base = `http://127.0.0.1:${port}`;
    this.log = '';
  }

  async start() {
    this.proc = spawn(bin, ['serve', '--addr', `127.0.0.1:${this.port}`, '--data', this.data, '--log-format', 'json', ...this.args], {
      env: { ...process.env, BUILDBRIDGE_CONFIG: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.exited = new Promise((r) => this.proc.on('exit', r));
    this.proc.stdout.on('data', (d) => { this.log += d; });
    this.proc.stderr.on('data', (d) => { this.log += d; });
    const deadline = Date.now() + 20000;
    while (Date.now() < deadline) {
      try {
        const r = await fetch(`${this.base}/readyz`);
        if (r.ok) return this;
      } catch { /* not up yet */ }
      if (this.proc.exitCode !== null) break;
      await sleep(50);
    }
    throw new Error(`buildbridge serve did not become ready:\n${this.log}`);
  }

  async stop(signal = 'SIGTERM') {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill(signal);
    await this.exited;
  }

  client(token) {
    return new Client(this.base, token);
  }
}

export class Client {
  constructor(base, token) {
    this.base = base;
    this.token = token;
  }

  async call(method, path, body) {
    const r = await fetch(this.base + path, {
      method,
      headers: { Authorization: `Bearer ${this.token}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    let json;
    try { json = JSON.parse(text); } catch { json = { raw: text }; }
    return { status: r.status, body: json };
  }

  async must(status, method, path, body) {
    const r = await this.call(method, path, body);
    if (r.status !== status) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(r.body)}, want ${status}`);
    return r.body;
  }
}

function git(cwd, ...args) {
  return execFileSync('git', ['-c', 'init.defaultBranch=main', '-c', 'commit.gpgsign=false', ...args], {
    cwd,
    encoding: 'utf8',
    env: { ...process.env, GIT_AUTHOR_NAME: 'Ann Author', GIT_AUTHOR_EMAIL: 'ann@example.com', GIT_COMMITTER_NAME: 'Ann Author', GIT_COMMITTER_EMAIL: 'ann@example.com', HOME: cwd },
  }).trim();
}

// makeRepo makes a bare repository whose main branch has a .buildbridge.yml.
export function makeRepo(buildFile) {
  const root = tempDir('bb-repo-');
  const bare = join(root, 'repo.git');
  const work = join(root, 'work');
  git(root, 'init', '-q', '--bare', bare);
  git(root, 'clone', '-q', bare, work);
  writeFileSync(join(work, '.buildbridge.yml'), buildFile);
  git(work, 'add', '-A');
  git(work, 'commit', '-q', '-m', 'first commit');
  git(work, 'push', '-q', 'origin', 'main');
  return { bare, root, cleanup: () => rmSync(root, { recursive: true, force: true }) };
}

export function readData(data, name) {
  return readFileSync(join(data, name), 'utf8').trim();
}

// connect opens a pusher-js connection configured from the channel info
// (GET /api/v1/user/channel), as a client that hard-codes nothing would.
export async function connect(base, token, info) {
  const p = new Pusher(info.key, {
    cluster: info.cluster,
    wsHost: info.ws_host,
    wsPort: info.ws_port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    channelAuthorization: {
      endpoint: base + info.auth_endpoint,
      transport: 'ajax',
      headers: { Authorization: `Bearer ${token}` },
    },
  });
  await new Promise((ok, fail) => {
    p.connection.bind('connected', ok);
    p.connection.bind('failed', () => fail(new Error('connection failed')));
  });
  return p;
}

// subscribe resolves with the channel once subscribed, or rejects with the
// subscription error in err.detail.
export function subscribe(p, name) {
  return new Promise((ok, fail) => {
    const ch = p.subscribe(name);
    ch.bind('pusher:subscription_succeeded', () => ok(ch));
    ch.bind('pusher:subscription_error', (err) => {
      p.unsubscribe(name);
      fail(Object.assign(new Error(`subscription to ${name} refused: ${JSON.stringify(err)}`), { detail: err }));
    });
  });
}

// until polls fn every 20 ms until it holds or ms pass.
export async function until(what, fn, ms = 20000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (fn()) return;
    await sleep(20);
  }
  throw new Error(`timed out waiting for ${what}`);
}
