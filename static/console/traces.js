/* Flowscope console: the trace search form. Loaded after console.js, on the Traces page only.
   The page works without it; this keeps the URL a reader can paste short (no empty filters) and
   adds attribute filters one at a time. */
"use strict";

(() => {
  const { $, $$ } = Flowscope;
  function traces() {
    const form = $("#trace-search");
    const more = $("#more-attributes");
    more.hidden = false;
    more.addEventListener("click", () => {
      const label = $("#attributes label:last-child").cloneNode(true);
      label.querySelector("input").value = "";
      $("#attributes").append(label);
      label.querySelector("input").focus();
    });
    // A GET form sends every field, empty or not: leave the empty ones (and the default order)
    // out of the URL, so a link says only what was asked.
    form.addEventListener("submit", () => {
      $$("input, select", form).forEach((field) => {
        if (!field.value.trim() || (field.name === "sort" && field.value === "start")) field.disabled = true;
      });
    });
    // Back to this page from the results' next page: the browser may restore it as it was left.
    window.addEventListener("pageshow", () => $$("[disabled]", form).forEach((field) => { field.disabled = false; }));
  }
  Flowscope.register("traces", traces);
})();
