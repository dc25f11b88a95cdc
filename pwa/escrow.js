'use strict';

// Hospital-assisted recovery (docs/recovery.md, "Hospital-assisted recovery"). "Help from your
// hospital" (#/escrow, from My ID) says whether two hospitals keep the two halves of the key to
// the patient's records, which hospital holds the second half, and what turning it off means; it
// lists past recoveries. "Code from the front desk" (#/recover-with-code, signed out) sets a new
// password with the one-time code the hospital handed over in person.

import { getEscrow, setEscrow } from './api.js';
import { h, mount } from './dom.js';
import { newPasswordView } from './recovery.js';
import {
  dateTime, errorNotice, errorText, flashNotice, formField, hideNotice, isStale, loadingIndicator, setBusy,
  showNotice, viewHeading,
} from './ui.js';

export const ESCROW_HASH = '#/escrow';
export const RECOVER_WITH_CODE_HASH = '#/recover-with-code';
const CODE_LENGTH = 20; // letters and digits, without the dashes
const EXPLANATION = 'If you lose both your password and your recovery key, your hospital can still get you '
  + 'back in: after checking your identity in person, and with the approval of a second administrator, it gives '
  + 'you a one-time code to set a new password. Your records and the access you gave stay as they are.';
const HOW_IT_WORKS = 'The key to your records is split in two halves. Your hospital keeps one; another member '
  + 'hospital keeps the other. Neither half alone opens anything, and neither hospital alone can use them.';
const OFF_MEANS = 'If you turn this off, both halves are deleted. Then, if you ever lose your password and your '
  + 'recovery key, nobody — not your hospital, not us — can give you back your records.';
const STATE_TEXT = {
  held: 'On: your hospital and {holder} each keep one half.',
  delivering: 'On: your hospital keeps its half; {holder} receives the other half when it is reachable.',
  waiting: 'On: waiting for a second hospital. Your key can only be split once another member hospital has '
    + 'joined; the two halves are then made automatically the next time you log in.',
  off: 'Off: no hospital keeps your key. Only your recovery key can help you if you forget your password.',
  not_offered: 'Not available for this account.',
};

// ---- the patient's choice

export function escrowView(ctx) {
  ctx.setTitle('Help from your hospital');
  const body = h('div', { class: 'escrow' }, loadingIndicator('Loading…'));
  load(ctx, body);
  return h('section', { class: 'view view-narrow' },
    h('a', { class: 'back-link', href: '#/my-id' }, '← My ID'),
    viewHeading('Help from your hospital'),
    h('p', { class: 'lead' }, EXPLANATION),
    h('p', {}, HOW_IT_WORKS),
    ctx.flash && flashNotice(ctx.flash),
    body);
}

async function load(ctx, body) {
  try {
    mount(body, statusCards(ctx, body, await getEscrow({ signal: ctx.signal })));
  } catch (error) {
    if (!isStale(ctx, error)) {
      mount(body, errorNotice(errorText(error)));
    }
  }
}

function stateText(status) {
  const holder = status.holder_hospital ?? 'another member hospital';
  return (STATE_TEXT[status.state] ?? STATE_TEXT.not_offered).replace('{holder}', holder);
}

function statusCards(ctx, body, status) {
  const notice = errorNotice();
  const card = h('div', { class: 'card' }, h('p', { role: 'status' }, stateText(status)), notice);
  if (status.can_turn_off) {
    card.append(status.enabled ? turnOffForm(ctx, body, notice) : turnOnButton(ctx, body, notice));
  }
  return [card, recoveriesCard(status.recoveries)];
}

function turnOffForm(ctx, body, notice) {
  const confirm = h('input', { type: 'checkbox', id: 'escrow-off-confirm', required: true });
  const button = h('button', { type: 'submit', class: 'button' }, 'Turn off help from my hospital');
  const form = h('form', { class: 'form', novalidate: true },
    h('p', { class: 'field-hint' }, OFF_MEANS),
    h('label', { class: 'choice', for: 'escrow-off-confirm' }, confirm,
      ' I understand that nobody can give me back my records if I lose both my password and my recovery key.'),
    button);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    if (!confirm.checked) {
      showNotice(notice, 'Tick the box first: turning this off cannot be undone for a lost password.');
      confirm.focus();
      return;
    }
    change(ctx, body, { enabled: false, button, notice });
  });
  return form;
}

function turnOnButton(ctx, body, notice) {
  const button = h('button', { type: 'button', class: 'button button-primary' }, 'Turn on help from my hospital');
  button.addEventListener('click', () => change(ctx, body, { enabled: true, button, notice }));
  return button;
}

async function change(ctx, body, { enabled, button, notice }) {
  hideNotice(notice);
  setBusy(button, true, enabled ? 'Turning on…' : 'Turning off…');
  try {
    mount(body, statusCards(ctx, body, await setEscrow(enabled, { signal: ctx.signal })));
  } catch (error) {
    if (!isStale(ctx, error)) {
      showNotice(notice, errorText(error));
      setBusy(button, false);
    }
  }
}

function recoveriesCard(recoveries) {
  if (!recoveries.length) {
    return h('p', { class: 'muted' }, 'Your hospital has never reset your password.');
  }
  return h('div', { class: 'card' },
    h('h2', {}, 'Password resets at the front desk'),
    h('ul', {}, recoveries.map((item) => h('li', {},
      dateTime(item.completed_at),
      ` — identity checked by ${item.opened_by}, approved by ${item.approved_by ?? 'a second administrator'}`
        + (item.approved_by_hospital ? ` (${item.approved_by_hospital})` : '')))),
    h('p', { class: 'field-hint' }, 'If one of these was not you, contact your hospital at once.'));
}

// ---- setting a new password with the front desk's code

export function recoverWithCodeView(ctx) {
  return newPasswordView(ctx, {
    title: 'Code from the front desk',
    lead: 'Your hospital checked your identity and gave you a one-time code. Set a new password with it; your '
      + 'records and the access you gave doctors stay as they are. The code works once, for one hour.',
    idPrefix: 'code',
    proof: {
      field: formField({
        id: 'code-code', label: 'Code from the front desk', autocomplete: 'one-time-code',
        autocapitalize: 'characters', spellcheck: 'false', required: true,
        hint: 'As written on the slip, for example ABCD-EFGH-JKLM-NPQR-STUV.',
      }),
      read: (text) => text.trim(),
      problem: codeProblem,
      sent: (code) => ({ deskCode: code }),
    },
  });
}

function codeProblem(code) {
  const letters = code.replace(/[\s-]/g, '');
  return letters.length === CODE_LENGTH
    ? null
    : `The code has ${CODE_LENGTH} letters and digits (you typed ${letters.length}).`;
}
