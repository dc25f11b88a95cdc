'use strict';
// The API reference page (/api/v1/docs): Swagger UI, served by the node, on the node's document.
(() => {
  const spec = document.currentScript.dataset.spec;
  window.SwaggerUIBundle({ url: spec, dom_id: '#reference', deepLinking: true });
})();
