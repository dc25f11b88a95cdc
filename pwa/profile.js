'use strict';

// The "Symptoms" screen (#/profile): the patient's symptom profile (HPO terms found
// by search-as-you-type, an optional ICD-10-CM diagnosis, age band and sex) and
// the opt-in that lets patients with the same symptoms find them. Withdrawing
// takes the patient out of matching at once. The node keeps the profile encrypted
// and matches on keyed tokens (docs/matching.md). Views follow views.js.

import { getProfile, saveProfile, searchDiagnoses, searchSymptoms, withdrawProfile } from './api.js';
import { startChat } from './chat-client.js';
import { h, mount } from './dom.js';
import {
  SEARCH_MIN_CHARS, errorNotice, errorText, flashNotice, formField, hideNotice, isStale, loadingIndicator,
  searchAsYouType, setBusy, showNotice, viewHeading,
} from './ui.js';

const MAX_TERMS = 50;
const AGE_BANDS = ['0-17', '18-29', '30-44', '45-59', '60-74', '75+'];
const AGE_BAND_CHOICES = AGE_BANDS.map((band) => ({ value: band, label: band }));
const SEXES = [
  { value: 'female', label: 'Female' },
  { value: 'male', label: 'Male' },
  { value: 'other', label: 'Other' },
];
const NOT_SAID = 'Prefer not to say';
const ICD10_PATTERN = /^[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?$/;
const DIAGNOSIS_WORDS = ['diagnos', 'icd-10'];
const REFUSED_STATUSES = new Set([400, 422]);
const OPT_IN_LABEL = 'Let others with the same symptoms find me';
const OPT_IN_EXPLANATION = 'They see a pseudonym and the symptoms you share, nothing else: not your name, '
  + 'not your records. You decide whether to talk to anyone who asks.';
const SAVED_MESSAGE = 'Saved.';
const SAVED_FINDABLE_MESSAGE = 'Saved. Patients with the same symptoms can now find you.';
const SAVED_HIDDEN_MESSAGE = 'Saved. Nobody can find you until you switch on “Let others find me”.';
const WITHDRAWN_MESSAGE = 'Withdrawn. Nobody can find you any more, and your symptom profile was deleted.';

export function profileView(ctx) {
  ctx.setTitle('Symptoms');
  const page = {
    ctx,
    terms: new Map(),
    status: h('p', { class: 'notice notice-info', role: 'status', tabindex: '-1', hidden: true }),
    body: h('div', { class: 'profile-body' }, loadingIndicator('Loading your symptoms…')),
  };
  // Prepares the chat key early, so that matches can check it before the first chat.
  startChat();
  loadProfile(page);
  return h('section', { class: 'view' },
    viewHeading('Symptoms'),
    h('p', { class: 'lead' }, 'Find patients who have the same symptoms as you, and talk to them privately.'),
    ctx.flash && flashNotice(ctx.flash),
    page.status,
    page.body);
}

async function loadProfile(page) {
  try {
    const profile = await getProfile({ signal: page.ctx.signal });
    if (!page.ctx.signal.aborted) {
      mount(page.body, profileForm(page, profile));
    }
  } catch (error) {
    if (!isStale(page.ctx, error)) {
      mount(page.body, errorNotice(errorText(error)));
    }
  }
}

// ---- the form

function profileForm(page, profile) {
  page.terms = new Map((profile?.terms ?? []).map((term) => [term.id, term]));
  const form = {
    page,
    search: codeSearch(page, {
      id: 'symptom-search', label: 'Add a symptom', noun: 'symptom',
      hint: `Type at least ${SEARCH_MIN_CHARS} letters, in your own words: “short of breath”, “tired”, “cough”.`,
      find: searchSymptoms, onChoose: (term) => addTerm(form, term),
      describe: (term) => [term.name, term.matched ? `“${term.matched}”` : '', term.id],
      pressed: (term) => page.terms.has(term.id),
    }),
    chips: h('ul', { class: 'term-chips', 'aria-label': 'Your symptoms' }),
    termsError: h('p', { id: 'profile-terms-error', class: 'field-error', hidden: true }),
    picked: profile?.diagnosis ?? null,
    diagnosisChip: h('ul', { class: 'term-chips', 'aria-label': 'Your diagnosis' }),
    ageBand: selectField('profile-age-band', 'Age band', AGE_BAND_CHOICES, profile?.age_band),
    sex: selectField('profile-sex', 'Sex', SEXES, profile?.sex),
    optIn: optInSwitch(profile?.discoverable ?? false),
    error: errorNotice(),
    save: h('button', { type: 'submit', class: 'button button-primary button-block' }, 'Save'),
    saveStatus: h('p', { class: 'save-status', role: 'status' }),
  };
  form.diagnosis = codeSearch(page, {
    id: 'profile-diagnosis', label: 'Diagnosis (optional)', noun: 'diagnosis',
    hint: 'Search by name, for example “asthma”, or type the ICD-10-CM code. Leave empty if you have none.',
    find: searchDiagnoses, onChoose: (diagnosis) => pickDiagnosis(form, diagnosis),
    describe: (diagnosis) => [diagnosis.description, diagnosis.code],
    pressed: (diagnosis) => form.picked?.code === diagnosis.code,
  });
  form.diagnosis.input.value = form.picked?.code ?? '';
  renderChips(form);
  renderDiagnosis(form);
  const element = h('form', { class: 'card form', novalidate: true, 'aria-label': 'Your symptom profile' },
    h('fieldset', { class: 'fieldset' },
      h('legend', { class: 'label' }, 'Your symptoms'),
      form.search.element,
      form.chips,
      form.termsError),
    h('div', { class: 'fieldset' }, form.diagnosis.element, form.diagnosisChip),
    h('div', { class: 'select-pair' }, form.ageBand.wrapper, form.sex.wrapper),
    form.optIn.element,
    form.error,
    form.save,
    form.saveStatus);
  element.addEventListener('submit', (event) => {
    event.preventDefault();
    submitProfile(form);
  });
  element.addEventListener('input', () => markChanged(form));
  element.addEventListener('change', () => markChanged(form));
  return [element, profile ? withdrawCard(page) : []];
}

function markChanged(form) {
  form.saveStatus.textContent = '';
}

function selectField(id, label, options, current) {
  const select = h('select', { id, name: id, class: 'input' },
    h('option', { value: '' }, NOT_SAID),
    options.map(({ value, label: text }) => h('option', { value, selected: value === current }, text)));
  return { select, wrapper: h('div', { class: 'field' }, h('label', { class: 'label', for: id }, label), select) };
}

function optInSwitch(initial) {
  const state = h('span', { class: 'switch-state' }, initial ? 'On' : 'Off');
  const toggle = h('button', {
    type: 'button', class: 'switch', role: 'switch', 'aria-checked': String(initial),
    'aria-labelledby': 'profile-opt-in-label', 'aria-describedby': 'profile-opt-in-explanation',
  }, h('span', { class: 'switch-track', 'aria-hidden': 'true' }), state);
  const optIn = {
    toggle,
    get on() {
      return toggle.getAttribute('aria-checked') === 'true';
    },
    element: h('div', { class: 'opt-in' },
      h('div', { class: 'switch-row' },
        h('span', { id: 'profile-opt-in-label', class: 'label' }, OPT_IN_LABEL),
        toggle),
      h('p', { id: 'profile-opt-in-explanation', class: 'field-hint' }, OPT_IN_EXPLANATION)),
  };
  toggle.addEventListener('click', () => {
    const on = !optIn.on;
    toggle.setAttribute('aria-checked', String(on));
    state.textContent = on ? 'On' : 'Off';
    toggle.dispatchEvent(new Event('change', { bubbles: true }));
  });
  return optIn;
}

// ---- chosen symptoms

function addTerm(form, term) {
  if (!form.page.terms.has(term.id) && form.page.terms.size < MAX_TERMS) {
    form.page.terms.set(term.id, term);
    renderChips(form);
    markChanged(form);
  }
  setTermsError(form, null);
  form.search.clear();
  form.search.input.focus();
}

function removeTerm(form, term) {
  form.page.terms.delete(term.id);
  renderChips(form);
  markChanged(form);
  form.search.input.focus();
}

function renderChips(form) {
  const terms = [...form.page.terms.values()].sort(byName);
  if (!terms.length) {
    mount(form.chips, h('li', { class: 'muted' }, 'No symptoms chosen yet.'));
    return;
  }
  mount(form.chips, terms.map((term) => h('li', { class: 'term-chip' },
    h('span', { class: 'term-chip-name' }, term.name),
    h('button', {
      type: 'button', class: 'term-chip-remove', 'aria-label': `Remove ${term.name}`,
      onclick: () => removeTerm(form, term),
    }, '×'))));
}

function pickDiagnosis(form, diagnosis) {
  form.picked = diagnosis;
  renderDiagnosis(form);
  markChanged(form);
  form.diagnosis.setError(null);
  form.diagnosis.clear();
  form.diagnosis.input.focus();
}

function renderDiagnosis(form) {
  const { picked } = form;
  if (!picked) {
    mount(form.diagnosisChip, h('li', { class: 'muted' }, 'No diagnosis chosen.'));
    return;
  }
  mount(form.diagnosisChip, h('li', { class: 'term-chip' },
    h('span', { class: 'term-chip-name' }, `${picked.description} (${picked.code})`),
    h('button', {
      type: 'button', class: 'term-chip-remove', 'aria-label': `Remove ${picked.description}`,
      onclick: () => {
        form.picked = null;
        form.diagnosis.input.value = '';
        renderDiagnosis(form);
        markChanged(form);
        form.diagnosis.input.focus();
      },
    }, '×')));
}

function byName(a, b) {
  return a.name.localeCompare(b.name);
}

function setTermsError(form, message) {
  form.termsError.textContent = message ?? '';
  form.termsError.hidden = !message;
  form.search.input.setAttribute('aria-invalid', message ? 'true' : 'false');
}

// ---- search as you type: the ARIA combobox pattern (arrow keys move, Enter picks, Escape closes)

function codeSearch(page, { id, label, hint, noun, find, onChoose, describe, pressed }) {
  const field = formField({
    id, label, hint, type: 'text', autocomplete: 'off', autocapitalize: 'none', spellcheck: 'false',
    enterkeyhint: 'search', role: 'combobox', 'aria-autocomplete': 'list', 'aria-expanded': 'false',
    'aria-controls': `${id}-listbox`,
  });
  const search = {
    ...field,
    options: [],
    active: -1,
    results: h('ul', {
      id: `${id}-listbox`, class: 'symptom-results code-listbox', role: 'listbox', 'aria-label': `${label}: found`,
    }),
    // The symptom search keeps the class the app's other searches use.
    note: h('p', { class: `field-hint ${noun === 'symptom' ? 'search-note' : `${noun}-search-note`}`, role: 'status' }),
    onChoose,
  };
  search.element = h('div', { class: `code-search ${noun}-search` }, field.wrapper, search.note, search.results);
  search.close = () => {
    mount(search.results);
    search.options = [];
    search.active = -1;
    field.input.setAttribute('aria-expanded', 'false');
    field.input.removeAttribute('aria-activedescendant');
  };
  search.clear = () => {
    search.stop();
    field.input.value = '';
    search.note.textContent = '';
    search.close();
  };
  const show = (query, items) => showOptions(search, { id, noun, query, items, describe, pressed });
  search.stop = searchAsYouType(page, search, find, show);
  field.input.addEventListener('keydown', (event) => onComboKey(search, event));
  return search;
}

function showOptions(search, { id, noun, query, items, describe, pressed }) {
  search.setError(null);
  search.options = items;
  search.active = -1;
  search.note.textContent = items.length
    ? `${items.length} found: use the arrow keys and Enter, or tap one.`
    : `No ${noun} matches “${query}”. Try other words.`;
  mount(search.results, items.map((item, n) => h('li', {
    id: `${id}-option-${n}`, role: 'option', class: 'symptom-option code-option', 'aria-selected': 'false',
    'data-pressed': String(pressed(item)),
    onmousedown: (event) => event.preventDefault(),
    onclick: () => search.onChoose(item),
  }, ...describe(item).filter(Boolean).map((part, k) => h('span', {
    class: k ? 'symptom-option-id' : 'symptom-option-name',
  }, part)))));
  search.input.setAttribute('aria-expanded', String(items.length > 0));
}

function onComboKey(search, event) {
  const count = search.options.length;
  if ((event.key === 'ArrowDown' || event.key === 'ArrowUp') && count) {
    event.preventDefault();
    search.active = (search.active + (event.key === 'ArrowDown' ? 1 : -1) + count) % count;
    [...search.results.children].forEach((option, n) => {
      option.setAttribute('aria-selected', String(n === search.active));
      if (n === search.active) {
        search.input.setAttribute('aria-activedescendant', option.id);
        option.scrollIntoView({ block: 'nearest' });
      }
    });
  } else if (event.key === 'Enter') {
    event.preventDefault();  // picking is not saving the whole form
    if (search.active >= 0) {
      search.onChoose(search.options[search.active]);
    }
  } else if (event.key === 'Escape' && count) {
    event.preventDefault();
    search.close();
  }
}

// ---- saving and withdrawing

async function submitProfile(form) {
  const request = profileRequest(form);
  if (!request) {
    return;
  }
  const { page } = form;
  hideNotice(form.error);
  hideNotice(page.status);
  form.saveStatus.textContent = 'Saving…';
  setBusy(form.save, true, 'Saving…');
  try {
    const profile = await saveProfile(request, { signal: page.ctx.signal });
    if (page.ctx.signal.aborted) {
      return;
    }
    mount(page.body, profileForm(page, profile));
    announce(page, savedMessage(profile));
  } catch (error) {
    if (!isStale(page.ctx, error)) {
      form.saveStatus.textContent = '';
      showSaveError(form, error);
      setBusy(form.save, false);
    }
  }
}

// The request to send, or null after marking what needs fixing.
function profileRequest(form) {
  const terms = [...form.page.terms.keys()];
  // A code typed and not picked from the list counts too (the server checks it).
  const diagnosis = form.diagnosis.input.value.trim().toUpperCase() || form.picked?.code || '';
  const termsProblem = terms.length ? null : 'Please choose at least one symptom.';
  const diagnosisProblem = diagnosis && !ICD10_PATTERN.test(diagnosis)
    ? 'This is not an ICD-10-CM code. Pick your diagnosis from the list, or type its code (like J45.909).'
    : null;
  setTermsError(form, termsProblem);
  form.diagnosis.setError(diagnosisProblem);
  if (termsProblem) {
    form.search.input.focus();
    return null;
  }
  if (diagnosisProblem) {
    form.diagnosis.input.focus();
    return null;
  }
  return {
    terms,
    diagnosis: diagnosis || null,
    ageBand: form.ageBand.select.value || null,
    sex: form.sex.select.value || null,
    discoverable: form.optIn.on,
  };
}

// The server checks the diagnosis against ICD-10-CM: its refusal belongs beside the field.
function showSaveError(form, error) {
  const text = errorText(error);
  const said = `${error?.code ?? ''} ${text}`.toLowerCase();
  if (REFUSED_STATUSES.has(error?.status) && DIAGNOSIS_WORDS.some((word) => said.includes(word))) {
    form.diagnosis.setError(`This diagnosis code was not accepted: ${text}`);
    form.diagnosis.input.focus();
  } else {
    showNotice(form.error, text);
    form.error.scrollIntoView({ block: 'nearest' });
  }
}

function savedMessage(profile) {
  if (!profile) {
    return SAVED_MESSAGE;
  }
  return profile.discoverable ? SAVED_FINDABLE_MESSAGE : SAVED_HIDDEN_MESSAGE;
}

function withdrawCard(page) {
  const error = errorNotice();
  const button = h('button', { type: 'button', class: 'button button-danger-quiet button-block' }, 'Withdraw');
  button.addEventListener('click', () => withdraw(page, { button, error }));
  return h('section', { class: 'card withdraw-card', 'aria-labelledby': 'withdraw-title' },
    h('h2', { id: 'withdraw-title', class: 'section-title' }, 'Stop being findable'),
    h('p', { class: 'explanation' }, 'Withdrawing takes you out of matching at once and deletes your symptom '
      + 'profile. You can describe your symptoms again at any time.'),
    error,
    button);
}

async function withdraw(page, { button, error }) {
  hideNotice(error);
  setBusy(button, true, 'Withdrawing…');
  try {
    await withdrawProfile({ signal: page.ctx.signal });
    if (!page.ctx.signal.aborted) {
      page.terms = new Map();
      mount(page.body, profileForm(page, null));
      announce(page, WITHDRAWN_MESSAGE);
    }
  } catch (failure) {
    if (!isStale(page.ctx, failure)) {
      showNotice(error, errorText(failure));
      setBusy(button, false);
    }
  }
}

// Focus moves to the message: the button pressed has been replaced.
function announce(page, text) {
  showNotice(page.status, text);
  page.status.focus();
}
