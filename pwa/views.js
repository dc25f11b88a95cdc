'use strict';

// Screen builders. Each view takes the router's context (see app.js) plus the
// route's parameters and returns one element; data arriving later is filled in
// only while ctx.signal has not been aborted, i.e. while the screen is current.

import { createToken, getAttachment, getRecord, listRecords, register } from './api.js';
import { h, mount } from './dom.js';
import { saveBlob } from './files.js';
import { authorLine, categoryLabel, formatBytes, isOnLedger, ledgerStatus, shortenHash } from './format.js';
import {
  dateTime, definitionList, errorNotice, errorText, fieldWrappers, flashNotice, formField, hideNotice, isStale,
  loadingIndicator, setBusy, showNotice, showProblems, viewHeading,
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

export function loginView(ctx) {
  ctx.setTitle('Log in');
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
  const list = h('div', { class: 'records' });
  const refresh = h('button', { type: 'button', class: 'button' }, 'Refresh');
  refresh.addEventListener('click', () => loadRecords(ctx, list, refresh));
  loadRecords(ctx, list, refresh);
  return h('section', { class: 'view' },
    h('div', { class: 'view-header' }, viewHeading('My records'), refresh),
    ctx.flash && flashNotice(ctx.flash),
    list);
}

export function recordView(ctx, recordId) {
  ctx.setTitle('Record');
  const heading = viewHeading('Record');
  const body = h('div', { class: 'record' });
  loadRecord(ctx, recordId, { heading, body });
  return h('section', { class: 'view' },
    h('a', { class: 'back-link', href: RECORDS_HASH }, '← My records'),
    heading,
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
    ctx.signIn(await createToken(values, { signal: ctx.signal }));
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

function registrationProblems({ username, displayName, password, confirm }) {
  return {
    username: USERNAME_PATTERN.test(username)
      ? null
      : 'Use 3 to 40 characters: lowercase letters, digits, dot, underscore or hyphen.',
    displayName: displayName ? null : 'Please enter your name.',
    password: password.length >= PASSWORD_MIN_LENGTH
      ? null
      : `Use at least ${PASSWORD_MIN_LENGTH} characters.`,
    confirm: confirm === password ? null : 'The two passwords do not match.',
  };
}

// ---- record list

async function loadRecords(ctx, list, refresh) {
  setBusy(refresh, true, 'Refreshing…');
  list.setAttribute('aria-busy', 'true');
  if (!list.hasChildNodes()) {
    mount(list, loadingIndicator('Loading your records…'));
  }
  try {
    const records = await listRecords({ signal: ctx.signal });
    if (!ctx.signal.aborted) {
      mount(list, records.length ? recordCards(records) : emptyRecords());
    }
  } catch (error) {
    if (!isStale(ctx, error)) {
      mount(list, errorNotice(errorText(error)));
    }
  } finally {
    list.removeAttribute('aria-busy');
    setBusy(refresh, false);
  }
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

async function loadRecord(ctx, recordId, { heading, body }) {
  mount(body, loadingIndicator('Loading the record…'));
  try {
    const record = await getRecord(recordId, { signal: ctx.signal });
    if (!ctx.signal.aborted) {
      heading.textContent = record.title;
      ctx.setTitle(record.title);
      mount(body, recordDetails(ctx, record));
    }
  } catch (error) {
    if (!isStale(ctx, error)) {
      mount(body, errorNotice(errorText(error)));
    }
  }
}

function recordDetails(ctx, record) {
  return [
    h('div', { class: 'chips' },
      h('span', { class: 'chip chip-category' }, categoryLabel(record.category)),
      ledgerChip(record)),
    definitionList([
      ['Date', dateTime(record.created_at)],
      ['Written by', authorLine(record.author)],
      ['Transaction', record.tx_hash && h('code', { class: 'hash', title: record.tx_hash }, shortenHash(record.tx_hash))],
    ], 'card record-meta'),
    recordSection('Diagnoses', itemList(record.diagnoses, (item) => [codeTag(item.code), item.description])),
    recordSection('Symptoms', itemList(record.symptoms, (item) => [codeTag(item.id), item.name])),
    recordSection('Notes', record.notes ? h('p', { class: 'notes' }, record.notes) : noneRecorded()),
    recordSection('Prescriptions', prescriptionList(record.prescriptions)),
    recordSection('Attachments', attachmentList(ctx, record)),
  ];
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
    definitionList([['Dose', item.dose], ['How often', item.frequency], ['For how long', item.duration]],
      'prescription-details'))));
}

function attachmentList(ctx, record) {
  if (!record.attachments?.length) {
    return noneRecorded();
  }
  return h('ul', { class: 'attachment-list' },
    record.attachments.map((attachment) => attachmentItem(ctx, record.id, attachment)));
}

function attachmentItem(ctx, recordId, attachment) {
  const status = h('p', { class: 'field-error', role: 'alert', hidden: true });
  const button = h('button', {
    type: 'button', class: 'button', 'aria-label': `Download ${attachment.filename}`,
  }, 'Download');
  button.addEventListener('click', () => downloadAttachment(ctx, recordId, attachment, { button, status }));
  return h('li', { class: 'attachment' },
    h('div', { class: 'attachment-info' },
      h('span', { class: 'attachment-name' }, attachment.filename),
      h('span', { class: 'attachment-meta' }, `${attachment.content_type} · ${formatBytes(attachment.size)}`),
      status),
    button);
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
