'use strict';

// The "Symptoms" screen (#/profile): the patient's symptom profile (HPO terms found
// by search-as-you-type, an optional ICD-10-CM diagnosis, age band and sex) and
// the opt-in that lets patients with the same symptoms find them. Withdrawing
// takes the patient out of matching at once. The node keeps the profile encrypted
// and matches on keyed tokens (docs/matching.md). Views follow views.js.

import { getProfile, saveProfile, searchSymptoms, withdrawProfile } from './api.js';
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
    search: symptomSearch(page, (term) => addTerm(form, term)),
    chips: h('ul', { class: 'term-chips', 'aria-label': 'Your symptoms' }),
    termsError: h('p', { id: 'profile-terms-error', class: 'field-error', hidden: true }),
    diagnosis: formField({
      id: 'profile-diagnosis', label: 'Diagnosis (optional)', autocomplete: 'off', autocapitalize: 'characters',
      spellcheck: 'false', value: profile?.diagnosis?.code ?? '',
      hint: 'An ICD-10-CM code, for example J45.909. Leave empty if you have none.',
    }),
    diagnosisName: h('p', { class: 'field-hint' }, profile?.diagnosis?.description ?? ''),
    ageBand: selectField('profile-age-band', 'Age band', AGE_BAND_CHOICES, profile?.age_band),
    sex: selectField('profile-sex', 'Sex', SEXES, profile?.sex),
    optIn: optInSwitch(profile?.discoverable ?? false),
    error: errorNotice(),
    save: h('button', { type: 'submit', class: 'button button-primary button-block' }, 'Save'),
    saveStatus: h('p', { class: 'save-status', role: 'status' }),
  };
  renderChips(form);
  const element = h('form', { class: 'card form', novalidate: true, 'aria-label': 'Your symptom profile' },
    h('fieldset', { class: 'fieldset' },
      h('legend', { class: 'label' }, 'Your symptoms'),
      form.search.element,
      form.chips,
      form.termsError),
    form.diagnosis.wrapper,
    form.diagnosisName,
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
  form.diagnosis.input.addEventListener('input', () => {
    form.diagnosisName.textContent = '';
  });
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

function byName(a, b) {
  return a.name.localeCompare(b.name);
}

function setTermsError(form, message) {
  form.termsError.textContent = message ?? '';
  form.termsError.hidden = !message;
  form.search.input.setAttribute('aria-invalid', message ? 'true' : 'false');
}

// ---- search as you type

function symptomSearch(page, onChoose) {
  const field = formField({
    id: 'symptom-search', label: 'Add a symptom', type: 'search', autocomplete: 'off', autocapitalize: 'none',
    spellcheck: 'false', enterkeyhint: 'search',
    hint: `Type at least ${SEARCH_MIN_CHARS} letters, for example “cough” or “headache”.`,
  });
  const search = {
    ...field,
    results: h('ul', { class: 'symptom-results', 'aria-label': 'Symptoms found' }),
    note: h('p', { class: 'field-hint search-note', role: 'status' }),
    onChoose,
  };
  search.element = h('div', { class: 'symptom-search' }, field.wrapper, search.note, search.results);
  search.clear = () => {
    search.stop();
    search.input.value = '';
    search.note.textContent = '';
    mount(search.results);
  };
  const show = (query, symptoms) => showResults(page, search, query, symptoms);
  search.stop = searchAsYouType(page, search, searchSymptoms, show);
  // Enter in the search box picks nothing and must not submit the whole form.
  field.input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') {
      event.preventDefault();
    }
  });
  return search;
}

function showResults(page, search, query, symptoms) {
  search.setError(null);
  search.note.textContent = symptoms.length
    ? `${symptoms.length} ${symptoms.length === 1 ? 'symptom' : 'symptoms'} found.`
    : `No symptom matches “${query}”. Try another word.`;
  mount(search.results, symptoms.map((term) => h('li', {},
    h('button', {
      type: 'button', class: 'symptom-option', 'aria-pressed': String(page.terms.has(term.id)),
      onclick: () => search.onChoose(term),
    }, h('span', { class: 'symptom-option-name' }, term.name), h('span', { class: 'symptom-option-id' }, term.id)))));
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
  const diagnosis = form.diagnosis.input.value.trim().toUpperCase();
  const termsProblem = terms.length ? null : 'Please choose at least one symptom.';
  const diagnosisProblem = diagnosis && !ICD10_PATTERN.test(diagnosis)
    ? 'This is not an ICD-10-CM code. Codes look like J45.909: a letter, two characters, then an optional dot and more.'
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
