'use strict';

// The signed-in user's token and profile, kept in memory and in localStorage so
// the installed app stays signed in between launches until logout or expiry.
// Whenever the session is read or cleared, the private chat data of everybody but
// the signed-in user is wiped from the device (a shared phone: chat-store.js).

import { forgetOtherUsers } from './chat-store.js';

const TOKEN_KEY = 'medledger.token';
const USER_KEY = 'medledger.user';
const EXPIRES_KEY = 'medledger.expires_at';
const KEY_PREFIX = 'medledger.';

const state = {
  token: null,
  user: null,
  expiresAt: null,
};

// Answers true when a stored session was found but had already expired.
export function loadSession() {
  resetState();
  const token = readKey(TOKEN_KEY);
  const user = parseUser(readKey(USER_KEY));
  if (!token || !user) {
    clearSession();
    return false;
  }
  Object.assign(state, { token, user, expiresAt: readKey(EXPIRES_KEY) });
  if (hasExpired()) {
    clearSession();
    return true;
  }
  forgetChatsOfOthers(user.id);
  return false;
}

export function saveSession({ token, user, expires_at: expiresAt }) {
  Object.assign(state, { token, user, expiresAt: expiresAt ?? null });
  writeKey(TOKEN_KEY, token);
  writeKey(USER_KEY, JSON.stringify(user));
  if (expiresAt) {
    writeKey(EXPIRES_KEY, expiresAt);
  }
}

// The server moved the inactivity deadline (it answers every call with the seconds left).
export function extendSession(seconds) {
  if (!state.token) {
    return;
  }
  state.expiresAt = new Date(Date.now() + seconds * 1000).toISOString();
  writeKey(EXPIRES_KEY, state.expiresAt);
}

// When the session ends unless used again (ms since the epoch), or null. Another tab's
// activity moves it too: the stored value is the newest.
export function sessionDeadline() {
  const stored = readKey(EXPIRES_KEY);
  if (stored && readKey(TOKEN_KEY) === state.token) {
    state.expiresAt = stored;
  }
  const deadline = Date.parse(state.expiresAt ?? '');
  return Number.isNaN(deadline) ? null : deadline;
}

export function clearSession() {
  resetState();
  removeOurKeys(safeStorage('localStorage'));
  removeOurKeys(safeStorage('sessionStorage'));
  forgetChatsOfOthers(null);
}

function forgetChatsOfOthers(userId) {
  forgetOtherUsers(userId).catch((error) => console.warn('Could not wipe chat data on this device.', error));
}

export function currentToken() {
  return state.token;
}

export function currentUser() {
  return state.user;
}

export function isSignedIn() {
  return Boolean(state.token) && !hasExpired();
}

export function hasExpired() {
  const expiresAt = Date.parse(state.expiresAt ?? '');
  return Boolean(state.token) && !Number.isNaN(expiresAt) && expiresAt <= Date.now();
}

// Another tab of the app logged in or out: follow it.
export function watchOtherTabs(onChange) {
  window.addEventListener('storage', (event) => {
    if (event.key === null || event.key === TOKEN_KEY) {
      const stored = readKey(TOKEN_KEY);
      if (stored !== state.token) {
        onChange(stored);
      }
    }
  });
}

function resetState() {
  Object.assign(state, { token: null, user: null, expiresAt: null });
}

function parseUser(text) {
  try {
    const user = JSON.parse(text ?? 'null');
    return user && typeof user === 'object' ? user : null;
  } catch {
    return null;
  }
}

// Storage can be missing or throw (private browsing, disabled cookies).
function safeStorage(name) {
  try {
    return window[name] ?? null;
  } catch {
    return null;
  }
}

function readKey(key) {
  try {
    return safeStorage('localStorage')?.getItem(key) ?? null;
  } catch {
    return null;
  }
}

function writeKey(key, value) {
  try {
    safeStorage('localStorage')?.setItem(key, value);
  } catch {
    // Without storage the session simply lasts as long as this page.
  }
}

function removeOurKeys(storage) {
  if (!storage) {
    return;
  }
  try {
    const ours = [];
    for (let i = 0; i < storage.length; i += 1) {
      const key = storage.key(i);
      if (key?.startsWith(KEY_PREFIX)) {
        ours.push(key);
      }
    }
    ours.forEach((key) => storage.removeItem(key));
  } catch {
    // Nothing stored that could be removed.
  }
}
