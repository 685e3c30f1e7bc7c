// Calls to the hub with the session cookie. State-changing calls carry the
// session's CSRF token; every error becomes an ApiError with the server's
// message.

let csrf = '';

export function setCSRF(token) {
  csrf = token || '';
}

export function csrfToken() {
  return csrf;
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// request calls path and returns the response (ok or not) for the caller
// to read; network failures become ApiError with status 0.
export async function request(method, path, { body, headers = {} } = {}) {
  const h = { Accept: 'application/json', ...headers };
  if (method !== 'GET' && method !== 'HEAD') h['X-CSRF-Token'] = csrf;
  if (body !== undefined) h['Content-Type'] = 'application/json';
  try {
    return await fetch(path, {
      method,
      headers: h,
      credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, 'network', `cannot reach the server (${err.message})`);
  }
}

async function fail(r) {
  let code = 'http_' + r.status;
  let message = `${r.status} ${r.statusText}`;
  try {
    const j = await r.json();
    if (j && j.error) {
      code = j.error.code || code;
      message = j.error.message || message;
    }
  } catch { /* not JSON */ }
  return new ApiError(r.status, code, message);
}

// json calls path and returns its JSON body, or throws ApiError.
export async function json(method, path, body) {
  const r = await request(method, path, { body });
  if (!r.ok) throw await fail(r);
  if (r.status === 204) return null;
  return r.json();
}

// text calls path and returns the response, or throws ApiError.
export async function raw(method, path) {
  const r = await request(method, path);
  if (!r.ok) throw await fail(r);
  return r;
}

export const get = (path) => json('GET', path);
export const post = (path, body) => json('POST', path, body);
