'use strict';

// The "Your devices" screen (#/devices, from My ID): every device this patient uses the chat on,
// each with its own chat key (docs/chat-protocol.md, "The keys on the ledger"): the key's
// fingerprint, grouped as the chat screen shows it, when it was added and whether it is in a
// block yet. Another device (a lost phone) is removed after a confirmation in the page: the node
// revokes its key on the ledger and ends its sign-ins. The device in hand is marked and has no
// Remove button (the node refuses that too, 409): it is removed from another device.

import { listChatDevices, removeChatDevice } from './api.js';
import { deviceOf } from './chat-store.js';
import { h, mount } from './dom.js';
import { groupedFingerprint } from './format.js';
import {
  dateTime, definitionList, errorNotice, errorText, flashNotice, hideNotice, isStale, loadingIndicator, setBusy,
  showNotice, viewHeading,
} from './ui.js';

export const DEVICES_HASH = '#/devices';
const SHORT_GROUPS = 2; // enough of the fingerprint to tell two devices apart in a button's name
const EXPLANATION = 'The phones, tablets and computers where you use the chat. Each has its own chat key. '
  + 'Remove one you no longer have.';
const REMOVE_QUESTION = 'Remove this device?';
const REMOVE_DETAIL = 'It is signed out, and its chat key is revoked: it can no longer read new messages.';
const REMOVED_MESSAGE = 'The device was removed. It is signed out and can no longer read new messages.';
const NONE_YET = 'No devices yet. A device appears here once you use the chat on it.';
const NOT_LISTED = 'This device is not listed yet: it appears once you use the chat on it.';
const OLD_APP_NOTE = 'Added by an older version of the app. It is replaced when that device opens the chat again.';

export function devicesView(ctx) {
  ctx.setTitle('Your devices');
  const page = {
    ctx,
    body: h('div', { class: 'devices' }, loadingIndicator('Loading your devices…')),
    status: h('p', { class: 'notice notice-info', role: 'status', tabindex: '-1', hidden: true }),
  };
  load(page);
  return h('section', { class: 'view view-narrow' },
    h('a', { class: 'back-link', href: '#/my-id' }, '← My ID'),
    viewHeading('Your devices'),
    h('p', { class: 'lead' }, EXPLANATION),
    ctx.flash && flashNotice(ctx.flash),
    page.status,
    page.body);
}

async function load(page) {
  const { ctx } = page;
  page.body.setAttribute('aria-busy', 'true');
  try {
    const [devices, current] = await Promise.all([
      listChatDevices({ signal: ctx.signal }),
      thisDevice(ctx.user?.id),
    ]);
    if (!ctx.signal.aborted) {
      mount(page.body, deviceList(page, devices, current));
    }
  } catch (error) {
    if (!isStale(ctx, error)) {
      mount(page.body, errorNotice(errorText(error)));
    }
  } finally {
    page.body.removeAttribute('aria-busy');
  }
}

// Without IndexedDB (a private window of some browsers) this device has no id: nothing is marked.
async function thisDevice(userId) {
  try {
    return userId ? await deviceOf(userId) : null;
  } catch {
    return null;
  }
}

function deviceList(page, devices, current) {
  if (!devices.length) {
    return h('p', { class: 'card muted' }, NONE_YET);
  }
  // This device first, the others newest first as the node lists them.
  const mine = devices.filter((device) => device.device && device.device === current);
  const others = devices.filter((device) => !mine.includes(device));
  return [
    !mine.length && h('p', { class: 'muted' }, NOT_LISTED),
    h('ul', { class: 'card-list device-list' },
      [...mine, ...others].map((device) => h('li', {}, deviceCard(page, device, mine.includes(device))))),
  ];
}

function deviceCard(page, device, isCurrent) {
  const card = h('article', { class: 'card device-card' },
    h('h2', { class: 'device-card-title' }, isCurrent ? 'This device' : deviceName(device)),
    definitionList([
      ['Key fingerprint', h('span', { class: 'hash device-fingerprint' }, groupedFingerprint(device.fingerprint))],
      ['Added', dateTime(device.registered_at)],
      ['On the ledger', device.height === null || device.height === undefined
        ? 'Waiting for the next block'
        : `In block ${device.height}`],
    ], 'device-details'));
  if (!device.device) {
    card.append(h('p', { class: 'field-hint' }, OLD_APP_NOTE));
  } else if (!isCurrent) {
    card.append(...removeControls(page, device));
  }
  return card;
}

// "Device 1a2b 3c4d": devices have no other name, and this tells their Remove buttons apart.
function deviceName(device) {
  const groups = groupedFingerprint(device.fingerprint).split(' ').slice(0, SHORT_GROUPS).join(' ');
  return `Device ${groups}`;
}

// ---- removing another device, after a confirmation in the page (never a browser dialog)

function removeControls(page, device) {
  const remove = h('button', {
    type: 'button', class: 'button button-danger-quiet', 'aria-label': `Remove ${deviceName(device).toLowerCase()}`,
  }, 'Remove');
  const actions = h('div', { class: 'actions' }, remove);
  const parts = {
    error: errorNotice(),
    yes: h('button', { type: 'button', class: 'button button-danger' }, 'Remove'),
    no: h('button', { type: 'button', class: 'button' }, 'Cancel'),
  };
  const panel = h('div', { class: 'confirm', role: 'group', 'aria-label': REMOVE_QUESTION, hidden: true },
    h('p', { class: 'confirm-question' }, REMOVE_QUESTION),
    h('p', { class: 'confirm-detail' }, REMOVE_DETAIL),
    parts.error,
    h('div', { class: 'actions' }, parts.yes, parts.no));
  remove.addEventListener('click', () => {
    hideNotice(parts.error);
    actions.hidden = true;
    panel.hidden = false;
    parts.yes.focus();
  });
  parts.no.addEventListener('click', () => {
    panel.hidden = true;
    actions.hidden = false;
    remove.focus();
  });
  parts.yes.addEventListener('click', () => removeDevice(page, device, parts));
  return [actions, panel];
}

async function removeDevice(page, device, { error, yes, no }) {
  const { ctx } = page;
  hideNotice(error);
  hideNotice(page.status);
  setBusy(yes, true, 'Removing…');
  no.disabled = true;
  try {
    await removeChatDevice(device.device, { signal: ctx.signal });
  } catch (failure) {
    if (!isStale(ctx, failure)) {
      showNotice(error, errorText(failure));
      setBusy(yes, false);
      no.disabled = false;
    }
    return;
  }
  if (!ctx.signal.aborted) {
    showNotice(page.status, REMOVED_MESSAGE);
    page.status.focus();
    await load(page);
  }
}
