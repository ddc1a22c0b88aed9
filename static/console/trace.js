/* Flowscope console: one trace as a tree. Loaded after console.js, on its page only.

   The whole tree comes in one answer without attributes (`attributes=false`); the span picked is
   then asked for in full. Rows are plain DOM and virtual: only those in view (and a few either
   side) exist, so 20,000 spans draw as fast as 50. The critical path and each consumer's queue
   wait are computed by the server (tracing.critical_path, tracing.trace_tree). The span picked
   lives in the URL (#span=<id>), so a pasted link opens on it. */
"use strict";

(() => {
  const { $, esc, api, ms, live } = Flowscope;
  const ROW = 22, OVERSCAN = 15, MOST = 20000;
  const KIND = { 0: "internal", 1: "server", 2: "client", 3: "send (producer)", 4: "process (consumer)", 5: "consumer" };

  function trace() {
    const id = JSON.parse($("#trace-id").textContent);
    const scroll = $("#wf-scroll"), space = $("#wf-space"), rowsBox = $("#wf-rows");
    let items = [], size, parent, errorsBelow, byId = new Map(), errors = [], critical = [];
    let folded = new Set(), visible = [], total = 1, selected = -1, drawn = false;
    const asked = performance.now();

    api("GET", `/api/v1/traces/${id}?limit=${MOST}&attributes=false`).then((t) => {
      const answered = performance.now();
      build(t);
      relayout();
      requestAnimationFrame(() => {
        // What the benchmark and the README quote: the answer, then the rows on screen.
        const shown = performance.now();
        const box = $("#waterfall");
        box.dataset.apiMs = Math.round(answered - asked);
        box.dataset.shownMs = Math.round(shown - asked);
        box.dataset.sinceNavigationMs = Math.round(shown);
        box.setAttribute("aria-busy", "false");
      });
      fromHash();
    }).catch((e) => { rowsBox.innerHTML = `<p class="error">${esc(e.message)}</p>`; });

    function build(t) {
      items = t.items;
      const n = items.length;
      total = Math.max(t.duration_ms, 0.001);
      size = new Int32Array(n);
      parent = new Int32Array(n).fill(-1);
      errorsBelow = new Int32Array(n);
      const path = [];
      items.forEach((s, i) => {
        path.length = s.depth;
        parent[i] = s.depth > 0 ? path[s.depth - 1] : -1;
        path[s.depth] = i;
        byId.set(s.span_id, i);
        if (s.status_code === 2) errors.push(i);
        if (s.critical) critical.push(i);
      });
      for (let i = n - 1; i >= 0; i--) {
        size[i] += 1;
        if (parent[i] >= 0) {
          size[parent[i]] += size[i];
          errorsBelow[parent[i]] += errorsBelow[i] + (items[i].status_code === 2 ? 1 : 0);
        }
      }
      const shown = n < t.spans ? ` (the first ${n} drawn)` : "";
      $("#trace-summary").textContent = `${t.spans} spans${shown} · ${ms(t.duration_ms)} · ${t.errors} error${t.errors === 1 ? "" : "s"} · ${critical.length} on the critical path`;
      $("#next-error").disabled = !errors.length;
      $("#next-error").textContent = errors.length ? `next error (${errors.length})` : "no errors";
      const here = (l) => l.trace_id === id;
      const links = [
        ...t.links_out.map((l) => `links to ${linkTo(l.trace_id, l.linked_span_id)}${here(l) ? " (here)" : ""}`),
        ...t.links_in.map((l) => `linked from ${linkTo(l.trace_id, l.linking_span_id)}`),
      ];
      $("#trace-links").innerHTML = links.join(" · ");
      $("#wf-axis").innerHTML = [0, 0.2, 0.4, 0.6, 0.8, 1].map((f) => `<span style="left:${f * 100}%">${ms(f * total)}</span>`).join("");
    }

    function linkTo(traceId, spanId) {
      const href = traceId === id ? `#span=${spanId}` : `/traces/${traceId}/#span=${spanId}`;
      return `<a class="span-link" href="${esc(href)}">${esc(traceId.slice(0, 12))}…/${esc(spanId)}</a>`;
    }

    function relayout() {
      visible = [];
      for (let i = 0; i < items.length; ) {
        visible.push(i);
        i += folded.has(i) ? size[i] : 1;
      }
      space.style.height = `${visible.length * ROW}px`;
      draw();
    }

    function draw() {
      const first = Math.max(0, Math.floor(scroll.scrollTop / ROW) - OVERSCAN);
      const last = Math.min(visible.length, Math.ceil((scroll.scrollTop + scroll.clientHeight) / ROW) + OVERSCAN);
      rowsBox.style.transform = `translateY(${first * ROW}px)`;
      rowsBox.innerHTML = visible.slice(first, last).map(row).join("");
      drawn = true;
    }

    function row(i) {
      const s = items[i], pct = (x) => (100 * x) / total;
      const left = pct(s.start_ms), width = Math.max(pct(s.duration_ms), 0.15);
      const isFolded = folded.has(i), kids = size[i] - 1;
      const caret = kids
        ? `<button type="button" class="caret" data-fold="${i}" aria-expanded="${!isFolded}" title="${isFolded ? "unfold" : "fold"} ${kids} span${kids === 1 ? "" : "s"}">${isFolded ? "▸" : "▾"}</button>`
        : `<span class="caret-space"></span>`;
      const hidden = isFolded ? ` <span class="folded-count">+${kids}</span>${errorsBelow[i] ? ` <span class="err-below" title="errors inside">⚠ ${errorsBelow[i]}</span>` : ""}` : "";
      const linked = s.links.length || s.linked_from.length ? ` <span class="link-mark" title="linked to or from other spans">⇄</span>` : "";
      // A wait that began before the trace's first span (an attached app's consumer says its own) starts at the edge.
      const waitFrom = Math.max(0, s.start_ms - (s.queue_wait_ms || 0));
      const wait = s.queue_wait_ms
        ? `<span class="wf-wait" style="left:${pct(waitFrom)}%;width:${Math.max(pct(s.start_ms - waitFrom), 0.1)}%" title="waited ${ms(s.queue_wait_ms)} in its queue"></span>`
        : "";
      // The duration beside its bar: after it, or before it when the bar reaches the right edge.
      const label = left + width > 85 ? `right:${100 - left}%;padding-right:6px` : `left:${left + width}%;padding-left:6px`;
      const classes = ["wf-row", s.critical ? "critical" : "", s.status_code === 2 ? "error" : "", i === selected ? "selected" : ""].join(" ");
      const indent = Math.min(s.depth, 30) * 12;
      const deep = s.depth > 30 ? `<span class="depth" title="depth">${s.depth}</span>` : "";
      return `<div class="${classes}" data-i="${i}" data-span="${s.span_id}">`
        + `<div class="wf-name" style="padding-left:${indent}px" title="${esc(s.name)} · ${esc(s.service)}">${deep}${caret}<span class="nm">${esc(s.name)}</span> <span class="svc">${esc(s.service)}</span>${hidden}${linked}</div>`
        + `<div class="wf-track">${wait}<span class="wf-bar ${s.status_code === 2 ? "err" : "kind" + s.kind}" style="left:${left}%;width:${width}%"></span>`
        + `<span class="wf-dur" style="${label}">${ms(s.duration_ms)}</span></div></div>`;
    }

    function fold(i, on) {
      if (on) folded.add(i); else folded.delete(i);
      relayout();
    }

    function reveal(i) {
      let changed = false;
      for (let p = parent[i]; p >= 0; p = parent[p]) if (folded.delete(p)) changed = true;
      if (changed) relayout();
    }

    function select(i, { scrollTo = true, keepHash = false } = {}) {
      selected = i;
      reveal(i);
      if (!keepHash) history.replaceState(null, "", `${location.pathname}${location.search}#span=${items[i].span_id}`);
      if (scrollTo) {
        const at = visible.indexOf(i) * ROW;
        if (at < scroll.scrollTop || at > scroll.scrollTop + scroll.clientHeight - ROW) scroll.scrollTop = Math.max(0, at - scroll.clientHeight / 3);
      }
      draw();
      detail(i);
    }

    function fromHash() {
      const m = location.hash.match(/span=([0-9a-f]{16})/);
      if (!m) return;
      if (byId.has(m[1])) select(byId.get(m[1]), { keepHash: true });
      else $("#span-detail").innerHTML = `<p class="error">No span ${esc(m[1])} in this trace${items.length < MOST ? "" : " (or not among the spans drawn)"}.</p>`;
    }

    function after(list) {
      if (!list.length) return -1;
      return list.find((i) => i > selected) ?? list[0];
    }

    // A message, its type and its queue of Flowscope's own flows have pages of their own
    // (console/pattern_pages.py): their values link there; an attached app's (flowscope.app) do not.
    const PAGES = { "messaging.message.id": "/messages/", "flowscope.message_type": "/types/", "messaging.destination.name": "/queues/" };
    const value = (k, v, linked) => {
      const text = esc(typeof v === "object" ? JSON.stringify(v, null, 2) : v);
      return linked && PAGES[k] && typeof v === "string" && v ? `<a href="${PAGES[k]}${encodeURIComponent(v)}/">${text}</a>` : text;
    };
    const kv = (object, linked = false) => Object.entries(object).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${value(k, v, linked)}</td></tr>`).join("");

    async function detail(i) {
      const s = items[i], panel = $("#span-detail");
      const facts = [
        `${esc(s.service)} · ${esc(KIND[s.kind] || "kind " + s.kind)}`,
        `${ms(s.duration_ms)}, from +${ms(s.start_ms)}`,
        s.queue_wait_ms != null ? `waited <b>${ms(s.queue_wait_ms)}</b> in its queue before it began` : "",
        s.critical ? `<span class="on-path">on the critical path</span>` : "",
        s.parent_span_id ? `parent <a href="#span=${esc(s.parent_span_id)}">${esc(s.parent_span_id)}</a>` : "a root",
      ].filter(Boolean);
      const links = s.links.map((l) => `<li>to ${linkTo(l.trace_id, l.span_id)}</li>`).join("");
      const from = s.linked_from.map((l) => `<li>from ${linkTo(l.trace_id, l.span_id)}</li>`).join("");
      panel.innerHTML = `<h3 class="${s.status_code === 2 ? "error" : ""}">${esc(s.name)}</h3><p>${facts.join("<br>")}</p><p class="muted">span <code>${esc(s.span_id)}</code></p>`
        + (links || from ? `<h4>Links</h4><ul class="links">${links}${from}</ul>` : "")
        + `<div id="span-full"><p class="muted">loading attributes…</p></div>`;
      try {
        const full = await api("GET", `/api/v1/traces/${id}/spans/${s.span_id}`);
        if (selected !== i) return;
        $("#span-full").innerHTML = (full.status_message ? `<p class="error status-message">${esc(full.status_message)}</p>` : "")
          + `<h4>Attributes</h4><table class="kv">${kv(full.attributes, !full.attributes["flowscope.app"]) || "<tr><td class=muted>none</td></tr>"}</table>`
          + (full.events.length ? "<h4>Events</h4>" + full.events.map((e) => `<div class="event"><b>${esc(e.name)}</b> <span class="muted">${esc(e.time)}</span><table class="kv">${kv(e.attributes || {})}</table></div>`).join("") : "");
      } catch (e) {
        if (selected === i) $("#span-full").innerHTML = `<p class="error">${esc(e.message)}</p>`;
      }
    }

    let pending = false;
    scroll.addEventListener("scroll", () => {
      if (pending || !drawn) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; draw(); });
    });
    rowsBox.addEventListener("click", (event) => {
      const caret = event.target.closest(".caret");
      if (caret) { const i = +caret.dataset.fold; fold(i, !folded.has(i)); return; }
      if (event.target.closest("a")) return;
      const rowNode = event.target.closest(".wf-row");
      if (rowNode) select(+rowNode.dataset.i, { scrollTo: false });
    });
    window.addEventListener("hashchange", fromHash);
    $("#next-error").addEventListener("click", () => { const i = after(errors); if (i >= 0) select(i); });
    $("#critical-next").addEventListener("click", () => { const i = after(critical); if (i >= 0) select(i); });
    $("#unfold-all").addEventListener("click", () => { folded = new Set(); relayout(); });
    $("#fold-all").addEventListener("click", () => {
      folded = new Set();
      for (let i = 0; i < items.length; i++) if (size[i] > 1) folded.add(i);
      relayout();
    });
  }

  Flowscope.register("trace", () => { trace(); live(() => {}); });
})();
