'use strict';

// Talks to /api/v1 (docs/api.md). Every failure becomes an ApiError carrying the
// server's message, its stable code, the fields it named and the HTTP status (0 when
// the network failed); messages.js turns those into sentences for the patient.

const API_BASE = '/api/v1';
const NETWORK_ERROR_CODE = 'network_error';
const NETWORK_ERROR_MESSAGE = 'Cannot reach the server';
const GENERIC_ERROR_MESSAGE = 'Something went wrong. Please try again.';
const FALLBACK_MESSAGES = {
  400: 'The request was not accepted.',
  401: 'Please log in.',
  403: 'You may not see this.',
  404: 'This was not found.',
  409: 'This conflicts with existing data.',
  413: 'This is too large.',
  429: 'Too many attempts. Please wait a moment and try again.',
};
const FALLBACK_CODES = {
  400: 'bad_request',
  401: 'unauthorized',
  403: 'forbidden',
  404: 'not_found',
  409: 'conflict',
  413: 'too_large',
  429: 'rate_limited',
};
const UNAUTHORIZED = 401;
const SYMPTOM_LIMIT = 20;
const DIAGNOSIS_LIMIT = 10;
const RETRIES = 2; // for writes that carry an Idempotency-Key
const RETRY_DELAY_MS = 1000;
const SERVICE_UNAVAILABLE = 503;
const BUSY_RETRIES = 2;
const BUSY_WAIT_MAX_SECONDS = 10;
// Seconds until the server signs this token out for inactivity, on every answer to a live token.
const EXPIRES_IN_HEADER = 'X-Session-Expires-In';
const WARNING_HEADER = 'X-Session-Warning-Seconds';
// Downloads: the file's own type first; a refusal still comes as the usual JSON error.
const FHIR_ACCEPT = 'application/fhir+json, application/json;q=0.9';
const CSV_ACCEPT = 'text/csv, application/json;q=0.9';
const FILENAME_STAR = /filename\*\s*=\s*utf-8''([^;]+)/i;
const FILENAME_PLAIN = /filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))/;
const UNSAFE_FILENAME_CHARS = /[\\/:*?"<>|\u0000-\u001f\u007f]+/g;

const hooks = {
  getToken: () => null,
  onUnauthorized: () => {},
  onSessionDeadline: () => {},
};

export class ApiError extends Error {
  constructor(message, { status = 0, code = NETWORK_ERROR_CODE, fields = null } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.fields = fields;
  }
}

export function configureApi({ getToken, onUnauthorized, onSessionDeadline = () => {} }) {
  hooks.getToken = getToken;
  hooks.onUnauthorized = onUnauthorized;
  hooks.onSessionDeadline = onSessionDeadline;
}

export function isAbortError(error) {
  return error?.name === 'AbortError';
}

export async function register({ username, password, displayName, dateOfBirth }, { signal } = {}) {
  const body = { username, password, display_name: displayName };
  if (dateOfBirth) {
    body.date_of_birth = dateOfBirth;
  }
  const response = await send('POST', '/auth/register', {
    body,
    token: null,
    signal,
    idempotent: true,
  });
  return (await readJson(response)).user;
}

export async function createToken({ username, password, otp }, { signal } = {}) {
  const body = otp ? { username, password, otp } : { username, password };
  const response = await send('POST', '/auth/token', { body, token: null, signal });
  return readJson(response);
}

// ---- two-factor sign-in (docs/security.md)

export async function getTwoFactor({ signal } = {}) {
  return readJson(await send('GET', '/me/two-factor', { signal }));
}

export async function beginTwoFactor({ signal } = {}) {
  return readJson(await send('POST', '/me/two-factor', { signal }));
}

export async function confirmTwoFactor(code, { signal } = {}) {
  return readJson(await send('POST', '/me/two-factor/confirm', { body: { code }, signal }));
}

export async function turnOffTwoFactor(code, { signal } = {}) {
  await send('DELETE', '/me/two-factor', { body: { code }, signal });
}

// ---- the recovery key (docs/recovery.md)

export async function getRecoveryKey({ signal } = {}) {
  return readJson(await send('GET', '/account/recovery-key', { signal }));
}

export async function beginRecoveryKey(password, { signal } = {}) {
  return readJson(await send('POST', '/account/recovery-key', { body: { password }, signal }));
}

export async function confirmRecoveryKey(words, { signal } = {}) {
  return readJson(await send('POST', '/account/recovery-key/confirm', { body: { words }, signal }));
}

// Forgot password, with one proof: the recovery key's 12 words (recoveryKey) or the front desk's
// one-time code (deskCode). Signed out: its 401 is the answer about the proof, not the end of a session.
export async function recoverAccount({ username, recoveryKey, deskCode, newPassword }, { signal } = {}) {
  const proof = deskCode === undefined ? { recovery_key: recoveryKey } : { desk_code: deskCode };
  const body = { username, ...proof, new_password: newPassword };
  await send('POST', '/auth/recover', { body, token: null, signal });
}

// ---- hospital-assisted recovery (docs/recovery.md, escrow)

export async function getEscrow({ signal } = {}) {
  return readJson(await send('GET', '/account/escrow', { signal }));
}

export async function setEscrow(enabled, { signal } = {}) {
  return readJson(await send('PUT', '/account/escrow', { body: { enabled }, signal }));
}

// Any call with the token counts as activity: this one is the idle warning's "Stay signed in".
export async function getMe({ signal } = {}) {
  const response = await send('GET', '/me', { signal });
  return (await readJson(response)).user;
}

// Takes the token explicitly: the local session is already gone when this runs.
export async function revokeToken(token) {
  await send('DELETE', '/auth/token', { token, reportUnauthorized: false });
}

// One page, newest first: { records, next_offset (null on the last page), total (when the server counts) }.
export async function listRecords({ signal, limit, offset } = {}) {
  return readJson(await send('GET', `/records${pageQuery({ limit, offset })}`, { signal }));
}

export async function getRecord(id, { signal } = {}) {
  const response = await send('GET', `/records/${encodeURIComponent(id)}`, { signal });
  return readJson(response);
}

// The bytes, as a blob of their real type; `inline` asks for a preview (servers that do not know it send the same).
export async function getAttachment(recordId, n, { signal, inline = false } = {}) {
  const path = `/records/${encodeURIComponent(recordId)}/attachments/${encodeURIComponent(n)}`;
  const response = await send('GET', inline ? `${path}?inline=1` : path, { accept: '*/*', signal });
  return response.blob();
}

// ---- copies to take away (docs/fhir.md)

// The whole record as one FHIR R4 Bundle: { blob, filename }, the file name the server gave it.
export async function downloadRecordFhir({ signal, onProgress } = {}) {
  return download('/records/fhir', { accept: FHIR_ACCEPT, fallbackName: 'medledger-record.json', signal, onProgress });
}

// The access log as `format` ('csv' or 'fhir': AuditEvent resources in a Bundle): { blob, filename }.
export async function downloadAccessLog(format, { signal, onProgress } = {}) {
  const csv = format === 'csv';
  return download(`/access-log?format=${encodeURIComponent(format)}`, {
    accept: csv ? CSV_ACCEPT : FHIR_ACCEPT,
    fallbackName: csv ? 'medledger-access-log.csv' : 'medledger-access-log.json',
    signal,
    onProgress,
  });
}

// ---- patient-controlled access (docs/access.md)

// One page: { requests, next_offset, total } (the last two when the server pages this list).
export async function listAccessRequests({ signal, limit, offset } = {}) {
  return readJson(await send('GET', `/access-requests${pageQuery({ limit, offset })}`, { signal }));
}

// `narrowed` ({ days, scope }, optional) gives less than was asked; without it, as asked.
export async function approveAccessRequest(id, { signal, narrowed } = {}) {
  const response = await send('POST', `/access-requests/${encodeURIComponent(id)}/approve`, {
    body: narrowed ? { days: narrowed.days, scope: narrowed.scope } : undefined,
    signal,
    idempotent: true,
  });
  return readJson(response);
}

export async function declineAccessRequest(id, { signal } = {}) {
  const response = await send('POST', `/access-requests/${encodeURIComponent(id)}/decline`, { signal });
  return readJson(response);
}

// One page: { grants, next_offset, total } (the last two when the server pages this list).
export async function listGrants({ signal, limit, offset } = {}) {
  return readJson(await send('GET', `/grants${pageQuery({ limit, offset })}`, { signal }));
}

export async function createGrant({ doctorId, days, scope }, { signal } = {}) {
  const response = await send('POST', '/grants', {
    body: { doctor_id: doctorId, days, scope },
    signal,
    idempotent: true,
  });
  return readJson(response);
}

export async function revokeGrant(id, { signal } = {}) {
  const response = await send('DELETE', `/grants/${encodeURIComponent(id)}`, { signal });
  return readJson(response);
}

export async function findDoctors(query, { signal } = {}) {
  const response = await send('GET', `/doctors?q=${encodeURIComponent(query)}`, { signal });
  return (await readJson(response)).doctors;
}

// One page, newest first: { entries, next_offset, total (when the server counts) }.
export async function getAccessLog({ signal, limit, offset } = {}) {
  return readJson(await send('GET', `/access-log${pageQuery({ limit, offset })}`, { signal }));
}

// The opt-in and a page of past emergencies: { enabled, emergencies, next_offset, total } (the last two
// when the server pages them).
export async function getEmergencyAccess({ signal, limit, offset } = {}) {
  return readJson(await send('GET', `/emergency-access${pageQuery({ limit, offset })}`, { signal }));
}

export async function setEmergencyAccess(enabled, { signal } = {}) {
  const response = await send('PUT', '/emergency-access', { body: { enabled }, signal });
  return (await readJson(response)).enabled;
}

// ---- symptom profile, matches and chat (docs/api.md, "Matching and chat")

export async function searchSymptoms(query, { signal, limit = SYMPTOM_LIMIT } = {}) {
  const response = await send('GET', `/symptoms?q=${encodeURIComponent(query)}&limit=${limit}`, { signal });
  return (await readJson(response)).symptoms;
}

// ICD-10-CM categories and subcategories for a code (or its start) or words of the description.
export async function searchDiagnoses(query, { signal, limit = DIAGNOSIS_LIMIT } = {}) {
  const response = await send('GET', `/diagnoses?q=${encodeURIComponent(query)}&limit=${limit}`, { signal });
  return (await readJson(response)).diagnoses;
}

export async function getProfile({ signal } = {}) {
  const response = await send('GET', '/profile', { signal });
  return (await readJson(response)).profile;
}

export async function saveProfile({ terms, diagnosis, ageBand, sex, discoverable }, { signal } = {}) {
  const body = { terms, diagnosis, age_band: ageBand, sex, discoverable };
  const response = await send('PUT', '/profile', { body, signal });
  return (await readJson(response)).profile;
}

export async function withdrawProfile({ signal } = {}) {
  await send('DELETE', '/profile', { signal });
}

export async function listMatches(mode, { signal } = {}) {
  const response = await send('GET', `/matches?mode=${encodeURIComponent(mode)}`, { signal });
  return (await readJson(response)).matches;
}

export async function connectTo(pseudonym, { signal } = {}) {
  const response = await send('POST', `/matches/${encodeURIComponent(pseudonym)}/connect`, { signal });
  return (await readJson(response)).connection;
}

export async function listConnections({ signal } = {}) {
  const response = await send('GET', '/connections', { signal });
  return (await readJson(response)).connections;
}

export async function acceptConnection(id, { signal } = {}) {
  const response = await send('POST', `/connections/${encodeURIComponent(id)}/accept`, { signal });
  return (await readJson(response)).connection;
}

export async function declineConnection(id, { signal } = {}) {
  const response = await send('POST', `/connections/${encodeURIComponent(id)}/decline`, { signal });
  return (await readJson(response)).connection;
}

export async function blockPeer(pseudonym, { signal } = {}) {
  await send('POST', '/blocks', { body: { pseudonym }, signal });
}

export async function listBlocks({ signal } = {}) {
  const response = await send('GET', '/blocks', { signal });
  return (await readJson(response)).blocks;
}

export async function unblockPeer(pseudonym, { signal } = {}) {
  await send('DELETE', `/blocks/${encodeURIComponent(pseudonym)}`, { signal });
}

// `device`: this device's id (chat-store.js deviceOf): each device has its own key.
export async function registerChatKey(key, device, { signal } = {}) {
  const response = await send('PUT', '/chat/key', { body: { key, device }, signal });
  return (await readJson(response)).key;
}

// The caller's devices: the current chat key of each, newest first.
export async function listChatDevices({ signal } = {}) {
  const response = await send('GET', '/chat/devices', { signal });
  return (await readJson(response)).devices;
}

// Removes one of the caller's other devices (a lost phone): its key is revoked on the ledger.
export async function removeChatDevice(device, { signal } = {}) {
  const response = await send('DELETE', `/chat/devices/${encodeURIComponent(device)}`, { signal });
  return (await readJson(response)).device;
}

export async function getChatKey(pseudonym, { signal } = {}) {
  const response = await send('GET', `/chat/keys/${encodeURIComponent(pseudonym)}`, { signal });
  return (await readJson(response)).key;
}

// One block of the public ledger, with its transactions (docs/api.md).
export async function getBlock(height, { signal } = {}) {
  const response = await send('GET', `/chain/blocks/${encodeURIComponent(height)}`, { signal });
  return readJson(response);
}

// A write sent with `idempotent: true` carries an Idempotency-Key and is sent again, with the
// same key, when the connection drops: the server does it once and answers the retry alike.
async function send(method, path, options = {}) {
  const { body, signal, accept = 'application/json', reportUnauthorized = true, idempotent = false } = options;
  const token = 'token' in options ? options.token : hooks.getToken();
  const headers = buildHeaders({ token, accept, hasBody: body !== undefined });
  if (idempotent) {
    headers['Idempotency-Key'] = crypto.randomUUID();
  }
  const init = {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    // Bearer token only: never mix in the portal's session cookie.
    credentials: 'omit',
    // Patient data must not land in the browser's HTTP cache.
    cache: 'no-store',
  };
  const response = await fetchWhenFree(API_BASE + path, init, idempotent ? RETRIES : 0, method === 'GET' || idempotent);
  reportDeadline(response, token);
  if (response.ok) {
    return response;
  }
  const error = await toApiError(response);
  if (response.status === UNAUTHORIZED && token && reportUnauthorized) {
    hooks.onUnauthorized(error);
  }
  throw error;
}

// A file the server sends as an attachment: read as it arrives (`onProgress(bytesSoFar, totalOrNull)`),
// named as the server's Content-Disposition names it, else `fallbackName`.
async function download(path, { accept, fallbackName, signal, onProgress = () => {} }) {
  const response = await send('GET', path, { accept, signal });
  const type = response.headers.get('Content-Type') ?? 'application/octet-stream';
  const length = Number.parseInt(response.headers.get('Content-Length') ?? '', 10);
  const total = Number.isFinite(length) && length >= 0 ? length : null;
  const filename = filenameOf(response.headers.get('Content-Disposition')) || fallbackName;
  return { blob: await readBody(response, type, total, onProgress), filename };
}

async function readBody(response, type, total, onProgress) {
  try {
    if (!response.body) {
      return await response.blob();
    }
    const reader = response.body.getReader();
    const chunks = [];
    let received = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        break;
      }
      chunks.push(value);
      received += value.byteLength;
      onProgress(received, total);
    }
    return new Blob(chunks, { type });
  } catch (error) {
    if (isAbortError(error)) {
      throw error;
    }
    throw new ApiError(NETWORK_ERROR_MESSAGE);
  }
}

// The name in `attachment; filename*=UTF-8''...` or `filename="..."`, without any folder part.
function filenameOf(disposition) {
  if (!disposition) {
    return '';
  }
  let name = '';
  const star = FILENAME_STAR.exec(disposition);
  if (star) {
    try {
      name = decodeURIComponent(star[1].trim());
    } catch {
      name = '';
    }
  }
  if (!name) {
    const plain = FILENAME_PLAIN.exec(disposition);
    name = plain ? (plain[1] ?? plain[2] ?? '').replace(/\\(.)/g, '$1') : '';
  }
  return name.replace(UNSAFE_FILENAME_CHARS, '_').replace(/^[.\s]+/, '').trim();
}

function pageQuery({ limit, offset }) {
  const params = new URLSearchParams();
  if (limit) {
    params.set('limit', String(limit));
  }
  if (offset) {
    params.set('offset', String(offset));
  }
  const query = params.toString();
  return query ? `?${query}` : '';
}

function reportDeadline(response, token) {
  const seconds = Number.parseInt(response.headers.get(EXPIRES_IN_HEADER) ?? '', 10);
  const warning = Number.parseInt(response.headers.get(WARNING_HEADER) ?? '', 10);
  if (token && token === hooks.getToken() && Number.isFinite(seconds)) {
    hooks.onSessionDeadline(seconds, Number.isFinite(warning) ? warning : null);
  }
}

function buildHeaders({ token, accept, hasBody }) {
  const headers = { Accept: accept };
  if (token) {
    headers.Authorization = `Bearer ${token}`;
  }
  if (hasBody) {
    headers['Content-Type'] = 'application/json';
  }
  return headers;
}

// A busy server (503 `busy`: no database connection came free, nothing was done) says when to come
// back (Retry-After): a read, or a write with an Idempotency-Key, is sent again, up to BUSY_RETRIES times.
async function fetchWhenFree(url, init, retries, repeatable) {
  for (let attempt = 0; ; attempt += 1) {
    const response = await fetchOrFail(url, init, retries);
    if (response.status !== SERVICE_UNAVAILABLE || !repeatable || attempt >= BUSY_RETRIES) {
      return response;
    }
    const seconds = Number.parseInt(response.headers.get('Retry-After') ?? '', 10);
    const wait = Math.min(Number.isFinite(seconds) && seconds >= 0 ? seconds : 1, BUSY_WAIT_MAX_SECONDS);
    await new Promise((resolve) => setTimeout(resolve, wait * 1000));
    if (init.signal?.aborted) {
      throw new DOMException('The request was aborted.', 'AbortError');
    }
  }
}

async function fetchOrFail(url, init, retries = 0) {
  for (let attempt = 0; ; attempt += 1) {
    try {
      return await fetch(url, init);
    } catch (error) {
      if (isAbortError(error)) {
        throw error;
      }
      if (attempt >= retries) {
        throw new ApiError(NETWORK_ERROR_MESSAGE);
      }
    }
    await new Promise((resolve) => setTimeout(resolve, RETRY_DELAY_MS * (attempt + 1)));
  }
}

async function readJson(response) {
  try {
    return await response.json();
  } catch (error) {
    if (isAbortError(error)) {
      throw error;
    }
    throw new ApiError(GENERIC_ERROR_MESSAGE, { status: response.status, code: 'invalid_response' });
  }
}

async function toApiError(response) {
  const payload = await response.json().catch(() => null);
  const error = payload?.error ?? {};
  const message = typeof error.message === 'string' && error.message
    ? error.message
    : FALLBACK_MESSAGES[response.status] ?? GENERIC_ERROR_MESSAGE;
  const code = typeof error.code === 'string' && error.code
    ? error.code
    : FALLBACK_CODES[response.status] ?? 'server_error';
  const fields = error.fields && typeof error.fields === 'object' ? error.fields : null;
  return new ApiError(message, { status: response.status, code, fields });
}
