// Small conveniences on top of htmx; every page also works without this file.
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    document.querySelectorAll("#dialog-root dialog").forEach((d) => d.remove());
  }
});
// A dialog answered with a full-page redirect closes itself before htmx navigates.
document.body?.addEventListener("htmx:beforeSwap", (event) => {
  if (event.detail.xhr.getResponseHeader("HX-Redirect")) {
    document.querySelectorAll("#dialog-root dialog").forEach((d) => d.remove());
  }
});
