// Small conveniences on top of htmx; every page also works without this file.
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    document.querySelectorAll("#dialog-root dialog").forEach((d) => d.remove());
  }
});
// Close buttons of dialogs (a strict Content-Security-Policy allows no inline handlers).
document.addEventListener("click", (event) => {
  const close = event.target.closest("[data-close-dialog]");
  if (close) close.closest("dialog")?.remove();
});
// A filter select applies on change; without JavaScript its form has a Filter button.
document.addEventListener("change", (event) => {
  if (event.target.matches("select[data-submit-on-change]")) event.target.form.requestSubmit();
});
// A dialog answered with a full-page redirect closes itself before htmx navigates.
document.body?.addEventListener("htmx:beforeSwap", (event) => {
  if (event.detail.xhr.getResponseHeader("HX-Redirect")) {
    document.querySelectorAll("#dialog-root dialog").forEach((d) => d.remove());
  }
});
// A second click on Submit while the first request is on its way sends nothing more; the
// server also recognises a repeated wizard submit by its token.
document.addEventListener("submit", (event) => {
  event.target.querySelectorAll("[data-submit-once]").forEach((button) => {
    setTimeout(() => { button.disabled = true; }, 0);
  });
});
