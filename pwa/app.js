'use strict';

// Entry point: session handling, the hash router, the header and the emergency
// banner. New screens (chat, ...) are added as one ROUTES entry plus, when they
// belong in the navigation, one NAV_LINKS entry (with its icon in TAB_ICONS).

import { accessLogView, accessView } from './access.js';
import { configureApi, revokeToken } from './api.js';
import {
  attachEmergencyBanner, clearEmergencyBanner, expireEmergencyBanner, hideEmergencyBanner, refreshEmergencyBanner,
} from './banner.js';
import { stopChat } from './chat-client.js';
import { chatView } from './chat.js';
import { h, mount } from './dom.js';
import { revokeAllObjectUrls } from './files.js';
import { attachIdleWarning, setIdleWarningSeconds, stopIdleWatch, watchIdle } from './idle.js';
import { matchesView } from './matches.js';
import { myIdView } from './my-id.js';
import { devicesView } from './devices.js';
import { securityView } from './security.js';
import { profileView } from './profile.js';
import { forgotPasswordView, noticesText, recoveryKeyView } from './recovery.js';
import { escrowView, recoverWithCodeView } from './escrow.js';
import {
  clearSession, currentToken, currentUser, extendSession, hasExpired, isSignedIn, loadSession, saveSession,
  watchOtherTabs,
} from './session.js';
import { loginView, recordView, recordsView, registerView } from './views.js';

const APP_NAME = 'MedLedger';
const SW_URL = '/app/sw.js';
const SW_SCOPE = '/app/';
const HOME_SIGNED_IN = '#/records';
const HOME_SIGNED_OUT = '#/login';
const SESSION_ENDED_MESSAGE = 'Your session has ended, please log in again.';
const LOGGED_OUT_MESSAGE = 'You have logged out.';
const IDLE_MESSAGE = 'You were signed out because of inactivity. Please log in again.';
const SESSION_IDLE_CODE = 'session_idle';
const SVG_NS = 'http://www.w3.org/2000/svg';
// Set on <body> for a screen that fills the window and scrolls inside (the chat).
const FILL_CLASS = 'screen-fill';
const SIGNED_IN_CLASS = 'signed-in';

// access: 'guest' screens are for signed-out visitors, 'user' screens need a session.
// fill: the screen takes the window's height and scrolls its own parts (chat.js).
const ROUTES = [
  { pattern: /^#\/login$/, access: 'guest', view: loginView },
  { pattern: /^#\/register$/, access: 'guest', view: registerView },
  { pattern: /^#\/forgot-password$/, access: 'guest', view: forgotPasswordView },
  { pattern: /^#\/recover-with-code$/, access: 'guest', view: recoverWithCodeView },
  { pattern: /^#\/records$/, access: 'user', view: recordsView },
  { pattern: /^#\/records\/([^/]+)$/, access: 'user', view: recordView },
  { pattern: /^#\/access$/, access: 'user', view: accessView },
  { pattern: /^#\/access-log$/, access: 'user', view: accessLogView },
  { pattern: /^#\/profile$/, access: 'user', view: profileView },
  { pattern: /^#\/matches$/, access: 'user', view: matchesView },
  { pattern: /^#\/chat\/([^/]+)$/, access: 'user', view: chatView, fill: true },
  { pattern: /^#\/my-id$/, access: 'user', view: myIdView },
  { pattern: /^#\/security$/, access: 'user', view: securityView },
  { pattern: /^#\/devices$/, access: 'user', view: devicesView },
  { pattern: /^#\/recovery-key$/, access: 'user', view: recoveryKeyView },
  { pattern: /^#\/escrow$/, access: 'user', view: escrowView },
];

const NAV_LINKS = [
  { href: '#/records', label: 'My records', icon: 'records' },
  { href: '#/access', label: 'Access', icon: 'access' },
  { href: '#/access-log', label: 'Access log', icon: 'log' },
  { href: '#/profile', label: 'Symptoms', icon: 'symptoms' },
  // A conversation is reached from Matches: that tab stays current in it.
  { href: '#/matches', label: 'Matches', icon: 'matches', covers: ['#/chat/'] },
];
// Outline icons on a 24-unit grid, drawn in the text colour (so the current tab's
// colour and the dark theme apply to them too). Built as SVG elements: no icon font,
// nothing fetched.
const TAB_ICONS = {
  records: ['M14 3H7a2 2 0 0 0-2 2v14a2 2 0 0 0 2 2h10a2 2 0 0 0 2-2V8z', 'M14 3v5h5', 'M9 13h6', 'M9 17h6'],
  access: ['M12 3l7 3v6c0 4.5-3 7.5-7 9-4-1.5-7-4.5-7-9V6z', 'M9 12l2 2 4-4'],
  log: ['M21 12a9 9 0 1 1-18 0 9 9 0 0 1 18 0z', 'M12 7v5l3 2'],
  symptoms: ['M3 12h4l2-5 4 10 2-5h6'],
  matches: [
    'M16 20v-1a4 4 0 0 0-4-4H6a4 4 0 0 0-4 4v1', 'M13 7a4 4 0 1 1-8 0 4 4 0 0 1 8 0z',
    'M22 20v-1a4 4 0 0 0-3-3.87', 'M16 3.13a4 4 0 0 1 0 7.75',
  ],
};
// Beside the name in the header: the tab bar has room for five tabs on a phone.
const MY_ID_LINK = { href: '#/my-id', label: 'My ID' };

const app = {
  main: null,
  sessionBar: null,
  controller: null,
  flash: null,
  rendered: false,
};

function start() {
  app.main = document.getElementById('app');
  app.sessionBar = document.getElementById('session-bar');
  attachEmergencyBanner(document.getElementById('emergency-banner'));
  attachIdleWarning(document.getElementById('idle-warning'), idleTimeUp);
  configureApi({
    getToken: currentToken,
    onUnauthorized: (error) => endSession(error?.code === SESSION_IDLE_CODE ? error.message : SESSION_ENDED_MESSAGE),
    onSessionDeadline: sessionDeadlineMoved,
  });
  if (loadSession()) {
    app.flash = SESSION_ENDED_MESSAGE;
  }
  watchOtherTabs(followOtherTab);
  window.addEventListener('hashchange', render);
  render();
  registerServiceWorker();
}

function render() {
  if (hasExpired()) {
    endSession(SESSION_ENDED_MESSAGE);
    return;
  }
  const hash = window.location.hash;
  const found = findRoute(hash);
  const target = redirectFor(found?.route);
  if (target) {
    replaceHash(target);
    return;
  }
  const params = decodeParams(found.match);
  if (!params) {
    replaceHash(homeHash());
    return;
  }
  showView(found.route, params);
}

function findRoute(hash) {
  for (const route of ROUTES) {
    const match = route.pattern.exec(hash);
    if (match) {
      return { route, match };
    }
  }
  return null;
}

function redirectFor(route) {
  if (!route) {
    return homeHash();
  }
  if (route.access === 'user' && !isSignedIn()) {
    return HOME_SIGNED_OUT;
  }
  if (route.access === 'guest' && isSignedIn()) {
    return HOME_SIGNED_IN;
  }
  return null;
}

function decodeParams(match) {
  try {
    return match.slice(1).map(decodeURIComponent);
  } catch {
    return null;
  }
}

function showView(route, params) {
  app.controller?.abort();
  app.controller = new AbortController();
  if (isSignedIn()) {
    watchIdle();
  }
  renderSessionBar();
  updateBanner(route);
  document.body.classList.toggle(FILL_CLASS, Boolean(route.fill));
  mount(app.main, route.view(viewContext(app.controller.signal), ...params));
  focusHeading();
}

function updateBanner(route) {
  if (route.access === 'user') {
    refreshEmergencyBanner();
  } else {
    hideEmergencyBanner();
  }
}

// What every view may use; views never import this module.
function viewContext(signal) {
  return {
    signal,
    user: currentUser(),
    flash: takeFlash(),
    navigate,
    signIn,
    setTitle,
    emergencySettingChanged: expireEmergencyBanner,
  };
}

function takeFlash() {
  const message = app.flash;
  app.flash = null;
  return message;
}

// The first screen keeps the browser's initial focus; later ones move focus to
// their heading so keyboard and screen-reader users land on the new content.
function focusHeading() {
  if (app.rendered) {
    app.main.querySelector('h1')?.focus();
  }
  app.rendered = true;
}

function setTitle(title) {
  document.title = title ? `${title} · ${APP_NAME}` : APP_NAME;
}

function navigate(hash, { flash = null } = {}) {
  app.flash = flash;
  if (window.location.hash === hash) {
    render();
  } else {
    window.location.hash = hash;
  }
}

function replaceHash(hash) {
  window.history.replaceState(null, '', hash);
  render();
}

function homeHash() {
  return isSignedIn() ? HOME_SIGNED_IN : HOME_SIGNED_OUT;
}

// `next`: where to go (registration goes on to the recovery key). What the server tells once
// (a password reset without the password, failed sign-ins) shows there.
function signIn(session, { next = HOME_SIGNED_IN } = {}) {
  saveSession(session);
  const told = [noticesText(session.notices), failedAttemptsNotice(session.failed_attempts)].filter(Boolean);
  navigate(next, { flash: told.join(' ') || null });
}

// Failed sign-ins on the account since the previous one (throttled by the server, docs/security.md).
function failedAttemptsNotice(failed) {
  if (!failed || !failed.count) {
    return null;
  }
  const attempts = failed.count === 1 ? '1 failed sign-in attempt' : `${failed.count} failed sign-in attempts`;
  const when = failed.last_at ? `, the last on ${new Date(failed.last_at).toLocaleString()}` : '';
  return `${attempts} on your account since your last sign-in${when}. If that was not you, change your password.`;
}

function sessionDeadlineMoved(seconds, warningSeconds) {
  extendSession(seconds);
  setIdleWarningSeconds(warningSeconds);
}

// The server has signed the token out by now; revoking it too costs nothing.
function idleTimeUp() {
  const token = currentToken();
  endSession(IDLE_MESSAGE);
  if (token) {
    revokeToken(token).catch(() => {});
  }
}

// Drops everything this page knows about the patient, then shows the login screen.
// Several requests may fail with 401 together; only the first one ends the session.
function endSession(message) {
  if (!currentToken()) {
    return;
  }
  app.controller?.abort();
  app.controller = null;
  stopIdleWatch();
  // Before the session goes: the chat data to forget is this user's.
  stopChat(currentUser()?.id);
  clearSession();
  clearEmergencyBanner();
  revokeAllObjectUrls();
  mount(app.main);
  renderSessionBar();
  navigate(HOME_SIGNED_OUT, { flash: message });
}

async function logOut() {
  const token = currentToken();
  endSession(LOGGED_OUT_MESSAGE);
  if (token) {
    // Best effort: the local session is gone either way.
    await revokeToken(token).catch(() => {});
  }
}

function followOtherTab(storedToken) {
  if (storedToken) {
    loadSession();
    render();
  } else if (currentToken()) {
    endSession(LOGGED_OUT_MESSAGE);
  }
}

function renderSessionBar() {
  const user = currentUser();
  document.body.classList.toggle(SIGNED_IN_CLASS, Boolean(user));
  if (!user) {
    mount(app.sessionBar);
    return;
  }
  const logOutButton = h('button', { type: 'button', class: 'button button-quiet' }, 'Log out');
  logOutButton.addEventListener('click', logOut);
  const myId = h('a', {
    class: 'button button-quiet my-id-link',
    href: MY_ID_LINK.href,
    'aria-current': window.location.hash === MY_ID_LINK.href ? 'page' : null,
  }, MY_ID_LINK.label);
  mount(app.sessionBar,
    h('nav', { class: 'nav', 'aria-label': 'Main' }, NAV_LINKS.map(navLink)),
    h('span', { class: 'user-name' }, user.display_name || user.username),
    myId,
    logOutButton);
}

function navLink({ href, label, icon, covers = [] }) {
  const hash = window.location.hash;
  const current = hash === href || [`${href}/`, ...covers].some((prefix) => hash.startsWith(prefix));
  return h('a', { class: 'nav-link', href, 'aria-current': current ? 'page' : null },
    tabIcon(TAB_ICONS[icon]),
    h('span', { class: 'nav-label' }, label));
}

// Decorative: the label beside it names the tab.
function tabIcon(paths) {
  const svg = document.createElementNS(SVG_NS, 'svg');
  for (const [name, value] of Object.entries({
    class: 'nav-icon', viewBox: '0 0 24 24', width: '24', height: '24', 'aria-hidden': 'true', focusable: 'false',
  })) {
    svg.setAttribute(name, value);
  }
  for (const d of paths) {
    const path = document.createElementNS(SVG_NS, 'path');
    path.setAttribute('d', d);
    svg.append(path);
  }
  return svg;
}

function registerServiceWorker() {
  if (!('serviceWorker' in navigator)) {
    return;
  }
  navigator.serviceWorker.register(SW_URL, { scope: SW_SCOPE }).catch((error) => {
    console.warn('Service worker registration failed; the app still works online.', error);
  });
}

start();
