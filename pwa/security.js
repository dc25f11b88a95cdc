'use strict';

// The "Sign-in security" screen (#/security): two-factor sign-in, which patients may turn on
// (docs/security.md). Setting up shows a QR code for an authenticator app (drawn here by the
// vendored generator, as on My ID) and the key as text; the first code turns it on and shows
// ten recovery codes once. Turning it off asks for a current code.

import {
  beginTwoFactor, confirmTwoFactor, getTwoFactor, turnOffTwoFactor,
} from './api.js';
import { h, mount } from './dom.js';
import { qrSvg } from './my-id.js';
import {
  errorNotice, errorText, flashNotice, formField, hideNotice, isStale, loadingIndicator, setBusy, showNotice,
  viewHeading,
} from './ui.js';

const EXPLANATION = 'With two-factor sign-in, logging in also asks for a 6-digit code from an authenticator '
  + 'app on your phone, so a stolen password alone opens nothing.';
const CODES_EXPLANATION = 'Keep these ten codes somewhere safe, away from your phone. Each one logs you in once '
  + 'if you lose the app. They are shown only now.';
const QR_LABEL = 'QR code to scan with your authenticator app';

export function securityView(ctx) {
  ctx.setTitle('Sign-in security');
  const body = h('div', { class: 'security' }, loadingIndicator('Loading…'));
  load(ctx, body);
  return h('section', { class: 'view view-narrow' },
    h('a', { class: 'back-link', href: '#/my-id' }, '← My ID'),
    viewHeading('Sign-in security'),
    h('p', { class: 'lead' }, EXPLANATION),
    ctx.flash && flashNotice(ctx.flash),
    body);
}

async function load(ctx, body) {
  try {
    const status = await getTwoFactor({ signal: ctx.signal });
    mount(body, status.enabled ? enabledCard(ctx, body, status) : offCard(ctx, body));
  } catch (error) {
    if (!isStale(ctx, error)) {
      mount(body, errorNotice(errorText(error)));
    }
  }
}

function codeField(id) {
  return formField({
    id, label: 'Code from your app', inputmode: 'numeric', autocomplete: 'one-time-code', required: true,
  });
}

function offCard(ctx, body) {
  const status = errorNotice();
  const start = h('button', { type: 'button', class: 'button button-primary' }, 'Set up two-factor sign-in');
  start.addEventListener('click', async () => {
    hideNotice(status);
    setBusy(start, true, 'Preparing…');
    try {
      mount(body, setupCard(ctx, body, await beginTwoFactor({ signal: ctx.signal })));
    } catch (error) {
      if (!isStale(ctx, error)) {
        showNotice(status, errorText(error));
        setBusy(start, false);
      }
    }
  });
  return h('div', { class: 'card' }, h('p', {}, 'Two-factor sign-in is off.'), status, start);
}

function setupCard(ctx, body, enrolment) {
  const field = codeField('two-factor-code');
  const status = errorNotice();
  const button = h('button', { type: 'submit', class: 'button button-primary' }, 'Turn on');
  const form = h('form', { class: 'form', novalidate: true }, status, field.wrapper, button);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    hideNotice(status);
    setBusy(button, true, 'Checking…');
    try {
      const answer = await confirmTwoFactor(field.input.value.trim(), { signal: ctx.signal });
      mount(body, codesCard(ctx, body, answer.recovery_codes));
    } catch (error) {
      if (!isStale(ctx, error)) {
        showNotice(status, errorText(error));
        field.input.focus();
        setBusy(button, false);
      }
    }
  });
  return h('div', { class: 'card' },
    h('ol', { class: 'steps' },
      h('li', {}, 'Open an authenticator app (for example FreeOTP, Aegis or Google Authenticator).'),
      h('li', {}, 'Scan this code with it, or type the key below.'),
      h('li', {}, 'Type the 6-digit code the app shows.')),
    qrSvg(enrolment.uri, QR_LABEL),
    h('p', {}, 'Key: ', h('code', { class: 'two-factor-key' }, enrolment.secret)),
    form);
}

function codesCard(ctx, body, codes) {
  const done = h('button', { type: 'button', class: 'button button-primary' }, 'I have saved them');
  done.addEventListener('click', () => load(ctx, body));
  return h('div', { class: 'card' },
    h('p', { role: 'status' }, 'Two-factor sign-in is on.'),
    h('p', {}, CODES_EXPLANATION),
    h('ol', { class: 'recovery-codes', 'aria-label': 'Recovery codes' }, codes.map((code) => h('li', {}, h('code', {}, code)))),
    done);
}

function enabledCard(ctx, body, status) {
  const field = codeField('two-factor-off-code');
  const notice = errorNotice();
  const button = h('button', { type: 'submit', class: 'button' }, 'Turn off');
  const form = h('form', { class: 'form', novalidate: true }, notice, field.wrapper, button);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    hideNotice(notice);
    setBusy(button, true, 'Turning off…');
    try {
      await turnOffTwoFactor(field.input.value.trim(), { signal: ctx.signal });
      await load(ctx, body);
    } catch (error) {
      if (!isStale(ctx, error)) {
        showNotice(notice, errorText(error));
        setBusy(button, false);
      }
    }
  });
  const left = status.recovery_codes_left;
  return h('div', { class: 'card' },
    h('p', {}, `Two-factor sign-in is on. ${left} recovery code${left === 1 ? '' : 's'} left.`),
    h('p', { class: 'field-hint' }, 'To turn it off, type a code from your app (or a recovery code).'),
    form);
}
