// Small conveniences on top of htmx; every page also works without this file.
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    document.querySelectorAll("#dialog-root dialog").forEach((d) => d.remove());
  }
});
// Buttons declare what they do with data- attributes: a strict Content-Security-Policy allows
// no inline handlers.
document.addEventListener("click", (event) => {
  const target = event.target;
  if (!(target instanceof Element)) return;
  const closeDialog = target.closest("[data-close-dialog]");
  if (closeDialog) closeDialog.closest("dialog")?.remove();
  const closeFlash = target.closest("[data-close-flash]");
  if (closeFlash) closeFlash.closest(".flash")?.remove();
  // "Reset" beside a backend server's weight puts the default back.
  const reset = target.closest("[data-reset-weight]");
  if (reset) reset.parentElement.querySelector("input").value = reset.dataset.resetWeight;
});
// Advanced Settings remember whether they are open across the protocol switch's re-render, in
// the hidden field inside them (toggle does not bubble, so listen while capturing).
function rememberOpen(details) {
  const field = details.querySelector("[name=advanced_open]");
  if (field) field.value = details.open ? "1" : "";
}
document.addEventListener(
  "toggle",
  (event) => {
    const details = event.target;
    if (details instanceof HTMLDetailsElement && details.hasAttribute("data-remember-open")) {
      rememberOpen(details);
    }
  },
  true,
);
// The toggle event comes asynchronously: a protocol switch sent right after a click on the
// summary can leave before it. The request takes the state as it is when it is sent.
document.body?.addEventListener("htmx:configRequest", (event) => {
  document.querySelectorAll("details[data-remember-open]").forEach((details) => {
    rememberOpen(details);
    if (details.querySelector("[name=advanced_open]")) {
      event.detail.parameters.advanced_open = details.open ? "1" : "";
    }
  });
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
  event.target.querySelectorAll("details[data-remember-open]").forEach(rememberOpen);
  event.target.querySelectorAll("[data-submit-once]").forEach((button) => {
    setTimeout(() => { button.disabled = true; }, 0);
  });
});
