'use strict';

// Building blocks shared by the screens: headings, notices, loading states,
// form fields and busy buttons. Text always goes in as text (see dom.js).

import { isAbortError } from './api.js';
import { h, mount } from './dom.js';
import { formatClock, formatDateTime } from './format.js';
import { OFFLINE_MESSAGE, errorMessage, isOffline } from './messages.js';

export const SEARCH_MIN_CHARS = 2;
const SEARCH_DEBOUNCE_MS = 250;

export function viewHeading(text) {
  return h('h1', { class: 'view-title', tabindex: '-1' }, text);
}

export function dateTime(iso) {
  return h('time', { datetime: iso }, formatDateTime(iso));
}

export function definitionList(pairs, className) {
  return h('dl', { class: className },
    pairs.filter(([, value]) => value).map(([term, value]) => h('div', { class: 'pair' },
      h('dt', {}, term), h('dd', {}, value))));
}

export function loadingIndicator(text) {
  return h('p', { class: 'loading', role: 'status' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), text);
}

export function flashNotice(text) {
  return h('p', { class: 'notice notice-info', role: 'status' }, text);
}

export function errorNotice(text) {
  return h('p', { class: 'notice notice-error', role: 'alert', hidden: !text }, text ?? '');
}

export function showNotice(element, text) {
  element.textContent = text;
  element.hidden = false;
}

export function hideNotice(element) {
  element.textContent = '';
  element.hidden = true;
}

export function formField({ id, label, hint, ...inputAttrs }) {
  const hintId = hint ? `${id}-hint` : null;
  const errorId = `${id}-error`;
  const input = h('input', {
    id, name: id, class: 'input', type: 'text', ...inputAttrs,
    'aria-describedby': [hintId, errorId].filter(Boolean).join(' '),
  });
  const error = h('p', { id: errorId, class: 'field-error', hidden: true });
  const wrapper = h('div', { class: 'field' },
    h('label', { class: 'label', for: id }, label),
    hint && h('p', { id: hintId, class: 'field-hint' }, hint),
    input,
    error);
  const setError = (message) => {
    error.textContent = message ?? '';
    error.hidden = !message;
    input.setAttribute('aria-invalid', message ? 'true' : 'false');
  };
  return { wrapper, input, setError };
}

export function fieldWrappers(fields) {
  return Object.values(fields).map((field) => field.wrapper);
}

// Marks every field, focuses the first problem, and tells whether there was one.
export function showProblems(fields, problems) {
  let first = null;
  for (const [name, field] of Object.entries(fields)) {
    field.setError(problems[name]);
    if (problems[name] && !first) {
      first = field;
    }
  }
  first?.input.focus();
  return first !== null;
}

export function setBusy(button, busy, busyLabel) {
  if (!button.dataset.idleLabel) {
    button.dataset.idleLabel = button.textContent;
  }
  button.disabled = busy;
  button.textContent = busy ? busyLabel : button.dataset.idleLabel;
}

// Every screen shows failures through this: the sentences live in messages.js.
export function errorText(error) {
  return errorMessage(error);
}

export function isStale(ctx, error) {
  return ctx.signal.aborted || isAbortError(error);
}

// Search as you type on `search` (a form field with `results` and `note`): waits for a
// pause in typing, and only the latest query's answer is shown (an older request still
// under way is aborted). `find(query, {signal})` fetches, `show(query, items)` draws.
// Returns the function that stops it (also called when the page goes away).
export function searchAsYouType(page, search, find, show) {
  const state = { timer: null, controller: null };
  const stop = () => {
    clearTimeout(state.timer);
    state.controller?.abort();
    state.controller = null;
  };
  search.input.addEventListener('input', () => {
    stop();
    const query = search.input.value.trim();
    mount(search.results);
    search.note.textContent = '';
    if (query.length >= SEARCH_MIN_CHARS) {
      state.timer = setTimeout(() => runSearch(page, search, state, query, find, show), SEARCH_DEBOUNCE_MS);
    }
  });
  page.ctx.signal.addEventListener('abort', stop);
  return stop;
}

async function runSearch(page, search, state, query, find, show) {
  const controller = new AbortController();
  state.controller = controller;
  search.note.textContent = 'Searching…';
  try {
    const items = await find(query, { signal: controller.signal });
    if (!controller.signal.aborted && !page.ctx.signal.aborted) {
      show(query, items);
    }
  } catch (error) {
    if (!controller.signal.aborted && !isStale(page.ctx, error)) {
      search.note.textContent = '';
      search.setError(errorText(error));
    }
  }
}

// ---- lists that grow a page at a time

// Under a paged list: "Showing 50 of 312" (when the server counts) and "Load more" while
// `next_offset` says there is more. `onMore` fetches the next page; its failure is shown here.
export function pageControls(onMore) {
  const controls = {
    count: h('p', { class: 'list-count', role: 'status', hidden: true }),
    error: errorNotice(),
    more: h('button', { type: 'button', class: 'button load-more', hidden: true }, 'Load more'),
  };
  controls.element = h('div', { class: 'page-controls', hidden: true }, controls.count, controls.error, controls.more);
  controls.more.addEventListener('click', async () => {
    hideNotice(controls.error);
    setBusy(controls.more, true, 'Loading more…');
    try {
      await onMore();
    } catch (error) {
      if (!isAbortError(error)) {
        showNotice(controls.error, errorText(error));
      }
    } finally {
      setBusy(controls.more, false);
    }
  });
  controls.update = ({ shown, total, nextOffset }) => updatePageControls(controls, { shown, total, nextOffset });
  return controls;
}

function updatePageControls(controls, { shown, total, nextOffset }) {
  const counted = Number.isInteger(total) && total > 0;
  controls.count.textContent = counted ? `Showing ${Math.min(shown, total)} of ${total}` : '';
  controls.count.hidden = !counted;
  controls.more.hidden = nextOffset === null || nextOffset === undefined;
  // Nothing to say: no room taken under the list.
  controls.element.hidden = controls.count.hidden && controls.more.hidden && controls.error.hidden;
}

// `items` followed by those of `page` not already among them: an item added or removed on the
// server between two pages shifts the offsets, and must not show twice.
export function mergeById(items, page) {
  const seen = new Set(items.map((item) => item.id));
  return [...items, ...page.filter((item) => !seen.has(item.id) && seen.add(item.id))];
}

// ---- what is shown while offline

export function offlineNotice() {
  return h('p', { class: 'notice notice-offline', role: 'status', hidden: true });
}

// A failed refresh that keeps what was loaded at `loadedAt` (ms) says so; any other failure says
// what went wrong. Answers whether the error was the network.
export function showOffline(notice, error, loadedAt) {
  if (!isOffline(error)) {
    return false;
  }
  showNotice(notice, loadedAt ? `Offline — showing what was loaded at ${formatClock(loadedAt)}` : OFFLINE_MESSAGE);
  return true;
}
