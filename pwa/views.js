'use strict';

// Screen builders. Each view takes the router's context (see app.js) plus the
// route's parameters and returns one element; data arriving later is filled in
// only while ctx.signal has not been aborted, i.e. while the screen is current.

import { createToken, downloadRecordFhir, getAttachment, getRecord, listRecords, register } from './api.js';
import { h, mount } from './dom.js';
import { downloadPanel } from './downloads.js';
import { objectUrl, revokeObjectUrls, saveBlob } from './files.js';
import { FORGOT_PASSWORD_HASH, RECOVERY_KEY_HASH } from './recovery.js';
import { authorLine, categoryLabel, formatBytes, isOnLedger, ledgerStatus, shortenHash } from './format.js';
import {
  dateTime, definitionList, errorNotice, errorText, fieldWrappers, flashNotice, formField, hideNotice, isStale,
  loadingIndicator, mergeById, offlineNotice, pageControls, setBusy, showNotice, showOffline, showProblems,
  viewHeading,
} from './ui.js';

const USERNAME_PATTERN = /^[a-z0-9._-]{3,40}$/;
const USERNAME_MAX_LENGTH = 40;
const PASSWORD_MIN_LENGTH = 10;
const RECORDS_HASH = '#/records';
const LOGIN_HASH = '#/login';
const REGISTER_HASH = '#/register';
const NONE_RECORDED = 'None recorded.';
const ACCOUNT_CREATED_MESSAGE = 'Your account was created. Please log in.';
const TWO_FACTOR_REQUIRED = 'two_factor_required';
const EARLIEST_BIRTH = '1900-01-01';
const PAGE_SIZE = 50;
// Shown in the page: images as an <img>, a PDF in a frame (the app's Content-Security-Policy allows
// blob: frames and nothing else, portal/security.py). The frame has no `sandbox` attribute: Chromium's
// PDF viewer refuses a sandboxed frame; the object URL is typed as a PDF, so it is never read as a page.
// Other types are a download only.
const PDF_TYPE = 'application/pdf';
const PREVIEW_TYPES = new Set(['image/png', 'image/jpeg', 'image/webp', PDF_TYPE]);

// What this tab last loaded, so that a refresh without a network keeps it on screen. Memory
// only, for one signed-in user: patient data never goes to storage or a cache (docs/security.md).
const loaded = { userId: null, list: null, records: new Map() };

export function loginView(ctx) {
  ctx.setTitle('Log in');
  // Signed out (or about to sign in as someone else): nothing loaded before stays in memory.
  memoryFor(ctx);
  const fields = {
    username: formField({
      id: 'login-username', label: 'Username', autocomplete: 'username',
      autocapitalize: 'none', spellcheck: 'false', required: true,
    }),
    password: formField({
      id: 'login-password', label: 'Password', type: 'password',
      autocomplete: 'current-password', required: true,
    }),
    // Shown when the server asks for it (two-factor sign-in is on for this account).
    otp: formField({
      id: 'login-otp', label: 'Code from your authenticator app', inputmode: 'numeric',
      autocomplete: 'one-time-code', hint: 'Or one of your recovery codes.',
    }),
  };
  fields.otp.wrapper.hidden = true;
  const status = errorNotice();
  const button = h('button', { type: 'submit', class: 'button button-primary button-block' }, 'Log in');
  const form = h('form', { class: 'card form', novalidate: true },
    status, fieldWrappers(fields), button);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    submitLogin(ctx, { fields, status, button });
  });
  return h('section', { class: 'view view-narrow' },
    viewHeading('Log in'),
    h('p', { class: 'lead' }, 'See your medical records, wherever you are.'),
    ctx.flash && flashNotice(ctx.flash),
    form,
    h('p', { class: 'switch-link' }, h('a', { href: FORGOT_PASSWORD_HASH }, 'Forgot password?')),
    h('p', { class: 'switch-link' }, 'New to MedLedger? ', h('a', { href: REGISTER_HASH }, 'Create an account')));
}

export function registerView(ctx) {
  ctx.setTitle('Create an account');
  const fields = {
    username: formField({
      id: 'register-username', label: 'Username', autocomplete: 'username',
      autocapitalize: 'none', spellcheck: 'false', required: true, maxlength: USERNAME_MAX_LENGTH,
      hint: '3 to 40 characters: lowercase letters, digits, dot, underscore or hyphen.',
    }),
    displayName: formField({
      id: 'register-display-name', label: 'Your name', autocomplete: 'name', required: true,
      hint: 'Shown to the doctors who write your records.',
    }),
    dateOfBirth: formField({
      id: 'register-date-of-birth', label: 'Date of birth', type: 'date', autocomplete: 'bday', required: true,
      min: EARLIEST_BIRTH, max: localToday(),
      hint: 'So that your doctors can tell you apart from someone with the same name.',
    }),
    password: formField({
      id: 'register-password', label: 'Password', type: 'password', autocomplete: 'new-password',
      required: true, minlength: PASSWORD_MIN_LENGTH, hint: `At least ${PASSWORD_MIN_LENGTH} characters.`,
    }),
    confirm: formField({
      id: 'register-confirm', label: 'Repeat the password', type: 'password',
      autocomplete: 'new-password', required: true,
    }),
  };
  const status = errorNotice();
  const button = h('button', { type: 'submit', class: 'button button-primary button-block' }, 'Create account');
  const form = h('form', { class: 'card form', novalidate: true },
    status, fieldWrappers(fields), button);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    submitRegistration(ctx, { fields, status, button });
  });
  return h('section', { class: 'view view-narrow' },
    viewHeading('Create an account'),
    h('p', { class: 'lead' }, 'A patient account lets you read the records your doctors write for you.'),
    form,
    h('p', { class: 'switch-link' }, 'Already have an account? ', h('a', { href: LOGIN_HASH }, 'Log in')));
}

export function recordsView(ctx) {
  ctx.setTitle('My records');
  const page = {
    ctx,
    list: h('div', { class: 'records' }),
    offline: offlineNotice(),
    refresh: h('button', { type: 'button', class: 'button' }, 'Refresh'),
  };
  page.controls = pageControls(() => loadMoreRecords(page));
  page.refresh.addEventListener('click', () => loadRecords(page));
  const remembered = rememberedList(ctx);
  if (remembered) {
    showRecords(page, remembered);
  }
  loadRecords(page);
  return h('section', { class: 'view' },
    h('div', { class: 'view-header' }, viewHeading('My records'), page.refresh),
    ctx.flash && flashNotice(ctx.flash),
    page.offline,
    recordCopyPanel(ctx),
    page.list,
    page.controls.element);
}

// The whole record in the format hospitals' systems read, to keep or to take to another doctor.
function recordCopyPanel(ctx) {
  return downloadPanel(ctx, {
    id: 'record-copy',
    title: 'A copy of your record',
    text: 'All your records in one file, in FHIR R4: the standard format other hospitals\' systems can read.',
    files: [{
      label: 'Download my record (FHIR)',
      busyLabel: 'Preparing your record…',
      failure: 'Your record could not be downloaded.',
      fetch: downloadRecordFhir,
    }],
  });
}

export function recordView(ctx, recordId) {
  ctx.setTitle('Record');
  const heading = viewHeading('Record');
  const offline = offlineNotice();
  const body = h('div', { class: 'record' });
  // Previews are object URLs: let them go with the screen.
  const previews = new Set();
  ctx.signal.addEventListener('abort', () => revokeObjectUrls(previews));
  loadRecord(ctx, recordId, { heading, body, offline, previews });
  return h('section', { class: 'view' },
    h('a', { class: 'back-link', href: RECORDS_HASH }, '← My records'),
    heading,
    offline,
    body);
}

// ---- log in and registration

async function submitLogin(ctx, { fields, status, button }) {
  const values = {
    username: fields.username.input.value.trim(),
    password: fields.password.input.value,
    otp: fields.otp.wrapper.hidden ? '' : fields.otp.input.value.trim(),
  };
  hideNotice(status);
  if (showProblems(fields, loginProblems(values))) {
    return;
  }
  setBusy(button, true, 'Logging in…');
  try {
    ctx.signIn(await createToken(values, { signal: ctx.signal }));
  } catch (error) {
    if (!isStale(ctx, error)) {
      showNotice(status, errorText(error));
      if (error.code === TWO_FACTOR_REQUIRED) {
        fields.otp.wrapper.hidden = false;
      }
      (fields.otp.wrapper.hidden ? fields.password : fields.otp).input.focus();
    }
  } finally {
    setBusy(button, false);
  }
}

async function submitRegistration(ctx, { fields, status, button }) {
  const values = {
    username: fields.username.input.value.trim(),
    displayName: fields.displayName.input.value.trim(),
    dateOfBirth: fields.dateOfBirth.input.value,
    dateTyped: !fields.dateOfBirth.input.validity.badInput,
    password: fields.password.input.value,
    confirm: fields.confirm.input.value,
  };
  hideNotice(status);
  if (showProblems(fields, registrationProblems(values))) {
    return;
  }
  setBusy(button, true, 'Creating your account…');
  try {
    await register(values, { signal: ctx.signal });
  } catch (error) {
    if (!isStale(ctx, error)) {
      showNotice(status, errorText(error));
    }
    setBusy(button, false);
    return;
  }
  try {
    ctx.signIn(await createToken(values, { signal: ctx.signal }), { next: RECOVERY_KEY_HASH });
  } catch (error) {
    if (!isStale(ctx, error)) {
      ctx.navigate(LOGIN_HASH, { flash: ACCOUNT_CREATED_MESSAGE });
    }
  }
}

function loginProblems({ username, password }) {
  return {
    username: username ? null : 'Please enter your username.',
    password: password ? null : 'Please enter your password.',
  };
}

function registrationProblems({ username, displayName, dateOfBirth, dateTyped, password, confirm }) {
  return {
    username: USERNAME_PATTERN.test(username)
      ? null
      : 'Use 3 to 40 characters: lowercase letters, digits, dot, underscore or hyphen.',
    displayName: displayName ? null : 'Please enter your name.',
    dateOfBirth: dateOfBirthProblem(dateOfBirth, dateTyped),
    password: password.length >= PASSWORD_MIN_LENGTH
      ? null
      : `Use at least ${PASSWORD_MIN_LENGTH} characters.`,
    confirm: confirm === password ? null : 'The two passwords do not match.',
  };
}

// The date input gives YYYY-MM-DD, or '' when it is empty or not a whole, real date.
function dateOfBirthProblem(value, typed) {
  if (!value) {
    return typed
      ? 'Please enter your date of birth.'
      : 'Please enter a real date: day, month and a four-digit year.';
  }
  if (value > localToday()) {
    return 'Your date of birth cannot be in the future.';
  }
  if (value < EARLIEST_BIRTH) {
    return 'Please check the year: it must be 1900 or later.';
  }
  return null;
}

function localToday() {
  const now = new Date();
  const pad = (n) => String(n).padStart(2, '0');
  return `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}`;
}

// ---- what this tab remembers

function memoryFor(ctx) {
  const userId = ctx.user?.id ?? null;
  if (loaded.userId !== userId) {
    loaded.userId = userId;
    loaded.list = null;
    loaded.records.clear();
  }
  return loaded;
}

function rememberedList(ctx) {
  return memoryFor(ctx).list;
}

// ---- record list

// The first page again: what was loaded stays on screen until the answer replaces it, and
// stays (with a notice) when there is no network.
async function loadRecords(page) {
  const { ctx, list, refresh } = page;
  setBusy(refresh, true, 'Refreshing…');
  list.setAttribute('aria-busy', 'true');
  if (!list.hasChildNodes()) {
    mount(list, loadingIndicator('Loading your records…'));
  }
  try {
    const answer = await listRecords({ signal: ctx.signal, limit: PAGE_SIZE });
    if (!ctx.signal.aborted) {
      const state = { records: mergeById([], answer.records), ...pageState(answer), at: Date.now() };
      memoryFor(ctx).list = state;
      hideNotice(page.offline);
      showRecords(page, state);
    }
  } catch (error) {
    if (!isStale(ctx, error)) {
      const remembered = rememberedList(ctx);
      if (showOffline(page.offline, error, remembered?.at) && remembered) {
        showRecords(page, remembered);
      } else {
        hideNotice(page.offline);
        mount(list, errorNotice(errorText(error)));
        page.controls.update({ shown: 0, total: null, nextOffset: null });
      }
    }
  } finally {
    list.removeAttribute('aria-busy');
    setBusy(refresh, false);
  }
}

async function loadMoreRecords(page) {
  const { ctx } = page;
  const state = rememberedList(ctx);
  if (state?.nextOffset === null || state?.nextOffset === undefined) {
    return;
  }
  const shownBefore = state.records.length;
  const answer = await listRecords({ signal: ctx.signal, limit: PAGE_SIZE, offset: state.nextOffset });
  if (ctx.signal.aborted) {
    return;
  }
  const next = { records: mergeById(state.records, answer.records), ...pageState(answer), at: Date.now() };
  memoryFor(ctx).list = next;
  hideNotice(page.offline);
  showRecords(page, next);
  // Keyboard and screen-reader users go on where the new records start.
  page.list.querySelectorAll('.record-card')[shownBefore]?.focus();
}

function pageState(answer) {
  return { nextOffset: answer.next_offset ?? null, total: Number.isInteger(answer.total) ? answer.total : null };
}

function showRecords(page, state) {
  mount(page.list, state.records.length ? recordCards(state.records) : emptyRecords());
  page.controls.update({ shown: state.records.length, total: state.total, nextOffset: state.nextOffset });
}

function recordCards(records) {
  return h('ul', { class: 'record-list' }, records.map((record) => h('li', {}, recordCard(record))));
}

function recordCard(record) {
  return h('a', { class: 'card record-card', href: `${RECORDS_HASH}/${encodeURIComponent(record.id)}` },
    h('div', { class: 'chips' },
      h('span', { class: 'chip chip-category' }, categoryLabel(record.category)),
      ledgerChip(record)),
    h('h2', { class: 'record-card-title' }, record.title),
    h('p', { class: 'record-card-meta' }, authorLine(record.author)),
    h('p', { class: 'record-card-meta' }, dateTime(record.created_at)));
}

function emptyRecords() {
  return h('div', { class: 'card empty-state' },
    h('p', { class: 'empty-title' }, 'No records yet'),
    h('p', {}, 'When a doctor writes a record for you, it will appear here.'));
}

// ---- one record

async function loadRecord(ctx, recordId, { heading, body, offline, previews }) {
  const remembered = memoryFor(ctx).records.get(recordId);
  mount(body, loadingIndicator('Loading the record…'));
  try {
    const record = await getRecord(recordId, { signal: ctx.signal });
    if (!ctx.signal.aborted) {
      memoryFor(ctx).records.set(recordId, { record, at: Date.now() });
      showRecord(ctx, record, { heading, body, previews });
    }
  } catch (error) {
    if (!isStale(ctx, error)) {
      if (showOffline(offline, error, remembered?.at) && remembered) {
        showRecord(ctx, remembered.record, { heading, body, previews, offline: true });
      } else {
        mount(body, errorNotice(errorText(error)));
      }
    }
  }
}

function showRecord(ctx, record, { heading, body, previews, offline = false }) {
  heading.textContent = record.title;
  ctx.setTitle(record.title);
  mount(body, recordDetails(ctx, record, { previews, offline }));
}

// Plain words first; the codes and the ledger's proof are under "Details".
function recordDetails(ctx, record, { previews, offline }) {
  return [
    h('div', { class: 'chips' }, h('span', { class: 'chip chip-category' }, categoryLabel(record.category))),
    definitionList([
      ['Date', dateTime(record.created_at)],
      ['Written by', authorLine(record.author)],
    ], 'card record-meta'),
    recordSection('Diagnoses', itemList(record.diagnoses, (item) => item.description || item.code)),
    recordSection('Symptoms', itemList(record.symptoms, (item) => item.name || item.id)),
    recordSection('Notes', record.notes ? h('p', { class: 'notes' }, record.notes) : noneRecorded()),
    recordSection('Prescriptions', prescriptionList(record.prescriptions)),
    recordSection('Attachments', attachmentList(ctx, record, { previews, offline })),
    technicalDetails(record),
  ];
}

function technicalDetails(record) {
  const diagnosisCodes = (record.diagnoses ?? []).map((item) => [codeTag(item.code), ' ', item.description]);
  const symptomCodes = (record.symptoms ?? []).map((item) => [codeTag(item.id), ' ', item.name]);
  return h('details', { class: 'card record-technical' },
    h('summary', {}, 'Details'),
    h('p', { class: 'muted' }, 'The codes your doctor chose, and where this record is kept on the ledger.'),
    definitionList([
      ['Diagnosis codes', diagnosisCodes.length && lines(diagnosisCodes)],
      ['Symptom codes', symptomCodes.length && lines(symptomCodes)],
      ['Ledger', ledgerChip(record)],
      ['Transaction', record.tx_hash
        && h('code', { class: 'hash', title: record.tx_hash }, shortenHash(record.tx_hash))],
    ], 'record-meta'));
}

function lines(items) {
  return h('ul', { class: 'code-list' }, items.map((item) => h('li', {}, item)));
}

function recordSection(title, content) {
  return h('section', { class: 'card record-section' }, h('h2', { class: 'section-title' }, title), content);
}

function itemList(items, describe) {
  if (!items?.length) {
    return noneRecorded();
  }
  return h('ul', { class: 'item-list' }, items.map((item) => h('li', {}, describe(item))));
}

function codeTag(code) {
  return h('span', { class: 'code-tag' }, code);
}

function prescriptionList(prescriptions) {
  if (!prescriptions?.length) {
    return noneRecorded();
  }
  return h('ul', { class: 'prescription-list' }, prescriptions.map((item) => h('li', { class: 'prescription' },
    h('h3', { class: 'prescription-drug' }, item.drug),
    h('p', { class: 'prescription-words' }, prescriptionWords(item)))));
}

// "100 mcg, as needed, for 30 days."
function prescriptionWords(item) {
  const parts = [item.dose, item.frequency, item.duration && `for ${item.duration}`].filter(Boolean);
  return parts.length ? `${parts.join(', ')}.` : '';
}

function attachmentList(ctx, record, { previews, offline }) {
  if (!record.attachments?.length) {
    return noneRecorded();
  }
  return h('ul', { class: 'attachment-list' },
    record.attachments.map((attachment) => attachmentItem(ctx, record.id, attachment, { previews, offline })));
}

function attachmentItem(ctx, recordId, attachment, { previews, offline }) {
  const status = h('p', { class: 'field-error', role: 'alert', hidden: true });
  const button = h('button', {
    type: 'button', class: 'button', 'aria-label': `Download ${attachment.filename}`,
  }, 'Download');
  button.addEventListener('click', () => downloadAttachment(ctx, recordId, attachment, { button, status }));
  const preview = PREVIEW_TYPES.has(attachment.content_type) && !offline
    ? h('div', { class: 'attachment-preview' }, loadingIndicator(`Loading a preview of ${attachment.filename}…`))
    : null;
  if (preview) {
    showPreview(ctx, recordId, attachment, { preview, previews });
  }
  return h('li', { class: 'attachment' },
    h('div', { class: 'attachment-info' },
      h('span', { class: 'attachment-name' }, attachment.filename),
      h('span', { class: 'attachment-meta' }, `${attachment.content_type} · ${formatBytes(attachment.size)}`),
      status),
    button,
    preview);
}

// Fetched with the token like a download; shown from an object URL that goes with the screen.
async function showPreview(ctx, recordId, attachment, { preview, previews }) {
  try {
    const blob = await getAttachment(recordId, attachment.n, { signal: ctx.signal, inline: true });
    if (ctx.signal.aborted) {
      return;
    }
    // The type the record names, never one guessed from the bytes.
    const url = objectUrl(new Blob([blob], { type: attachment.content_type }));
    previews.add(url);
    mount(preview, attachment.content_type === PDF_TYPE
      ? h('iframe', { class: 'attachment-pdf', src: url, title: `Preview of ${attachment.filename} (PDF)` })
      : h('img', { class: 'attachment-image', src: url, alt: `Preview of ${attachment.filename}` }));
  } catch (error) {
    if (!isStale(ctx, error)) {
      mount(preview, h('p', { class: 'muted' }, `No preview: ${errorText(error)}`));
    }
  }
}

async function downloadAttachment(ctx, recordId, attachment, { button, status }) {
  hideNotice(status);
  setBusy(button, true, 'Downloading…');
  try {
    const blob = await getAttachment(recordId, attachment.n, { signal: ctx.signal });
    if (!ctx.signal.aborted) {
      saveBlob(blob, attachment.filename);
    }
  } catch (error) {
    if (!isStale(ctx, error)) {
      showNotice(status, errorText(error));
    }
  } finally {
    setBusy(button, false);
  }
}

// ---- small pieces

function ledgerChip(record) {
  const kind = isOnLedger(record) ? 'chip-ledger' : 'chip-pending';
  return h('span', { class: `chip ${kind}` }, ledgerStatus(record));
}

function noneRecorded() {
  return h('p', { class: 'muted' }, NONE_RECORDED);
}
