'use strict';

// The record form's diagnosis and symptom fields as search-as-you-type pickers (the ARIA 1.2
// combobox pattern: arrow keys move through the list, Enter picks, Escape closes). Picked codes
// become removable chips with their descriptions. The field stays a plain comma-separated text
// field for the server: without this script the doctor types codes, and with it whatever is
// still typed and not picked is sent as typed, so an unknown code is reported, never dropped.
// The lookups are the portal's own session routes (/doctor/codes/...), never the API.

const DEBOUNCE_MS = 150;
const MIN_CHARS = 1;
const NO_MATCH = 'Nothing found: try other words, or type the code.';

function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) {
      continue;
    }
    if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else {
      element.setAttribute(name, value === true ? '' : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      element.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return element;
}

function splitCodes(text) {
  return text.split(',').map((code) => code.trim()).filter(Boolean);
}

function describe(kind, item) {
  if (kind === 'diagnoses') {
    return { code: item.code, label: item.description, matched: null };
  }
  return { code: item.id, label: item.name, matched: item.matched };
}

class CodePicker {
  constructor(root) {
    this.root = root;
    this.kind = root.dataset.codePicker;
    this.url = root.dataset.url;
    this.input = root.querySelector('input');
    this.options = [];
    this.active = -1;
    this.timer = null;
    this.request = 0;
    this.picked = [];
    this.build();
    this.restore();
  }

  build() {
    const id = this.input.id;
    // The field the server reads; the visible input becomes the search box.
    this.value = h('input', { type: 'hidden', name: this.input.name });
    this.input.removeAttribute('name');
    this.listbox = h('ul', { id: `${id}-listbox`, role: 'listbox', class: 'code-options', hidden: true });
    this.listbox.setAttribute('aria-label', `${this.root.querySelector('label').firstChild.textContent.trim()} found`);
    this.chips = h('ul', { class: 'chips', 'aria-label': 'Chosen' });
    this.status = h('p', { class: 'visually-hidden', role: 'status', 'aria-live': 'polite' });
    Object.entries({
      role: 'combobox', 'aria-autocomplete': 'list', 'aria-expanded': 'false', 'aria-controls': this.listbox.id,
    }).forEach(([name, value]) => this.input.setAttribute(name, value));
    this.input.placeholder = this.kind === 'diagnoses' ? 'Type words or a code, e.g. asthma' : 'Type words, e.g. short of breath';
    for (const old of this.root.querySelectorAll('ul.chips')) {
      old.remove();
    }
    this.input.after(this.listbox);
    this.root.append(this.chips, this.status, this.value);
    this.input.addEventListener('input', () => this.schedule());
    this.input.addEventListener('keydown', (event) => this.onKey(event));
    this.input.addEventListener('blur', () => setTimeout(() => this.close(), 150));
    this.input.form.addEventListener('submit', () => this.sync());
  }

  restore() {
    // Codes sent before (after a refusal) come back as chips, known or not.
    const known = JSON.parse(this.root.dataset.picked || '[]');
    const typed = splitCodes(this.input.value);
    this.input.value = '';
    for (const code of typed) {
      const found = known.find((item) => item.code === code);
      this.add({ code, label: found ? found.label : null, matched: null }, false);
    }
  }

  schedule() {
    clearTimeout(this.timer);
    const text = this.input.value.trim();
    if (text.length < MIN_CHARS) {
      this.close();
      return;
    }
    this.timer = setTimeout(() => this.search(text), DEBOUNCE_MS);
  }

  async search(text) {
    const ticket = ++this.request;
    let answer;
    try {
      const response = await fetch(`${this.url}?q=${encodeURIComponent(text)}`, {
        credentials: 'same-origin', headers: { Accept: 'application/json' },
      });
      if (!response.ok) {
        return;
      }
      answer = await response.json();
    } catch {
      return;  // offline or signed out: the field still takes typed codes
    }
    if (ticket !== this.request) {
      return;  // a later search is on its way
    }
    this.show((answer[this.kind] || []).map((item) => describe(this.kind, item)));
  }

  show(options) {
    this.options = options;
    this.active = -1;
    this.input.removeAttribute('aria-activedescendant');
    const id = this.listbox.id;
    const items = options.map((option, n) => h(
      'li',
      {
        id: `${id}-${n}`, role: 'option', class: 'code-option', 'aria-selected': 'false',
        onmousedown: (event) => event.preventDefault(),
        onclick: () => this.pick(n),
      },
      h('span', { class: 'chip-code' }, option.code), ' ', option.label,
      option.matched ? h('span', { class: 'matched' }, ` (“${option.matched}”)`) : null,
    ));
    if (!items.length) {
      items.push(h('li', { class: 'code-option empty', 'aria-disabled': 'true' }, NO_MATCH));
    }
    this.listbox.replaceChildren(...items);
    this.listbox.hidden = false;
    this.input.setAttribute('aria-expanded', 'true');
    this.status.textContent = options.length ? `${options.length} found; use the arrow keys to choose.` : NO_MATCH;
  }

  close() {
    this.listbox.hidden = true;
    this.input.setAttribute('aria-expanded', 'false');
    this.input.removeAttribute('aria-activedescendant');
    this.active = -1;
  }

  move(step) {
    if (!this.options.length) {
      return;
    }
    if (this.listbox.hidden) {
      this.listbox.hidden = false;
      this.input.setAttribute('aria-expanded', 'true');
    }
    this.active = (this.active + step + this.options.length) % this.options.length;
    this.listbox.querySelectorAll('[role="option"]').forEach((item, n) => {
      item.setAttribute('aria-selected', String(n === this.active));
      if (n === this.active) {
        this.input.setAttribute('aria-activedescendant', item.id);
        item.scrollIntoView({ block: 'nearest' });
      }
    });
  }

  onKey(event) {
    if (event.key === 'ArrowDown') {
      event.preventDefault();
      this.move(1);
    } else if (event.key === 'ArrowUp') {
      event.preventDefault();
      this.move(-1);
    } else if (event.key === 'Enter' && !this.listbox.hidden && this.active >= 0) {
      event.preventDefault();  // picking is not submitting
      this.pick(this.active);
    } else if (event.key === 'Escape' && !this.listbox.hidden) {
      event.preventDefault();
      this.close();
    }
  }

  pick(n) {
    const option = this.options[n];
    if (!option) {
      return;
    }
    this.add(option, true);
    this.input.value = '';
    this.close();
    this.input.focus();
  }

  add(item, announce) {
    if (this.picked.some((known) => known.code === item.code)) {
      return;
    }
    this.picked.push(item);
    const text = item.label ? `${item.code} ${item.label}` : `${item.code} (not known)`;
    const chip = h(
      'li',
      { class: item.label ? 'chip' : 'chip unknown', 'data-code': item.code },
      h('span', { class: 'chip-code' }, item.code), ' ', item.label || 'not known',
      h('button', {
        type: 'button', class: 'chip-remove', 'aria-label': `Remove ${text}`,
        onclick: () => this.remove(item, chip),
      }, '×'),
    );
    this.chips.append(chip);
    this.sync();
    if (announce) {
      this.status.textContent = `Added ${text}.`;
    }
  }

  remove(item, chip) {
    this.picked = this.picked.filter((known) => known !== item);
    chip.remove();
    this.sync();
    this.status.textContent = `Removed ${item.code}.`;
    this.input.focus();
  }

  sync() {
    // Codes typed but not picked go as typed: the server names each one it does not know.
    const codes = this.picked.map((item) => item.code);
    const typed = splitCodes(this.input.value).filter((code) => !codes.includes(code));
    this.value.value = [...codes, ...typed].join(', ');
  }
}

function setUpPrescriptions(fieldset) {
  const rows = () => [...fieldset.querySelectorAll('.rx-row')];
  const addRemove = (row) => {
    if (row.querySelector('.rx-remove')) {
      return;
    }
    row.append(h('button', {
      type: 'button', class: 'link rx-remove', 'aria-label': 'Remove this prescription',
      onclick: () => {
        const all = rows();
        const at = all.indexOf(row);
        if (all.length === 1) {
          row.querySelectorAll('input').forEach((input) => { input.value = ''; });
        } else {
          row.remove();
        }
        const left = rows();
        left[Math.min(at, left.length - 1)].querySelector('input').focus();
      },
    }, 'Remove'));
  };
  rows().forEach(addRemove);
  const add = h('button', {
    type: 'button', class: 'rx-add',
    onclick: () => {
      const last = rows().at(-1);
      const row = last.cloneNode(true);
      row.querySelectorAll('input').forEach((input) => { input.value = ''; });
      row.querySelector('.rx-remove')?.remove();
      add.before(row);
      addRemove(row);
      row.querySelector('input').focus();
    },
  }, 'Add another prescription');
  fieldset.append(add);
}

for (const root of document.querySelectorAll('[data-code-picker]')) {
  new CodePicker(root);
}
for (const fieldset of document.querySelectorAll('[data-prescriptions]')) {
  setUpPrescriptions(fieldset);
}
