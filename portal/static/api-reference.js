'use strict';
// The API reference page (/api/v1/docs): Swagger UI, served by the node, on the node's document.
// No deep links: Swagger UI draws them as links inside each operation's toggle button, a control
// inside a control that screen readers and keyboards cannot tell apart.
(() => {
  const spec = document.currentScript.dataset.spec;
  const root = document.getElementById('reference');

  // Names Swagger UI leaves out, given to its controls as they appear: opening an operation, "Try it
  // out" and the Authorize dialog draw new ones.
  const name = (selector, label) => {
    for (const el of root.querySelectorAll(selector)) {
      if (el.getAttribute('aria-label') !== label) el.setAttribute('aria-label', label);
    }
  };
  const complete = () => {
    // The servers select has only a visual "Servers" title above it.
    name('select#servers', 'Server');
    name('.body-param textarea, textarea.body-param__text', 'Request body');
    name('.modal-ux .close-modal', 'Close');
    // "Apply credentials" is not what the button shows ("Authorize"); a spoken command would miss it.
    name('.modal-ux .auth-btn-wrapper button.authorize', 'Authorize');
    // Examples that scroll sideways, reachable with the keyboard like the portal's wide tables.
    for (const el of root.querySelectorAll('.highlight-code > .microlight:not([tabindex])')) {
      el.setAttribute('tabindex', '0');
    }
  };
  let pending = false;
  new MutationObserver(() => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      complete();
    });
  }).observe(root, { childList: true, subtree: true });

  window.SwaggerUIBundle({ url: spec, dom_id: '#reference', deepLinking: false, onComplete: complete });
})();
