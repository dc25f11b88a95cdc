'use strict';

// Every failure the app shows, in plain words, decided here and nowhere else. The server's
// answer (api.js ApiError: status, code, fields, message) is read in this order:
//   1. a code whose meaning is fixed (offline, too fast, server trouble) has its own sentence;
//   2. a refused field has the sentence for that field;
//   3. otherwise the server's own message, when it is written for people (no `code` marks);
//   4. otherwise a sentence for the code or the HTTP status.

export const OFFLINE_MESSAGE = 'You are offline, or the server cannot be reached. '
  + 'Check your connection and try again.';
const GENERIC_MESSAGE = 'Something went wrong. Please try again.';
const INVALID_INPUT_MESSAGE = 'Some of what you entered was not accepted. Please check it and try again.';
const MAX_PLAIN_LENGTH = 300;
const TECHNICAL_MARK = /[`{}<>]|\b[a-z]+_[a-z_]+\b/;

// Codes whose sentence does not depend on the request.
const FIXED_MESSAGES = {
  network_error: OFFLINE_MESSAGE,
  rate_limited: 'You did this too often in a short time. Please wait a minute, then try again.',
  internal: 'Something went wrong on the server. Please try again in a moment.',
  server_error: 'Something went wrong on the server. Please try again in a moment.',
  invalid_response: 'The server sent an answer the app could not read. Please try again in a moment.',
  bad_request: 'The app sent something the server could not read. Please reload the app and try again.',
  invalid_json: 'The app sent something the server could not read. Please reload the app and try again.',
  method_not_allowed: 'The app and the server do not agree. Please reload the app and try again.',
  unsupported_media_type: 'The app and the server do not agree. Please reload the app and try again.',
  too_large: 'This is too large to send.',
  record_unreadable: 'This record cannot be opened right now. Please try again later; '
    + 'if it keeps happening, tell the hospital that wrote it.',
  grant_unusable: 'This access can no longer be used. Please refresh to see who can read your records.',
  reencryption_refused: 'A hospital that helps unlock your records did not answer. Please try again later.',
  idempotency_answer_lost: 'We could not confirm whether this went through. Please refresh and check '
    + 'before trying again.',
  too_many_unread: 'This person has many unread messages already. Please wait for them to reply.',
};

// Used when the server's own message is missing or technical.
const CODE_MESSAGES = {
  unauthorized: 'Please log in again.',
  forbidden: 'You are not allowed to see or do this.',
  not_found: 'This could not be found. It may have been removed.',
  conflict: 'This was changed in the meantime. Please refresh and try again.',
  two_factor_required: 'Please enter the code from your authenticator app.',
};
const STATUS_MESSAGES = {
  400: FIXED_MESSAGES.bad_request,
  401: CODE_MESSAGES.unauthorized,
  403: CODE_MESSAGES.forbidden,
  404: CODE_MESSAGES.not_found,
  409: CODE_MESSAGES.conflict,
  413: FIXED_MESSAGES.too_large,
  422: INVALID_INPUT_MESSAGE,
  429: FIXED_MESSAGES.rate_limited,
};
const SERVER_TROUBLE = 500;
// A slip in the app's own code: its message means nothing to a patient.
const PROGRAM_ERRORS = new Set(['TypeError', 'ReferenceError', 'SyntaxError', 'RangeError']);

// A refused field (its first part: "scope.categories.0" is "scope") and what to do about it.
const FIELD_MESSAGES = {
  days: 'Please choose a whole number of days, from 1 to 365.',
  scope: 'Please choose what the doctor can read again: at least one kind of record, or a first and last date.',
  doctor_id: 'Please search for the doctor again and choose them from the list.',
  username: 'Please check your username: 3 to 40 characters, lowercase letters, digits, dot, underscore or hyphen.',
  password: 'Please check your password: at least 10 characters.',
  new_password: 'Please check your new password: at least 10 characters.',
  recovery_key: 'Please type the 12 words of your recovery key.',
  display_name: 'Please check your name.',
  date_of_birth: 'Please check your date of birth.',
  otp: 'Please check the code from your authenticator app.',
  code: 'Please check the code from your authenticator app.',
  reason: 'Please say why, in a few words.',
  q: 'Please check what you typed in the search.',
  terms: 'Please check the symptoms you chose.',
  diagnosis: 'Please choose the diagnosis from the list again.',
  age_band: 'Please choose your age group again.',
  sex: 'Please choose your sex again.',
  limit: 'The app asked for too much at once. Please reload the app.',
  offset: 'The app asked for a page that does not exist. Please refresh.',
};

// The sentence to show for `error` (an ApiError, or anything thrown).
export function errorMessage(error) {
  const code = error?.code;
  if (code && FIXED_MESSAGES[code]) {
    return FIXED_MESSAGES[code];
  }
  const field = fieldMessage(error?.fields);
  if (field) {
    return field;
  }
  if (isPlain(error?.message) && (error?.status ?? 0) < SERVER_TROUBLE && !PROGRAM_ERRORS.has(error?.name)) {
    return error.message;
  }
  if (error?.status >= SERVER_TROUBLE) {
    return FIXED_MESSAGES.internal;
  }
  return CODE_MESSAGES[code] ?? STATUS_MESSAGES[error?.status] ?? GENERIC_MESSAGE;
}

export function isOffline(error) {
  return error?.code === 'network_error';
}

function fieldMessage(fields) {
  if (!fields || typeof fields !== 'object') {
    return null;
  }
  const names = Object.keys(fields);
  for (const name of names) {
    const known = FIELD_MESSAGES[name.split('.')[0]];
    if (known) {
      return known;
    }
  }
  return names.length ? INVALID_INPUT_MESSAGE : null;
}

function isPlain(message) {
  return typeof message === 'string' && message.length > 0 && message.length <= MAX_PLAIN_LENGTH
    && !TECHNICAL_MARK.test(message);
}
