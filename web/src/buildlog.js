// A build's live log. Offsets are bytes of the stored log: build-log
// events carry {offset, text}; a chunk that starts where the page's copy
// ends is appended, a repeat is dropped, and a gap (or a reconnect) is
// filled by one GET …/log?offset=<next>. The lines "==> step NAME" the
// runner writes give the list of steps.

const encoder = new TextEncoder();
const STEP = /^==> step (.+)$/;
const FOLLOW_SLACK = 40; // px from the bottom that still counts as following

export class BuildLog {
  // fetchFrom(offset) returns the response of GET …/log?offset=offset.
  constructor(buildID, pre, fetchFrom) {
    this.id = buildID;
    this.pre = pre;
    this.fetchFrom = fetchFrom;
    this.next = 0; // bytes of the log the page holds
    this.partial = ''; // the last line, while it has no newline yet
    this.steps = [];
    this.fetching = null; // the running fetch, while events wait
    this.waiting = [];
    this.closed = false;
    this.onSteps = () => {};
  }

  close() {
    this.closed = true;
  }

  // event takes the data of a build-log event.
  event(chunk) {
    if (!chunk || typeof chunk.offset !== 'number' || typeof chunk.text !== 'string') return;
    if (this.fetching) {
      this.waiting.push(chunk);
      return;
    }
    const bytes = encoder.encode(chunk.text);
    const end = chunk.offset + bytes.length;
    if (end <= this.next) return; // already shown
    if (chunk.offset > this.next) {
      this.resync(); // a gap: read what is missing once; later events wait for it
      this.waiting.push(chunk);
      return;
    }
    const fresh = chunk.offset === this.next ? chunk.text : new TextDecoder().decode(bytes.subarray(this.next - chunk.offset));
    this.append(fresh, end);
  }

  // resync reads the log from where the page's copy ends to the end of
  // what is stored (in pieces of at most 1 MiB, as the API serves them),
  // then applies the events that came meanwhile.
  resync() {
    if (this.fetching) return this.fetching;
    this.fetching = (async () => {
      await null; // so that this.fetching is set before the finally below runs
      try {
        for (let i = 0; i < 64 && !this.closed; i++) {
          const r = await this.fetchFrom(this.next);
          const text = await r.text();
          const next = Number(r.headers.get('X-Log-Next-Offset'));
          const size = Number(r.headers.get('X-Log-Size'));
          if (!Number.isFinite(next) || next <= this.next) break;
          this.append(text, next);
          if (!(next < size)) break;
        }
      } finally {
        this.fetching = null;
        const waiting = this.waiting;
        this.waiting = [];
        for (const c of waiting) this.event(c);
      }
    })();
    return this.fetching;
  }

  append(text, end) {
    if (this.closed) return;
    const pre = this.pre;
    const follow = pre.scrollHeight - pre.scrollTop - pre.clientHeight < FOLLOW_SLACK;
    if (text) pre.append(document.createTextNode(text));
    this.next = end;
    const before = this.steps.length;
    const lines = (this.partial + text).split('\n');
    this.partial = lines.pop();
    for (const line of lines) {
      const m = line.match(STEP);
      if (m) this.steps.push(m[1]);
    }
    if (this.steps.length !== before) this.onSteps();
    if (follow) pre.scrollTop = pre.scrollHeight;
  }
}
