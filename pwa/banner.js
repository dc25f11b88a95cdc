'use strict';

// The emergency banner shown above every signed-in screen while a doctor holds
// break-glass access to the patient's records (docs/access.md, "Break-glass").
// Checked on navigation, at most once per CHECK_INTERVAL_MS; the answer lives in
// this page's memory only (the service worker never caches API answers).

import { getEmergencyAccess, isAbortError } from './api.js';
import { h, mount } from './dom.js';
import { formatClock, personWithHospital } from './format.js';
import { errorText } from './ui.js';

const CHECK_INTERVAL_MS = 30_000;
const ACCESS_LOG_HASH = '#/access-log';
const EXPIRY_GRACE_MS = 1_000;
const CHECK_FAILED_PREFIX = 'Could not check for emergency access: ';

const banner = {
  container: null,
  checkedAt: null,
  status: null,
  error: null,
  controller: null,
  shown: '',
  expiryTimer: null,
};

export function attachEmergencyBanner(container) {
  banner.container = container;
}

// Called on every signed-in navigation.
export function refreshEmergencyBanner() {
  if (banner.checkedAt !== null && Date.now() - banner.checkedAt < CHECK_INTERVAL_MS) {
    renderBanner();
    return;
  }
  checkEmergencies();
}

// The patient changed their emergency setting: check again on the next navigation.
export function expireEmergencyBanner() {
  banner.checkedAt = null;
}

export function hideEmergencyBanner() {
  show('', []);
}

// Logout: forget everything, including a check still under way.
export function clearEmergencyBanner() {
  banner.controller?.abort();
  clearTimeout(banner.expiryTimer);
  Object.assign(banner, { checkedAt: null, status: null, error: null, controller: null, expiryTimer: null });
  hideEmergencyBanner();
}

async function checkEmergencies() {
  banner.controller?.abort();
  const controller = new AbortController();
  Object.assign(banner, { controller, checkedAt: Date.now() });
  try {
    const status = await getEmergencyAccess({ signal: controller.signal });
    Object.assign(banner, { status, error: null });
  } catch (error) {
    if (isAbortError(error) || controller.signal.aborted) {
      return;
    }
    banner.error = errorText(error);  // a plain sentence, never the raw error
  }
  renderBanner();
}

function renderBanner() {
  if (banner.error) {
    show(`error:${banner.error}`, checkFailedNotice(banner.error));
    return;
  }
  const running = activeEmergencies(banner.status);
  const key = running.map((item) => `${item.id}@${item.expires_at}`).join(',');
  show(key, running.length ? emergencyBanner(running) : []);
  hideAtExpiry(running);
}

// The banner goes away when the last emergency ends, even if the patient stays on one screen.
function hideAtExpiry(running) {
  clearTimeout(banner.expiryTimer);
  banner.expiryTimer = null;
  if (running.length) {
    const ends = Math.min(...running.map((item) => Date.parse(item.expires_at)));
    banner.expiryTimer = setTimeout(renderBanner, ends - Date.now() + EXPIRY_GRACE_MS);
  }
}

// Re-mounting unchanged content would make screen readers announce it again.
function show(key, content) {
  if (!banner.container || key === banner.shown) {
    return;
  }
  banner.shown = key;
  mount(banner.container, content);
}

// An emergency lets the doctor read only while it runs and the patient is opted in.
function activeEmergencies(status) {
  if (!status?.enabled) {
    return [];
  }
  const now = Date.now();
  return (status.emergencies ?? []).filter((item) => item.active && Date.parse(item.expires_at) > now);
}

function emergencyBanner(running) {
  return h('section', { class: 'emergency-banner', role: 'alert', 'aria-label': 'Emergency access' },
    running.map(emergencyLine),
    h('a', { class: 'emergency-banner-link', href: ACCESS_LOG_HASH }, 'See what they opened in your access log'));
}

function emergencyLine(item) {
  return h('p', { class: 'emergency-banner-text' },
    h('strong', {}, 'Emergency access in progress: '),
    `${personWithHospital(item.doctor)} may read your records until `,
    h('time', { datetime: item.expires_at }, formatClock(item.expires_at)),
    ` — reason: ${item.reason}`);
}

function checkFailedNotice(message) {
  return h('p', { class: 'notice notice-error banner-check-failed', role: 'alert' }, CHECK_FAILED_PREFIX + message);
}
