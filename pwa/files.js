'use strict';

import { h } from './dom.js';

// Browsers start a download asynchronously from the object URL, so revoking it
// immediately can cancel the download; give it time, and revoke early on logout.
const REVOKE_DELAY_MS = 30_000;

const liveUrls = new Set();

export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  liveUrls.add(url);
  const link = h('a', { href: url, download: filename || 'attachment', hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => revokeObjectUrl(url), REVOKE_DELAY_MS);
}

// An object URL for showing `blob` in the page; revoked by revokeObjectUrls when the screen
// goes, or by revokeAllObjectUrls on logout.
export function objectUrl(blob) {
  const url = URL.createObjectURL(blob);
  liveUrls.add(url);
  return url;
}

export function revokeObjectUrls(urls) {
  for (const url of urls) {
    revokeObjectUrl(url);
  }
  urls.clear();
}

export function revokeAllObjectUrls() {
  for (const url of liveUrls) {
    revokeObjectUrl(url);
  }
}

function revokeObjectUrl(url) {
  if (liveUrls.delete(url)) {
    URL.revokeObjectURL(url);
  }
}
