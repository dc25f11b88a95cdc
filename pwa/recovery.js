'use strict';

// The patient's recovery key (docs/recovery.md). "Recovery key" (#/recovery-key, after
// registration and from My ID) asks for the password again, then shows the 12 words the server
// drew, numbered, with their QR code and a Print button, and asks for two of them before the key
// becomes the active one. "Forgot password?" (#/forgot-password) sets a new password with the 12
// words; every record stays readable because the key behind them is the same. The words live
// only in this screen's elements: never in storage, a cache or the console.

import {
  beginRecoveryKey, confirmRecoveryKey, getRecoveryKey, recoverAccount,
} from './api.js';
import { h, mount } from './dom.js';
import { formatDateTime } from './format.js';
import {
  dateTime, errorNotice, errorText, fieldWrappers, flashNotice, formField, hideNotice, isStale, loadingIndicator,
  setBusy, showNotice, showProblems, viewHeading,
} from './ui.js';

export const RECOVERY_KEY_HASH = '#/recovery-key';
export const FORGOT_PASSWORD_HASH = '#/forgot-password';
const LOGIN_HASH = '#/login';
const RECORDS_HASH = '#/records';
const WORD_COUNT = 12;
const PASSWORD_MIN_LENGTH = 10;
const PRINT_AREA_CLASS = 'recovery-print';
const EXPLANATION = 'If you forget your password, these 12 words let you set a new one, and keep every '
  + 'record and every doctor’s access. Nobody else has them: not your hospital, not us.';
const KEEP_SAFE = 'Write the words down on paper, in order, or print this page, and keep it somewhere safe '
  + 'at home. Anyone with the words and your username can take over your account.';
const SHOWN_ONCE = 'They are shown only now.';
const CONFIRMED_MESSAGE = 'Your recovery key is ready. Keep it safe: it is the only way back in if you '
  + 'forget your password.';
const RESET_DONE_MESSAGE = 'Your password was changed, and you were signed out everywhere. '
  + 'Log in with your new password.';
const QR_ALT = 'QR code of your 12 recovery words';
const EVENT_LABELS = { recovery_key: 'Password reset with your recovery key' };

// ---- making a recovery key

export function recoveryKeyView(ctx) {
  ctx.setTitle('Recovery key');
  const body = h('div', { class: 'recovery' }, loadingIndicator('Loading…'));
  loadStatus(ctx, body);
  return h('section', { class: 'view view-narrow' },
    h('a', { class: 'back-link', href: '#/my-id' }, '← My ID'),
    viewHeading('Recovery key'),
    h('p', { class: 'lead' }, EXPLANATION),
    ctx.flash && flashNotice(ctx.flash),
    body);
}

async function loadStatus(ctx, body) {
  try {
    const status = await getRecoveryKey({ signal: ctx.signal });
    mount(body, startCard(ctx, body, status));
  } catch (error) {
    if (!isStale(ctx, error)) {
      mount(body, errorNotice(errorText(error)));
    }
  }
}

function startCard(ctx, body, status) {
  const password = formField({
    id: 'recovery-password', label: 'Your password', type: 'password', autocomplete: 'current-password',
    required: true, hint: 'To make a recovery key, type your password again.',
  });
  const notice = errorNotice();
  const label = status.set ? 'Make a new recovery key' : 'Make my recovery key';
  const button = h('button', { type: 'submit', class: 'button button-primary' }, label);
  const form = h('form', { class: 'form', novalidate: true }, notice, password.wrapper, button);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    hideNotice(notice);
    if (showProblems({ password }, { password: password.input.value ? null : 'Please enter your password.' })) {
      return;
    }
    setBusy(button, true, 'Making your key…');
    try {
      const key = await beginRecoveryKey(password.input.value, { signal: ctx.signal });
      password.input.value = '';
      showStep(body, wordsCard(ctx, body, key));
    } catch (error) {
      if (!isStale(ctx, error)) {
        showNotice(notice, errorText(error));
        password.input.focus();
        setBusy(button, false);
      }
    }
  });
  return h('div', { class: 'card' },
    h('p', { class: 'recovery-status' }, statusText(status)),
    status.set && h('p', { class: 'field-hint' },
      'A new key replaces the old one once you confirm it; until then the old one keeps working.'),
    form,
    !status.set && h('p', {}, h('a', { href: RECORDS_HASH }, 'Not now')));
}

function statusText(status) {
  if (!status.set) {
    return 'You have no recovery key yet.';
  }
  return h('span', {}, 'You have a recovery key, made on ', dateTime(status.set_at), '.');
}

function wordsCard(ctx, body, key) {
  const print = h('button', { type: 'button', class: 'button' }, 'Print');
  print.addEventListener('click', () => window.print());
  const next = h('button', { type: 'button', class: 'button button-primary' }, 'I have written them down');
  next.addEventListener('click', () => showStep(body, confirmCard(ctx, body, key)));
  return h('div', { class: 'card' },
    stepHeading('Your 12 words'),
    h('p', {}, KEEP_SAFE, ' ', h('strong', {}, SHOWN_ONCE)),
    h('div', { class: PRINT_AREA_CLASS },
      h('p', { class: 'recovery-print-title' }, 'MedLedger recovery key'),
      h('ol', { class: 'recovery-words', 'aria-label': 'Your recovery words, in order' },
        key.words.map((word) => h('li', {}, h('span', { class: 'recovery-word' }, word)))),
      h('img', { class: 'recovery-qr', src: svgDataUrl(key.qr_svg), alt: QR_ALT, width: '180', height: '180' })),
    h('div', { class: 'recovery-actions' }, print, next));
}

function confirmCard(ctx, body, key) {
  const [first, second] = key.confirm;
  const fields = {
    first: wordField('recovery-confirm-first', first),
    second: wordField('recovery-confirm-second', second),
  };
  const notice = errorNotice();
  const button = h('button', { type: 'submit', class: 'button button-primary' }, 'Confirm');
  const back = h('button', { type: 'button', class: 'button' }, 'Show the words again');
  back.addEventListener('click', () => showStep(body, wordsCard(ctx, body, key)));
  const form = h('form', { class: 'form', novalidate: true }, notice, fieldWrappers(fields),
    h('div', { class: 'recovery-actions' }, button, back));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    hideNotice(notice);
    const values = { first: fields.first.input.value.trim(), second: fields.second.input.value.trim() };
    const problems = {
      first: values.first ? null : `Please type word ${first}.`,
      second: values.second ? null : `Please type word ${second}.`,
    };
    if (showProblems(fields, problems)) {
      return;
    }
    await sendThenGo(ctx, { button, busyLabel: 'Checking…', notice, retry: fields.first.input },
      () => confirmRecoveryKey({ [first]: values.first, [second]: values.second }, { signal: ctx.signal }),
      RECORDS_HASH, CONFIRMED_MESSAGE);
  });
  return h('div', { class: 'card' },
    stepHeading('Check your copy'),
    h('p', {}, `From what you wrote down, type word ${first} and word ${second}.`),
    form);
}

function wordField(id, position) {
  return formField({
    id, label: `Word ${position}`, autocomplete: 'off', autocapitalize: 'none', spellcheck: 'false', required: true,
  });
}

function stepHeading(text) {
  return h('h2', { class: 'recovery-step', tabindex: '-1' }, text);
}

// Each step replaces the last; focus goes to its heading for keyboard and screen-reader users.
function showStep(body, card) {
  mount(body, card);
  card.querySelector('h2')?.focus();
}

// A form's request with its button busy: done, the app goes to `hash`, which shows `flash`;
// refused, the form says why and the focus goes back to `retry`.
async function sendThenGo(ctx, { button, busyLabel, notice, retry }, send, hash, flash) {
  setBusy(button, true, busyLabel);
  try {
    await send();
    ctx.navigate(hash, { flash });
  } catch (error) {
    if (!isStale(ctx, error)) {
      showNotice(notice, errorText(error));
      retry.focus();
      setBusy(button, false);
    }
  }
}

function svgDataUrl(svg) {
  return `data:image/svg+xml,${encodeURIComponent(svg)}`;
}

// ---- forgot password

export function forgotPasswordView(ctx) {
  return newPasswordView(ctx, {
    title: 'Forgot password',
    lead: 'Set a new password with the 12 words of your recovery key. Your records and '
      + 'the access you gave doctors stay as they are.',
    idPrefix: 'forgot',
    proof: {
      field: wordsArea(),
      read: splitWords,
      problem: (words) => (words.length === WORD_COUNT
        ? null
        : `Please type all ${WORD_COUNT} words of your recovery key (you typed ${words.length}).`),
      sent: (words) => ({ recoveryKey: words.join(' ') }),
    },
    links: ['No recovery key? Your hospital’s front desk can help you: ',
      h('a', { href: '#/recover-with-code' }, 'I have a code from the front desk'), '. '],
  });
}

// A multi-line field built like ui.js formField, for the 12 words.
function wordsArea() {
  const id = 'forgot-words';
  const input = h('textarea', {
    id, name: id, class: 'input recovery-words-input', rows: '3', required: true, autocomplete: 'off',
    autocapitalize: 'none', spellcheck: 'false', 'aria-describedby': `${id}-hint ${id}-error`,
  });
  const error = h('p', { id: `${id}-error`, class: 'field-error', hidden: true });
  const wrapper = h('div', { class: 'field' },
    h('label', { class: 'label', for: id }, 'Recovery key'),
    h('p', { id: `${id}-hint`, class: 'field-hint' }, 'The 12 words, in order, with spaces between them.'),
    input,
    error);
  const setError = (message) => {
    error.textContent = message ?? '';
    error.hidden = !message;
    input.setAttribute('aria-invalid', message ? 'true' : 'false');
  };
  return { wrapper, input, setError };
}

// Words as written on paper: any case, numbered or not, spaces, commas or new lines between.
function splitWords(text) {
  return text.toLowerCase().split(/[\s,]+/).filter((word) => word && !/^\d+[.)]?$/.test(word));
}

// ---- a new password with a proof instead of the old password

// The screen of Forgot password (the recovery key's words, above) and of Code from the front desk
// (escrow.js): the username, the proof, the new password twice. `proof` holds its field, how to
// read what was typed (`read`), what is wrong with it (`problem`: a sentence, or null) and how it
// is sent (`sent`: { recoveryKey } or { deskCode }); `links` come before "Back to log in". Once
// the password is set, the app goes to log in, which says so.
export function newPasswordView(ctx, { title, lead, idPrefix, proof, links = [] }) {
  ctx.setTitle(title);
  const fields = {
    username: formField({
      id: `${idPrefix}-username`, label: 'Username', autocomplete: 'username',
      autocapitalize: 'none', spellcheck: 'false', required: true,
    }),
    proof: proof.field,
    password: formField({
      id: `${idPrefix}-password`, label: 'New password', type: 'password', autocomplete: 'new-password',
      required: true, minlength: PASSWORD_MIN_LENGTH, hint: `At least ${PASSWORD_MIN_LENGTH} characters.`,
    }),
    confirm: formField({
      id: `${idPrefix}-confirm`, label: 'Repeat the new password', type: 'password', autocomplete: 'new-password',
      required: true,
    }),
  };
  const notice = errorNotice();
  const button = h('button', { type: 'submit', class: 'button button-primary button-block' }, 'Set new password');
  const form = h('form', { class: 'card form', novalidate: true }, notice, fieldWrappers(fields), button);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    submitNewPassword(ctx, { fields, proof, notice, button });
  });
  return h('section', { class: 'view view-narrow' },
    viewHeading(title),
    h('p', { class: 'lead' }, lead),
    form,
    h('p', { class: 'switch-link' }, ...links, h('a', { href: LOGIN_HASH }, 'Back to log in')));
}

async function submitNewPassword(ctx, { fields, proof, notice, button }) {
  const username = fields.username.input.value.trim();
  const typed = proof.read(fields.proof.input.value);
  const password = fields.password.input.value;
  hideNotice(notice);
  const problems = {
    username: username ? null : 'Please enter your username.',
    proof: proof.problem(typed),
    password: password.length >= PASSWORD_MIN_LENGTH ? null : `Use at least ${PASSWORD_MIN_LENGTH} characters.`,
    confirm: fields.confirm.input.value === password ? null : 'The two passwords do not match.',
  };
  if (showProblems(fields, problems)) {
    return;
  }
  await sendThenGo(ctx, { button, busyLabel: 'Setting your new password…', notice, retry: fields.proof.input },
    () => recoverAccount({ username, ...proof.sent(typed), newPassword: password }, { signal: ctx.signal }),
    LOGIN_HASH, RESET_DONE_MESSAGE);
}

// ---- telling the patient

// The sign-in answer's notices (each given once by the server) as one sentence, or null.
export function noticesText(notices) {
  const recovered = (notices ?? []).filter((notice) => notice.kind === 'recovered');
  if (!recovered.length) {
    return null;
  }
  const last = recovered[recovered.length - 1];
  const how = last.method === 'recovery_key' ? 'with your recovery key' : 'without your old password';
  return `Your password was reset ${how} on ${formatDateTime(last.at)}. If that was not you, `
    + 'contact your hospital at once.';
}

// An access-log entry about the account itself (no record): what happened and when.
export function accountEventCard(entry) {
  const label = entry.event ?? EVENT_LABELS[entry.mode] ?? 'A change to your account';
  return h('article', { class: 'card log-entry access-card-alert' },
    h('div', { class: 'chips' }, h('span', { class: 'chip chip-emergency' }, 'Your account')),
    h('p', { class: 'log-what' }, label),
    h('p', { class: 'record-card-meta' }, dateTime(entry.at)));
}
