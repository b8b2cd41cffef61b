// The HTTP API, with the signed-in token attached. Every non-2xx answer
// becomes an ApiError carrying the problem's `detail` and `code`, so the page
// can tell the user what went wrong in words.

// The token lives in sessionStorage: it survives reloads of the tab that is
// kept open all day, but not the closing of the tab or the browser, is not
// shared with other tabs, and is never sent automatically the way a cookie
// would be (no CSRF). A login token is valid for a day anyway.
const TOKEN_KEY = 'murmur.token';
// Set when the token is the server's operator token (from operator.json),
// not a user's: the page then shows the operator's view and nothing of a
// tenant's (the operator token is no user's and /v1/me refuses it).
const OPERATOR_KEY = 'murmur.operator';

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token, { operator = false } = {}) {
  sessionStorage.setItem(TOKEN_KEY, token);
  if (operator) sessionStorage.setItem(OPERATOR_KEY, '1');
  else sessionStorage.removeItem(OPERATOR_KEY);
}

/** Whether the token kept is the operator's (see setToken). */
export function isOperatorToken() {
  return sessionStorage.getItem(OPERATOR_KEY) === '1' && getToken() !== null;
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(OPERATOR_KEY);
}

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail);
    this.status = status;
    this.code = code;
  }
}

// Plain words for the stable problem codes; the server's `detail` follows.
const CODE_WORDS = {
  invalid_request: 'The request was not accepted',
  unauthorized: 'Authentication failed',
  forbidden: 'You are not allowed to do that',
  not_found: 'Not found',
  conflict: 'Not possible right now',
  payload_too_large: 'The file is too large for your plan',
  unsupported_media: 'That kind of file is not supported',
  invalid_audio: 'The file could not be read as audio',
  quota_exceeded: 'Your plan’s limit is reached',
  feature_not_in_tier: 'Not part of your plan',
  model_not_in_tier: 'That model is not part of your plan',
  rate_limited: 'Too many requests; try again shortly',
  unavailable: 'The service is busy or unavailable',
  internal: 'Something went wrong on the server',
};

/** A sentence for the user from any error. */
export function describeError(err) {
  if (err instanceof ApiError) {
    const lead = CODE_WORDS[err.code] || `Request failed (${err.status})`;
    return err.message && err.message !== lead ? `${lead}: ${err.message}` : lead;
  }
  if (err instanceof TypeError) return 'Could not reach the server. Check your connection.';
  return err?.message || String(err);
}

let onUnauthorized = () => {};

/** Called when a request with a token answers 401 (expired or revoked). */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

async function problemFrom(res) {
  let code = '';
  let detail = res.statusText;
  try {
    const body = await res.json();
    code = body.code || '';
    detail = body.detail || body.title || detail;
  } catch {
    // Not JSON (a proxy's page, say): keep the status text.
  }
  return new ApiError(res.status, code, detail);
}

/**
 * fetch() against the API. `body` objects are sent as JSON, FormData as is.
 * Answers the Response; throws ApiError on a non-2xx answer.
 */
export async function request(method, path, {
  body, auth = true, signal, token: given,
} = {}) {
  const headers = {};
  // `token`: one to try instead of the kept one (the operator's, before
  // it is kept).
  const token = given ?? getToken();
  if (auth && token) headers.authorization = `Bearer ${token}`;
  let payload = body;
  if (body !== undefined && !(body instanceof FormData)) {
    headers['content-type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  let res = await fetch(path, { method, headers, body: payload, signal });
  if (res.status === 401 && auth && token) {
    // Ask once more before ending the session: the server has been seen to
    // refuse a valid token now and then when its CPU is starved (its token
    // check runs under a time limit), and the request had no effect, as
    // authentication comes first. A token that is really dead fails again.
    await new Promise((r) => setTimeout(r, 300));
    res = await fetch(path, { method, headers, body: payload, signal });
  }
  if (!res.ok) {
    const err = await problemFrom(res);
    if (res.status === 401 && auth && token) onUnauthorized(err);
    throw err;
  }
  return res;
}

/** Whether the server still accepts our token (asked twice, see request). */
export async function tokenStillGood() {
  try {
    await request('GET', '/v1/me');
    return true;
  } catch (err) {
    return !(err instanceof ApiError && err.status === 401);
  }
}

export async function getJSON(path) {
  return (await request('GET', path)).json();
}

export async function sendJSON(method, path, body, opts = {}) {
  const res = await request(method, path, { body, ...opts });
  return res.status === 204 ? null : res.json();
}

/** The bytes of an authenticated URL, as a Blob. */
export async function getBlob(path) {
  return (await request('GET', path)).blob();
}

/**
 * Uploads a file with progress (fetch cannot report upload progress).
 * Resolves to the file record; rejects with ApiError.
 */
export function upload(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', '/v1/files');
    const token = getToken();
    if (token) xhr.setRequestHeader('authorization', `Bearer ${token}`);
    xhr.responseType = 'json';
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    };
    xhr.onload = () => {
      if (xhr.status === 201) {
        resolve(xhr.response);
        return;
      }
      const body = xhr.response || {};
      const err = new ApiError(xhr.status, body.code || '', body.detail || xhr.statusText);
      if (xhr.status === 401 && token) {
        // Confirmed (and the session ended) by /v1/me; otherwise a retry helps.
        tokenStillGood().then((good) => reject(good
          ? new ApiError(401, 'unauthorized', 'the server refused the upload for a moment; please try again')
          : err));
        return;
      }
      reject(err);
    };
    xhr.onerror = () => reject(new TypeError('network error'));
    const form = new FormData();
    form.append('file', file, file.name);
    xhr.send(form);
  });
}
