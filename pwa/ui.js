'use strict';

// Building blocks shared by the screens: headings, notices, loading states,
// form fields and busy buttons. Text always goes in as text (see dom.js).

import { isAbortError } from './api.js';
import { h, mount } from './dom.js';
import { formatDateTime } from './format.js';

const FALLBACK_ERROR_MESSAGE = 'Something went wrong. Please try again.';
const RATE_LIMITED = 429;
const RATE_LIMITED_MESSAGE = 'You did this too often in a short time. Please wait a minute, then try again.';
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

// A refusal for going too fast always reads the same, whichever request it was.
export function errorText(error) {
  if (error?.status === RATE_LIMITED) {
    return RATE_LIMITED_MESSAGE;
  }
  return error?.message || FALLBACK_ERROR_MESSAGE;
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
