'use strict';

// The patient decides who reads their records (docs/access.md): requests waiting
// for an answer, the doctors who can read now, past grants, granting a doctor
// directly and the emergency (break-glass) switch; and the access log, every
// read of their records by someone else. Views follow views.js: they take the
// router's context and fill in data only while ctx.signal is not aborted.

import {
  approveAccessRequest, createGrant, declineAccessRequest, downloadAccessLog, findDoctors, getAccessLog,
  getEmergencyAccess, listAccessRequests, listGrants, listRecords, revokeGrant, setEmergencyAccess,
} from './api.js';
import { h, mount } from './dom.js';
import { downloadPanel } from './downloads.js';
import {
  authorLine, capitalise, categoryLabel, daysText, formatDateTime, formatFromNow, personWithHospital, scopeText,
} from './format.js';
import { accountEventCard } from './recovery.js';
import {
  SEARCH_MIN_CHARS, dateTime, definitionList, errorNotice, errorText, flashNotice, formField, hideNotice, isStale,
  loadingIndicator, mergeById, pageControls, searchAsYouType, setBusy, showNotice, viewHeading,
} from './ui.js';

const CATEGORIES = [
  'general', 'cardiology', 'respiratory', 'neurology', 'oncology', 'paediatrics', 'psychiatry', 'surgery',
  'laboratory', 'imaging', 'other',
];
const DEFAULT_DAYS = 30;
const MIN_DAYS = 1;
const MAX_DAYS = 365;
const RECORD_TITLES_LIMIT = 200;
const PAGE_SIZE = 50;
const DAY_MS = 24 * 60 * 60 * 1000;
const RECORDS_HASH = '#/records';
const EMERGENCY_EXPLANATION = 'If you are brought in unconscious, a doctor can open your records for 4 hours '
  + 'after writing down why. You are told at once and every read shows in your access log. '
  + 'Switching this off takes effect immediately.';
const EMERGENCY_ON_MESSAGE = 'Emergency access is on.';
const EMERGENCY_OFF_MESSAGE = 'Emergency access is off. No doctor can use it from now on.';
const NOBODY_READ = 'Nobody but you has opened your records.';
const READ_MODES = {
  grant: { label: 'Read under your grant', chip: 'chip-grant' },
  emergency: { label: 'Read with emergency access', chip: 'chip-emergency' },
  author: { label: 'Read as the author', chip: 'chip-author' },
};
const SCOPE_CHOICES = [
  { value: 'all', label: 'All my records' },
  { value: 'categories', label: 'Only some kinds of records' },
  { value: 'dates', label: 'Only records from certain dates' },
];

// ---- the Access screen

export function accessView(ctx) {
  ctx.setTitle('Access');
  const page = {
    ctx,
    status: statusNotice(),
    emergencyStatus: statusNotice(),
    requests: h('div', { class: 'access-list' }),
    grants: h('div', { class: 'access-list' }),
    past: h('div'),
    emergency: h('div', { class: 'emergency-settings' }),
    refresh: h('button', { type: 'button', class: 'button' }, 'Refresh'),
    // What is loaded of each list, a page at a time ({ items, nextOffset }).
    loaded: { requests: null, grants: null, emergencies: null },
    emergencyList: h('div'),
  };
  page.requestPages = pageControls(() => loadMoreAccess(page, 'requests'));
  page.grantPages = pageControls(() => loadMoreAccess(page, 'grants'));
  page.emergencyPages = pageControls(() => loadMoreEmergencies(page));
  page.refresh.addEventListener('click', () => refreshAccess(page));
  loadGrantsAndRequests(page);
  loadEmergency(page);
  return h('section', { class: 'view' },
    h('div', { class: 'view-header' }, viewHeading('Access'), page.refresh),
    h('p', { class: 'lead' }, 'You decide which doctors can read your records, and for how long.'),
    ctx.flash && flashNotice(ctx.flash),
    page.status,
    accessSection('access-requests', 'Requests waiting for you', page.requests, page.requestPages.element),
    accessSection('access-grants', 'Doctors who can read your records', page.grants, page.past,
      page.grantPages.element),
    accessSection('access-give', 'Give a doctor access', grantForm(page)),
    accessSection('access-emergency', 'Emergency access', page.emergencyStatus, page.emergency));
}

async function refreshAccess(page) {
  hideNotice(page.status);
  hideNotice(page.emergencyStatus);
  setBusy(page.refresh, true, 'Refreshing…');
  await Promise.all([loadGrantsAndRequests(page), loadEmergency(page)]);
  setBusy(page.refresh, false);
}

function accessSection(id, title, ...content) {
  return h('section', { class: 'access-section', 'aria-labelledby': id },
    h('h2', { id, class: 'section-title' }, title),
    content);
}

function statusNotice() {
  return h('p', { class: 'notice notice-info', role: 'status', tabindex: '-1', hidden: true });
}

// A finished action: say what happened, and move focus there (the button pressed is gone).
function announce(notice, text) {
  showNotice(notice, text);
  notice.focus();
}

async function loadGrantsAndRequests(page) {
  const { ctx } = page;
  const targets = [page.requests, page.grants];
  startLoading(page.requests, 'Loading requests…');
  startLoading(page.grants, 'Loading who can read your records…');
  try {
    const [requests, grants] = await Promise.all([
      listAccessRequests({ signal: ctx.signal, limit: PAGE_SIZE }),
      listGrants({ signal: ctx.signal, limit: PAGE_SIZE }),
    ]);
    if (!ctx.signal.aborted) {
      page.loaded.requests = { items: mergeById([], requests.requests), nextOffset: requests.next_offset ?? null };
      page.loaded.grants = { items: mergeById([], grants.grants), nextOffset: grants.next_offset ?? null };
      showRequests(page);
      showGrants(page);
    }
  } catch (error) {
    if (!isStale(ctx, error)) {
      targets.forEach((element) => mount(element, errorNotice(errorText(error))));
    }
  } finally {
    targets.forEach((element) => element.removeAttribute('aria-busy'));
  }
}

// The next page of requests or grants, added to what is shown (each once).
async function loadMoreAccess(page, kind) {
  const { ctx } = page;
  const loaded = page.loaded[kind];
  if (loaded?.nextOffset === null || loaded?.nextOffset === undefined) {
    return;
  }
  const fetchPage = kind === 'requests' ? listAccessRequests : listGrants;
  const answer = await fetchPage({ signal: ctx.signal, limit: PAGE_SIZE, offset: loaded.nextOffset });
  if (!ctx.signal.aborted) {
    page.loaded[kind] = { items: mergeById(loaded.items, answer[kind]), nextOffset: answer.next_offset ?? null };
    (kind === 'requests' ? showRequests : showGrants)(page);
  }
}

// Only pending requests are shown, and grants are split in two, so a count of all would
// mislead: these lists offer "Load more" without "Showing n of m".
function showRequests(page) {
  const { items, nextOffset } = page.loaded.requests;
  mount(page.requests, pendingRequests(page, items.filter((item) => item.status === 'pending')));
  page.requestPages.update({ shown: items.length, total: null, nextOffset });
}

function showGrants(page) {
  const { items, nextOffset } = page.loaded.grants;
  mount(page.grants, activeGrants(page, items.filter((grant) => grant.status === 'active')));
  mount(page.past, pastGrants(items.filter((grant) => grant.status !== 'active')));
  page.grantPages.update({ shown: items.length, total: null, nextOffset });
}

function startLoading(element, text) {
  element.setAttribute('aria-busy', 'true');
  if (!element.hasChildNodes()) {
    mount(element, loadingIndicator(text));
  }
}

// ---- requests

function pendingRequests(page, requests) {
  if (!requests.length) {
    return h('p', { class: 'muted' }, 'No doctor is waiting for an answer.');
  }
  return h('ul', { class: 'card-list' }, requests.map((item) => h('li', {}, requestCard(page, item))));
}

function requestCard(page, item) {
  const approve = h('button', { type: 'button', class: 'button button-primary' }, 'Approve');
  const decline = h('button', { type: 'button', class: 'button' }, 'Decline');
  const actions = h('div', { class: 'actions' }, approve, decline);
  const approval = approvalStep(page, item, { actions, returnFocus: approve });
  const confirm = confirmStep(page.ctx, {
    actions,
    returnFocus: decline,
    question: `Decline the request from ${item.doctor.display_name}?`,
    detail: 'They will not be able to read your records. They can ask again later.',
    confirmLabel: 'Decline request',
    busyLabel: 'Declining…',
    cancelLabel: 'Keep the request',
    danger: true,
    onConfirm: () => declineRequest(page, item),
  });
  approve.addEventListener('click', () => {
    confirm.close({ quiet: true });
    approval.open();
  });
  decline.addEventListener('click', () => {
    approval.close({ quiet: true });
    confirm.open();
  });
  return h('article', { class: 'card access-card', 'aria-label': `Request from ${item.doctor.display_name}` },
    doctorHeading(item.doctor),
    definitionList([
      ['Reason', h('span', { class: 'reason' }, item.reason)],
      ['Asks to read', scopeText(item.scope)],
      ['For', daysText(item.days)],
      ['Asked on', dateTime(item.created_at)],
    ], 'access-details'),
    actions,
    approval.panel,
    confirm.panel);
}

// Approving shows what the doctor will get, as giving access directly does; the patient may
// give less than asked (fewer kinds of records, a shorter span of dates, fewer days).
function approvalStep(page, item, { actions, returnFocus }) {
  const prefix = `approve-${item.id}`;
  const asked = item.scope ?? { type: 'all' };
  const fields = {
    scope: scopeFields({ prefix, ...narrowerChoices(asked) }),
    days: formField({
      id: `${prefix}-days`, label: 'For how many days', type: 'number', inputmode: 'numeric',
      min: MIN_DAYS, max: item.days, step: 1, value: item.days, required: true,
      hint: `Up to ${daysText(item.days)}, as asked. You can revoke it sooner at any time.`,
    }),
    note: h('p', { class: 'confirm-detail' },
      'You can give less than asked: fewer kinds of records, fewer dates or fewer days.'),
  };
  fields.box = h('div', { class: 'narrowing' }, fields.scope.element, fields.days.wrapper);
  const step = confirmStep(page.ctx, {
    actions,
    returnFocus,
    question: approvalQuestion(item, { scope: asked, days: item.days }),
    body: [fields.note, fields.box],
    confirmLabel: 'Approve',
    busyLabel: 'Approving…',
    cancelLabel: 'Cancel',
    onConfirm: () => approveRequest(page, item, { step, fields }),
  });
  const update = () => {
    const narrowed = readNarrowing(item, fields, { quiet: true });
    if (narrowed) {
      step.setQuestion(approvalQuestion(item, narrowed));
    }
  };
  fields.box.addEventListener('input', update);
  fields.box.addEventListener('change', update);
  return step;
}

function approvalQuestion(item, { scope, days }) {
  return `Give ${personWithHospital(item.doctor)} access to ${scopeText(scope).toLowerCase()} for `
    + `${daysText(days)}, until ${formatDateTime(new Date(Date.now() + days * DAY_MS).toISOString())}?`;
}

// What may be chosen within what the doctor asked for.
function narrowerChoices(asked) {
  if (asked.type === 'categories') {
    return { choices: ['categories'], categories: asked.categories ?? [], initial: asked };
  }
  if (asked.type === 'dates') {
    return { choices: ['dates'], initial: asked, dateBounds: { from: asked.from, to: asked.to } };
  }
  return { choices: SCOPE_CHOICES.map((choice) => choice.value), initial: { type: 'all' } };
}

// { scope, days } as chosen, or null after marking the problem (`quiet`: without marking,
// while the patient is still typing).
function readNarrowing(item, fields, { quiet = false } = {}) {
  const scope = quiet ? fields.scope.peek() : fields.scope.read();
  const days = Number(fields.days.input.value);
  const daysOk = Number.isInteger(days) && days >= MIN_DAYS && days <= item.days;
  if (!quiet) {
    fields.days.setError(daysOk ? null : `Please enter a whole number of days from ${MIN_DAYS} to ${item.days}.`);
    if (!scope) {
      fields.scope.firstInvalid()?.focus();
    } else if (!daysOk) {
      fields.days.input.focus();
    }
  }
  return scope && daysOk ? { scope, days } : null;
}

function isNarrowed(item, chosen) {
  return chosen.days !== item.days || sameScopeKey(chosen.scope) !== sameScopeKey(item.scope ?? { type: 'all' });
}

function sameScopeKey(scope) {
  const categories = [...(scope.categories ?? [])].sort();
  return JSON.stringify([scope.type, categories, scope.from ?? null, scope.to ?? null]);
}

async function approveRequest(page, item, { step, fields }) {
  const chosen = readNarrowing(item, fields);
  if (!chosen) {
    return;
  }
  const narrowed = isNarrowed(item, chosen) ? chosen : undefined;
  const grant = await approveAccessRequest(item.id, { signal: page.ctx.signal, narrowed });
  if (!page.ctx.signal.aborted) {
    step.close({ quiet: true });
    announce(page.status, `You approved: ${grant.doctor.display_name} can read ${grant.scope_text} until `
      + `${formatDateTime(grant.expires_at)}.`);
    loadGrantsAndRequests(page);
  }
}

async function declineRequest(page, item) {
  await declineAccessRequest(item.id, { signal: page.ctx.signal });
  if (!page.ctx.signal.aborted) {
    announce(page.status, `You declined the request from ${item.doctor.display_name}.`);
    loadGrantsAndRequests(page);
  }
}

// ---- grants

function activeGrants(page, grants) {
  if (!grants.length) {
    return h('p', { class: 'muted' }, 'No doctor can read your records through a grant right now.');
  }
  return h('ul', { class: 'card-list' }, grants.map((grant) => h('li', {}, grantCard(page, grant))));
}

function grantCard(page, grant) {
  const revoke = h('button', { type: 'button', class: 'button button-danger-quiet' }, 'Revoke access');
  const actions = h('div', { class: 'actions' }, revoke);
  const name = grant.doctor.display_name;
  const confirm = confirmStep(page.ctx, {
    actions,
    returnFocus: revoke,
    question: `Revoke ${name}'s access?`,
    detail: `${name} will no longer be able to read your records. What they have already read cannot be taken back.`,
    confirmLabel: 'Revoke access',
    busyLabel: 'Revoking…',
    cancelLabel: 'Keep access',
    danger: true,
    onConfirm: () => revokeAccess(page, grant),
  });
  revoke.addEventListener('click', confirm.open);
  return h('article', { class: 'card access-card', 'aria-label': `Access for ${name}` },
    doctorHeading(grant.doctor),
    definitionList([
      ['Can read', capitalise(grant.scope_text)],
      ['Until', untilText(grant.expires_at)],
      ['Since', dateTime(grant.created_at)],
    ], 'access-details'),
    actions,
    confirm.panel);
}

async function revokeAccess(page, grant) {
  await revokeGrant(grant.id, { signal: page.ctx.signal });
  if (!page.ctx.signal.aborted) {
    announce(page.status, `${grant.doctor.display_name} can no longer read your records.`);
    loadGrantsAndRequests(page);
  }
}

function untilText(iso) {
  return h('span', {}, dateTime(iso), ` (${formatFromNow(iso)})`);
}

function pastGrants(grants) {
  if (!grants.length) {
    return [];
  }
  return h('details', { class: 'card past-grants' },
    h('summary', {}, `Past access (${grants.length})`),
    h('ul', { class: 'past-list' }, grants.map(pastGrantItem)));
}

function pastGrantItem(grant) {
  const ended = grant.status === 'revoked'
    ? ['Revoked on ', dateTime(grant.revoked_at)]
    : ['Expired on ', dateTime(grant.expires_at)];
  return h('li', { class: 'past-item' },
    h('span', { class: 'past-name' }, authorLine(grant.doctor)),
    h('span', {}, capitalise(grant.scope_text)),
    h('span', { class: 'muted' }, ended));
}

function doctorHeading(doctor) {
  return h('div', { class: 'access-card-head' },
    h('h3', { class: 'access-card-title' }, doctor?.display_name ?? 'Unknown doctor'),
    doctor?.hospital && h('p', { class: 'access-card-meta' }, doctor.hospital));
}

// ---- a confirmation step in the page (never a browser dialog)

// `actions` (optional) is hidden while the question is shown; `returnFocus` gets the
// focus back on cancel. onConfirm's errors are shown in the panel.
function confirmStep(ctx, options) {
  const {
    actions, returnFocus, question, detail, body, confirmLabel, busyLabel, cancelLabel, danger, onConfirm,
  } = options;
  const parts = {
    question: h('p', { class: 'confirm-question' }, question),
    error: errorNotice(),
    confirm: h('button', { type: 'button', class: `button ${danger ? 'button-danger' : 'button-primary'}` },
      confirmLabel),
    cancel: h('button', { type: 'button', class: 'button' }, cancelLabel),
  };
  const panel = h('div', { class: 'confirm', role: 'group', 'aria-label': question, hidden: true },
    parts.question,
    detail && h('p', { class: 'confirm-detail' }, detail),
    body,
    parts.error,
    h('div', { class: 'actions' }, parts.confirm, parts.cancel));
  const step = {
    panel,
    open() {
      hideNotice(parts.error);
      setHidden(actions, true);
      panel.hidden = false;
      parts.confirm.focus();
    },
    // `quiet`: another step takes over, so the focus is left to it.
    close({ quiet = false } = {}) {
      panel.hidden = true;
      setHidden(actions, false);
      if (!quiet) {
        returnFocus?.focus();
      }
    },
    setQuestion(text) {
      parts.question.textContent = text;
      panel.setAttribute('aria-label', text);
    },
  };
  parts.cancel.addEventListener('click', () => step.close());
  parts.confirm.addEventListener('click', () => runConfirmed(ctx, { ...parts, busyLabel, onConfirm }));
  return step;
}

function setHidden(element, hidden) {
  if (element) {
    element.hidden = hidden;
  }
}

async function runConfirmed(ctx, { confirm, cancel, error, busyLabel, onConfirm }) {
  hideNotice(error);
  setBusy(confirm, true, busyLabel);
  cancel.disabled = true;
  try {
    await onConfirm();
  } catch (failure) {
    if (!isStale(ctx, failure)) {
      showNotice(error, errorText(failure));
    }
  } finally {
    setBusy(confirm, false);
    cancel.disabled = false;
  }
}

// ---- giving a doctor access

function grantForm(page) {
  const form = {
    page,
    chosen: null,
    search: doctorSearch(page, (doctor) => chooseDoctor(form, doctor)),
    scope: scopeFields(),
    days: formField({
      id: 'grant-days', label: 'For how many days', type: 'number', inputmode: 'numeric',
      min: MIN_DAYS, max: MAX_DAYS, step: 1, value: DEFAULT_DAYS, required: true,
      hint: `From ${MIN_DAYS} to ${MAX_DAYS} days. You can revoke it sooner at any time.`,
    }),
    review: h('button', { type: 'submit', class: 'button button-primary button-block' }, 'Review'),
  };
  form.confirm = confirmStep(page.ctx, {
    actions: form.review,
    returnFocus: form.review,
    question: 'Give this doctor access?',
    confirmLabel: 'Give access',
    busyLabel: 'Giving access…',
    cancelLabel: 'Change',
    onConfirm: () => submitGrant(form),
  });
  form.element = h('form', { class: 'card form', novalidate: true },
    form.search.element, form.scope.element, form.days.wrapper, form.review, form.confirm.panel);
  form.element.addEventListener('submit', (event) => {
    event.preventDefault();
    reviewGrant(form);
  });
  // Any change after the review asks for a new review.
  form.element.addEventListener('input', () => cancelReview(form));
  form.element.addEventListener('change', () => cancelReview(form));
  return form.element;
}

function chooseDoctor(form, doctor) {
  form.chosen = doctor;
  form.search.setError(null);
  cancelReview(form);
}

function cancelReview(form) {
  form.confirm.panel.hidden = true;
  form.review.hidden = false;
}

function reviewGrant(form) {
  const request = grantRequest(form);
  if (!request) {
    return;
  }
  const until = new Date(Date.now() + request.days * DAY_MS).toISOString();
  form.confirm.setQuestion(`Give ${personWithHospital(form.chosen)} access to `
    + `${scopeText(request.scope).toLowerCase()} for ${daysText(request.days)}, until ${formatDateTime(until)}?`);
  form.confirm.open();
}

// The request to send, or null after marking what needs fixing.
function grantRequest(form) {
  const problems = [];
  if (!form.chosen) {
    form.search.setError('Please search for a doctor and choose one.');
    problems.push(form.search.input);
  }
  const scope = form.scope.read();
  if (!scope) {
    problems.push(form.scope.firstInvalid());
  }
  const days = Number(form.days.input.value);
  const daysOk = Number.isInteger(days) && days >= MIN_DAYS && days <= MAX_DAYS;
  form.days.setError(daysOk ? null : `Please enter a whole number of days from ${MIN_DAYS} to ${MAX_DAYS}.`);
  if (!daysOk) {
    problems.push(form.days.input);
  }
  problems[0]?.focus();
  return problems.length ? null : { doctorId: form.chosen.id, days, scope };
}

async function submitGrant(form) {
  const { ctx } = form.page;
  const request = grantRequest(form);
  if (!request) {
    cancelReview(form);
    return;
  }
  const grant = await createGrant(request, { signal: ctx.signal });
  if (!ctx.signal.aborted) {
    resetGrantForm(form);
    announce(form.page.status, `${grant.doctor.display_name} can now read ${grant.scope_text} until `
      + `${formatDateTime(grant.expires_at)}.`);
    loadGrantsAndRequests(form.page);
  }
}

function resetGrantForm(form) {
  form.chosen = null;
  form.search.reset();
  form.scope.reset();
  form.days.input.value = String(DEFAULT_DAYS);
  form.days.setError(null);
  cancelReview(form);
}

// ---- doctor search (debounced; only the latest answer is shown)

function doctorSearch(page, onChoose) {
  const field = formField({
    id: 'doctor-search', label: 'Find a doctor', type: 'search', autocomplete: 'off', autocapitalize: 'none',
    spellcheck: 'false', hint: `Type at least ${SEARCH_MIN_CHARS} letters of their name, hospital or username.`,
  });
  const search = {
    ...field,
    results: h('ul', { class: 'doctor-results', 'aria-label': 'Doctors found' }),
    note: h('p', { class: 'field-hint', role: 'status' }),
    chosenBox: h('div', { class: 'chosen', hidden: true }),
  };
  search.element = h('div', { class: 'doctor-search' }, field.wrapper, search.note, search.results, search.chosenBox);
  search.choose = (doctor) => showChosen(search, doctor, onChoose);
  search.reset = () => resetSearch(search);
  search.stop = searchAsYouType(page, search, findDoctors, (query, doctors) => showResults(search, query, doctors));
  return search;
}

function showResults(search, query, doctors) {
  search.setError(null);
  search.note.textContent = doctors.length
    ? `${doctors.length} ${doctors.length === 1 ? 'doctor' : 'doctors'} found.`
    : `No doctor matches “${query}”.`;
  mount(search.results, doctors.map((doctor) => h('li', {}, doctorOption(search, doctor))));
}

function doctorOption(search, doctor) {
  const button = h('button', { type: 'button', class: 'doctor-option' },
    h('span', { class: 'doctor-option-name' }, doctor.display_name),
    doctor.hospital && h('span', { class: 'doctor-option-meta' }, doctor.hospital));
  button.addEventListener('click', () => search.choose(doctor));
  return button;
}

function showChosen(search, doctor, onChoose) {
  const change = h('button', { type: 'button', class: 'button' }, 'Change');
  change.addEventListener('click', () => {
    resetSearch(search);
    onChoose(null);
    search.input.focus();
  });
  mount(search.chosenBox,
    h('p', { class: 'chosen-text' }, 'Chosen: ', h('strong', {}, personWithHospital(doctor))),
    change);
  search.chosenBox.hidden = false;
  search.wrapper.hidden = true;
  search.note.textContent = '';
  mount(search.results);
  onChoose(doctor);
  change.focus();
}

function resetSearch(search) {
  search.stop();
  search.input.value = '';
  search.note.textContent = '';
  search.setError(null);
  mount(search.results);
  mount(search.chosenBox);
  search.chosenBox.hidden = true;
  search.wrapper.hidden = false;
}

// ---- scope: all, some categories, or a date range

// `choices` (scope types offered), `categories` (those offered), `initial` (a scope to start
// from and reset to) and `dateBounds` ({ from, to }: the dates may not go outside) let the
// approval of a request offer only what is within what was asked.
function scopeFields(options = {}) {
  const {
    prefix = 'grant', choices = SCOPE_CHOICES.map((choice) => choice.value), categories: offered = CATEGORIES,
    initial = { type: 'all' }, dateBounds = null,
  } = options;
  const shown = SCOPE_CHOICES.filter((choice) => choices.includes(choice.value));
  const radios = shown.map((choice) => h('input', {
    type: 'radio', name: `${prefix}-scope`, id: `${prefix}-scope-${choice.value}`, value: choice.value,
  }));
  const categories = offered.map((category) => h('input', {
    type: 'checkbox', name: `${prefix}-category`, id: `${prefix}-category-${category}`, value: category,
  }));
  const bounds = { min: dateBounds?.from, max: dateBounds?.to };
  const from = formField({ id: `${prefix}-from`, label: 'From', type: 'date', ...bounds });
  const to = formField({ id: `${prefix}-to`, label: 'To', type: 'date', ...bounds });
  const categoryError = h('p', { id: `${prefix}-categories-error`, class: 'field-error', hidden: true });
  const categoryAttrs = { class: 'sub-fieldset', hidden: true, 'aria-describedby': categoryError.id };
  const categoryBox = h('fieldset', categoryAttrs,
    h('legend', { class: 'label' }, 'Which kinds'),
    h('div', { class: 'checkbox-grid' }, categories.map((input) => choiceLabel(input, categoryLabel(input.value)))),
    categoryError);
  const dateBox = h('div', { class: 'date-range', hidden: true }, from.wrapper, to.wrapper);
  const scope = { radios, categories, from, to, categoryError, categoryBox, dateBox, initial, dateBounds };
  // One choice needs no radio button.
  const choiceList = h('div', { class: 'choices', hidden: radios.length < 2 },
    radios.map((input, i) => choiceLabel(input, shown[i].label)));
  scope.element = h('fieldset', { class: 'fieldset' },
    h('legend', { class: 'label' }, 'What they can read'),
    choiceList,
    categoryBox,
    dateBox);
  radios.forEach((input) => input.addEventListener('change', () => showScopeDetails(scope)));
  scope.read = () => readScope(scope);
  scope.peek = () => readScope(scope, { quiet: true });
  scope.firstInvalid = () => firstInvalidScopeInput(scope);
  scope.reset = () => resetScope(scope);
  resetScope(scope);
  return scope;
}

function choiceLabel(input, text) {
  return h('label', { class: 'choice', for: input.id }, input, h('span', {}, text));
}

function chosenScopeType(scope) {
  return scope.radios.find((input) => input.checked)?.value ?? 'all';
}

function showScopeDetails(scope) {
  const type = chosenScopeType(scope);
  scope.categoryBox.hidden = type !== 'categories';
  scope.dateBox.hidden = type !== 'dates';
}

// The scope as the API takes it, or null after marking the problem (`quiet`: without marking).
function readScope(scope, { quiet = false } = {}) {
  if (!quiet) {
    clearScopeErrors(scope);
  }
  const type = chosenScopeType(scope);
  if (type === 'categories') {
    const chosen = scope.categories.filter((input) => input.checked).map((input) => input.value);
    if (!chosen.length) {
      if (!quiet) {
        setCategoryError(scope, 'Please tick at least one kind of record.');
      }
      return null;
    }
    return { type, categories: chosen };
  }
  if (type === 'dates') {
    return readDateRange(scope, { quiet });
  }
  return { type: 'all' };
}

function readDateRange(scope, { quiet }) {
  const from = scope.from.input.value;
  const to = scope.to.input.value;
  const problems = {
    from: from ? null : 'Please choose the first date.',
    to: to ? null : 'Please choose the last date.',
  };
  if (from && to && from > to) {
    problems.to = 'The last date must not be before the first.';
  }
  const bounds = scope.dateBounds;
  if (bounds && from && from < bounds.from) {
    problems.from = 'The first date must not be before the one the doctor asked for.';
  }
  if (bounds && to && to > bounds.to) {
    problems.to = 'The last date must not be after the one the doctor asked for.';
  }
  if (!quiet) {
    scope.from.setError(problems.from);
    scope.to.setError(problems.to);
  }
  return problems.from || problems.to ? null : { type: 'dates', from, to };
}

function clearScopeErrors(scope) {
  setCategoryError(scope, null);
  scope.from.setError(null);
  scope.to.setError(null);
}

function setCategoryError(scope, message) {
  scope.categoryError.textContent = message ?? '';
  scope.categoryError.hidden = !message;
}

function firstInvalidScopeInput(scope) {
  if (chosenScopeType(scope) === 'categories') {
    return scope.categories[0];
  }
  return scope.from.input.value ? scope.to.input : scope.from.input;
}

function resetScope(scope) {
  const { initial } = scope;
  scope.radios.forEach((input) => {
    input.checked = input.value === initial.type;
  });
  scope.categories.forEach((input) => {
    input.checked = initial.type === 'categories' && (initial.categories ?? []).includes(input.value);
  });
  scope.from.input.value = initial.type === 'dates' ? initial.from : '';
  scope.to.input.value = initial.type === 'dates' ? initial.to : '';
  clearScopeErrors(scope);
  showScopeDetails(scope);
}

// ---- emergency access

async function loadEmergency(page) {
  const { ctx } = page;
  startLoading(page.emergency, 'Loading your emergency access settings…');
  try {
    const status = await getEmergencyAccess({ signal: ctx.signal, limit: PAGE_SIZE });
    if (!ctx.signal.aborted) {
      page.loaded.emergencies = { items: mergeById([], status.emergencies ?? []), ...pageState(status) };
      mount(page.emergency, emergencySettings(page, status));
      showEmergencies(page);
    }
  } catch (error) {
    if (!isStale(ctx, error)) {
      mount(page.emergency, errorNotice(errorText(error)));
    }
  } finally {
    page.emergency.removeAttribute('aria-busy');
  }
}

async function loadMoreEmergencies(page) {
  const { ctx } = page;
  const loaded = page.loaded.emergencies;
  if (loaded?.nextOffset === null || loaded?.nextOffset === undefined) {
    return;
  }
  const status = await getEmergencyAccess({ signal: ctx.signal, limit: PAGE_SIZE, offset: loaded.nextOffset });
  if (!ctx.signal.aborted) {
    page.loaded.emergencies = { items: mergeById(loaded.items, status.emergencies ?? []), ...pageState(status) };
    showEmergencies(page);
  }
}

function showEmergencies(page) {
  const { items, total, nextOffset } = page.loaded.emergencies;
  mount(page.emergencyList, emergencyList(items));
  page.emergencyPages.update({ shown: items.length, total, nextOffset });
}

function emergencySettings(page, status) {
  const error = errorNotice();
  const toggle = h('button', {
    type: 'button', class: 'switch', role: 'switch', 'aria-checked': String(status.enabled),
    'aria-labelledby': 'emergency-switch-label', 'aria-describedby': 'emergency-explanation',
  }, h('span', { class: 'switch-track', 'aria-hidden': 'true' }), h('span', { class: 'switch-state' },
    status.enabled ? 'On' : 'Off'));
  const row = h('div', { class: 'switch-row' },
    h('span', { id: 'emergency-switch-label', class: 'label' }, 'Allow emergency access'), toggle);
  const confirm = confirmStep(page.ctx, {
    returnFocus: toggle,
    question: 'Turn on emergency access?',
    detail: 'Any doctor at the hospital who declares an emergency, and writes down why, can then open all your '
      + 'records for 4 hours.',
    confirmLabel: 'Turn on',
    busyLabel: 'Turning on…',
    cancelLabel: 'Cancel',
    onConfirm: () => changeEmergency(page, true),
  });
  toggle.addEventListener('click', () => {
    if (status.enabled) {
      switchOff(page, { toggle, error });
    } else {
      confirm.open();
    }
  });
  return [
    h('p', { id: 'emergency-explanation', class: 'explanation' }, EMERGENCY_EXPLANATION),
    h('div', { class: 'card switch-card' }, row, error, confirm.panel),
    h('h3', { class: 'subsection-title' }, 'Past emergencies'),
    page.emergencyList,
    page.emergencyPages.element,
  ];
}

async function switchOff(page, { toggle, error }) {
  hideNotice(error);
  toggle.disabled = true;
  try {
    await changeEmergency(page, false);
  } catch (failure) {
    if (!isStale(page.ctx, failure)) {
      showNotice(error, errorText(failure));
      toggle.disabled = false;
    }
  }
}

async function changeEmergency(page, enabled) {
  const enabledNow = await setEmergencyAccess(enabled, { signal: page.ctx.signal });
  page.ctx.emergencySettingChanged();
  if (!page.ctx.signal.aborted) {
    announce(page.emergencyStatus, enabledNow ? EMERGENCY_ON_MESSAGE : EMERGENCY_OFF_MESSAGE);
    loadEmergency(page);
  }
}

function emergencyList(emergencies) {
  if (!emergencies.length) {
    return h('p', { class: 'muted' }, 'No doctor has used emergency access to your records.');
  }
  return h('ul', { class: 'card-list' }, emergencies.map((item) => h('li', {}, emergencyCard(item))));
}

function emergencyCard(item) {
  const running = item.active && Date.parse(item.expires_at) > Date.now();
  return h('article', { class: `card access-card${running ? ' access-card-alert' : ''}` },
    running && h('span', { class: 'chip chip-emergency' }, 'In progress'),
    doctorHeading(item.doctor),
    definitionList([
      ['Reason', h('span', { class: 'reason' }, item.reason)],
      ['When', dateTime(item.created_at)],
      [running ? 'Until' : 'Ended', dateTime(item.expires_at)],
    ], 'access-details'));
}

// ---- the access log

export function accessLogView(ctx) {
  ctx.setTitle('Access log');
  const page = {
    ctx,
    list: h('div', { class: 'access-log' }),
    refresh: h('button', { type: 'button', class: 'button' }, 'Refresh'),
    loaded: null,
  };
  page.controls = pageControls(() => loadMoreLog(page));
  page.refresh.addEventListener('click', () => loadAccessLog(page));
  loadAccessLog(page);
  return h('section', { class: 'view' },
    h('div', { class: 'view-header' }, viewHeading('Access log'), page.refresh),
    h('p', { class: 'lead' }, 'Every time someone other than you opened one of your records, and every reset '
      + 'of your password, newest first.'),
    ctx.flash && flashNotice(ctx.flash),
    logCopyPanel(ctx),
    page.list,
    page.controls.element);
}

// The whole log, not only the pages shown: as a spreadsheet, or as FHIR AuditEvents for another system.
function logCopyPanel(ctx) {
  const failure = 'Your access log could not be downloaded.';
  return downloadPanel(ctx, {
    id: 'access-log-copy',
    title: 'A copy of your access log',
    text: 'The whole log in one file: CSV opens in a spreadsheet, FHIR is the format hospitals\' systems read.',
    files: [
      {
        label: 'Download as CSV',
        busyLabel: 'Preparing the CSV file…',
        failure,
        fetch: (options) => downloadAccessLog('csv', options),
      },
      {
        label: 'Download as FHIR',
        busyLabel: 'Preparing the FHIR file…',
        failure,
        fetch: (options) => downloadAccessLog('fhir', options),
      },
    ],
  });
}

async function loadAccessLog(page) {
  const { ctx, list, refresh } = page;
  setBusy(refresh, true, 'Refreshing…');
  startLoading(list, 'Loading your access log…');
  try {
    const [answer, titles] = await Promise.all([
      getAccessLog({ signal: ctx.signal, limit: PAGE_SIZE }),
      recordTitles(ctx),
    ]);
    if (!ctx.signal.aborted) {
      page.loaded = { entries: mergeById([], answer.entries), titles, ...pageState(answer) };
      showLog(page);
    }
  } catch (error) {
    if (!isStale(ctx, error)) {
      mount(list, errorNotice(errorText(error)));
      page.controls.update({ shown: 0, total: null, nextOffset: null });
    }
  } finally {
    list.removeAttribute('aria-busy');
    setBusy(refresh, false);
  }
}

async function loadMoreLog(page) {
  const { ctx, loaded } = page;
  if (loaded?.nextOffset === null || loaded?.nextOffset === undefined) {
    return;
  }
  const shownBefore = loaded.entries.length;
  const answer = await getAccessLog({ signal: ctx.signal, limit: PAGE_SIZE, offset: loaded.nextOffset });
  if (!ctx.signal.aborted) {
    page.loaded = { ...loaded, entries: mergeById(loaded.entries, answer.entries), ...pageState(answer) };
    showLog(page);
    page.list.querySelectorAll('.log-entry a')[shownBefore]?.focus();
  }
}

function pageState(answer) {
  return { nextOffset: answer.next_offset ?? null, total: Number.isInteger(answer.total) ? answer.total : null };
}

function showLog(page) {
  const { entries, titles, total, nextOffset } = page.loaded;
  mount(page.list, entries.length ? logEntries(entries, titles) : emptyLog());
  page.controls.update({ shown: entries.length, total, nextOffset });
}

// The log names records by id only; the patient's own list gives their titles.
// Without it the log still works, naming records by their date.
async function recordTitles(ctx) {
  try {
    const answer = await listRecords({ signal: ctx.signal, limit: RECORD_TITLES_LIMIT });
    return new Map(answer.records.map((record) => [record.id, record.title]));
  } catch {
    return new Map();
  }
}

function logEntries(entries, titles) {
  return h('ul', { class: 'card-list' }, entries.map((entry) => h('li', {}, logEntry(entry, titles))));
}

function logEntry(entry, titles) {
  if (!entry.record) {
    return accountEventCard(entry); // about the account itself: a password reset
  }
  const mode = READ_MODES[entry.mode] ?? { label: `Read (${entry.mode})`, chip: 'chip-author' };
  const record = entry.record ?? {};
  const title = titles.get(record.id) ?? `Record of ${formatDateTime(record.created_at)}`;
  return h('article', { class: `card log-entry${entry.mode === 'emergency' ? ' access-card-alert' : ''}` },
    h('div', { class: 'chips' }, h('span', { class: `chip ${mode.chip}` }, mode.label)),
    h('p', { class: 'log-who' }, authorLine(entry.reader)),
    h('p', { class: 'log-what' },
      h('a', { href: `${RECORDS_HASH}/${encodeURIComponent(record.id)}` }, title),
      h('span', { class: 'log-part' }, ` · ${entry.part === 'record' ? 'the record' : entry.part}`)),
    h('p', { class: 'record-card-meta' }, dateTime(entry.at)));
}

function emptyLog() {
  return h('div', { class: 'card empty-state' },
    h('p', { class: 'empty-title' }, NOBODY_READ),
    h('p', {}, 'When a doctor opens one of your records, it shows here.'));
}
