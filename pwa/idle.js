'use strict';

// The warning before the server signs the app out for inactivity (portal/idle.py,
// APP_IDLE_MINUTES): shown WARNING seconds before, with a countdown and "Stay signed in",
// which makes one API call (any call counts as activity). When the time is up the app
// ends its session like a logout and says why.

import { getMe } from './api.js';
import { h, mount } from './dom.js';
import { sessionDeadline } from './session.js';

const TICK_MS = 1_000;
const DEFAULT_WARNING_SECONDS = 60;

const idle = {
  container: null,
  timer: null,
  warningMs: DEFAULT_WARNING_SECONDS * 1000,
  onTimeUp: () => {},
  shown: false,
  text: null,
};

export function attachIdleWarning(container, onTimeUp) {
  idle.container = container;
  idle.onTimeUp = onTimeUp;
}

// Called while signed in; the server's answers keep the deadline current (session.js).
export function watchIdle() {
  if (idle.timer === null) {
    idle.timer = setInterval(tick, TICK_MS);
  }
  tick();
}

export function setIdleWarningSeconds(seconds) {
  if (Number.isFinite(seconds) && seconds > 0) {
    idle.warningMs = seconds * 1000;
  }
}

export function stopIdleWatch() {
  clearInterval(idle.timer);
  idle.timer = null;
  hide();
}

function tick() {
  const deadline = sessionDeadline();
  if (deadline === null) {
    hide();
    return;
  }
  const left = deadline - Date.now();
  if (left <= 0) {
    stopIdleWatch();
    idle.onTimeUp();
  } else if (left <= idle.warningMs) {
    show(left);
  } else {
    hide();
  }
}

function show(left) {
  const seconds = Math.ceil(left / 1000);
  const clock = `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, '0')}`;
  const message = `You will be signed out in ${clock} because of inactivity.`;
  if (idle.shown) {
    idle.text.textContent = message;
    return;
  }
  idle.text = h('p', { class: 'idle-warning-text', id: 'idle-warning-text' }, message);
  const stay = h('button', { type: 'button', class: 'button' }, 'Stay signed in');
  stay.addEventListener('click', () => staySignedIn(stay));
  mount(idle.container,
    h('div', { class: 'idle-warning', role: 'alertdialog', 'aria-labelledby': 'idle-warning-text' }, idle.text, stay));
  idle.shown = true;
  stay.focus();
}

function hide() {
  if (idle.shown && idle.container) {
    mount(idle.container);
  }
  idle.shown = false;
}

async function staySignedIn(button) {
  button.disabled = true;
  try {
    await getMe();
  } catch {
    // A 401 ends the session through the API's hook; a network failure leaves the countdown running.
  }
  button.disabled = false;
  tick();
}
