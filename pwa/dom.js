'use strict';

// Builds DOM nodes from data without ever parsing HTML: text always goes through
// text nodes, attributes through setAttribute, listeners through addEventListener.

const EVENT_PREFIX = 'on';

export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  setAttributes(element, attrs);
  element.append(...toNodes(children));
  return element;
}

export function mount(container, ...children) {
  container.replaceChildren(...toNodes(children));
}

function setAttributes(element, attrs) {
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) {
      continue;
    }
    if (name.startsWith(EVENT_PREFIX) && typeof value === 'function') {
      element.addEventListener(name.slice(EVENT_PREFIX.length).toLowerCase(), value);
    } else if (value === true) {
      element.setAttribute(name, '');
    } else {
      element.setAttribute(name, String(value));
    }
  }
}

function toNodes(children) {
  return children.flat(Infinity)
    .filter((child) => child !== null && child !== undefined && child !== false)
    .map((child) => (child instanceof Node ? child : document.createTextNode(String(child))));
}
