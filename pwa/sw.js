'use strict';

// Caches the app shell only, so the installed app opens without a network.
// API answers and patient data are never cached: such requests get no
// respondWith() and go to the network untouched.
// Bump CACHE_VERSION whenever a file in SHELL_URLS changes.

const CACHE_VERSION = 'v29';
const CACHE_PREFIX = 'medledger-shell-';
const CACHE_NAME = `${CACHE_PREFIX}${CACHE_VERSION}`;
const APP_ROOT = '/app/';
const API_PREFIX = '/api/';
const SHELL_URLS = [
  APP_ROOT,
  '/app/app.js',
  '/app/access.js',
  '/app/api.js',
  '/app/banner.js',
  '/app/chat.js',
  '/app/chat-client.js',
  '/app/chat-crypto.js',
  '/app/chat-store.js',
  '/app/devices.js',
  '/app/dom.js',
  '/app/downloads.js',
  '/app/files.js',
  '/app/format.js',
  '/app/idle.js',
  '/app/matches.js',
  '/app/messages.js',
  '/app/my-id.js',
  '/app/profile.js',
  '/app/recovery.js',
  '/app/escrow.js',
  '/app/security.js',
  '/app/session.js',
  '/app/socket.js',
  '/app/ui.js',
  '/app/views.js',
  '/app/vendor/qrcode-generator.esm.js',
  '/app/vendor/socket.io.esm.min.js',
  '/app/styles.css',
  '/app/code-picker.css',
  '/app/recovery.css',
  '/app/manifest.webmanifest',
  '/app/icons/icon-192.png',
  '/app/icons/icon-512.png',
];
const SHELL_PATHS = new Set(SHELL_URLS);
const INDEX_PATHS = new Set([APP_ROOT, '/app/index.html']);

self.addEventListener('install', (event) => {
  event.waitUntil(cacheShell().then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(deleteOldCaches().then(() => self.clients.claim()));
});

self.addEventListener('fetch', (event) => {
  if (isShellRequest(event.request)) {
    event.respondWith(fromShellCache(event.request));
  }
});

async function cacheShell() {
  const cache = await caches.open(CACHE_NAME);
  await Promise.all(SHELL_URLS.map(async (url) => {
    // 'reload' skips the HTTP cache so a new version never stores old files.
    const response = await fetch(url, { cache: 'reload' });
    if (!response.ok) {
      throw new Error(`Cannot cache ${url}: HTTP ${response.status}`);
    }
    await cache.put(url, await withoutRedirect(response));
  }));
}

// A redirected response cannot answer a navigation, so store a clean copy.
async function withoutRedirect(response) {
  if (!response.redirected) {
    return response;
  }
  const { status, statusText, headers } = response;
  return new Response(await response.blob(), { status, statusText, headers });
}

async function deleteOldCaches() {
  const names = await caches.keys();
  await Promise.all(names
    .filter((name) => name.startsWith(CACHE_PREFIX) && name !== CACHE_NAME)
    .map((name) => caches.delete(name)));
}

function isShellRequest(request) {
  if (request.method !== 'GET') {
    return false;
  }
  const url = new URL(request.url);
  if (url.origin !== self.location.origin || url.pathname.startsWith(API_PREFIX)) {
    return false;
  }
  if (request.mode === 'navigate') {
    return INDEX_PATHS.has(url.pathname);
  }
  return SHELL_PATHS.has(url.pathname);
}

async function fromShellCache(request) {
  const url = new URL(request.url);
  const key = INDEX_PATHS.has(url.pathname) ? APP_ROOT : url.pathname;
  const cache = await caches.open(CACHE_NAME);
  const cached = await cache.match(key);
  return cached ?? fetch(request);
}
