// The audit report page's Print button (templates/admin/audit/reports/_actions.html): a
// static file, as the Content Security Policy allows no inline script or onclick attribute.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("[data-desk-print]")) {
    button.addEventListener("click", () => window.print());
  }
});
