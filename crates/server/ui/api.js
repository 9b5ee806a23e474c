// The dashboard's only way to the server: the REST API under /v1, with the signed-in user's
// token as a bearer credential. The token lives in sessionStorage (this tab, until it is
// closed or the user signs out); a 401 from any request ends the session.

const KEY = 'thinclone.token';

/** A refusal or failure, carrying the API's own message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(secret) {
  sessionStorage.setItem(KEY, secret);
}

export function clearToken() {
  sessionStorage.removeItem(KEY);
}

let unauthorized = () => {};

/** Sets what happens when the server answers 401 (an expired or revoked token). */
export function onUnauthorized(f) {
  unauthorized = f;
}

/** Calls the API: the decoded JSON answer, or an ApiError with the server's message. */
export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  const secret = token();
  if (secret) headers.Authorization = `Bearer ${secret}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch (e) {
    throw new ApiError(0, 'unreachable', `The server did not answer (${e.message}).`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data && typeof data.error === 'string' ? data.error : `The server answered ${response.status}.`;
    const error = new ApiError(response.status, data && data.code ? data.code : 'error', message);
    if (response.status === 401) unauthorized(error);
    throw error;
  }
  return data;
}

export const get = (path) => api('GET', path);
export const post = (path, body) => api('POST', path, body === undefined ? {} : body);
export const del = (path) => api('DELETE', path);

/** A path segment, escaped. */
export const seg = (s) => encodeURIComponent(s);
