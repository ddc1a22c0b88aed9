/* Flowscope console: the live socket, and the few pages that move. No framework, no CDN. */
"use strict";

const Flowscope = (() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
  const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const pct = (x) => (x == null ? "–" : (100 * x).toFixed(1) + " %");
  const ms = (x) => (x == null ? "–" : x < 10 ? x.toFixed(2) + " ms" : Math.round(x) + " ms");

  function cookie(name) {
    const m = document.cookie.match("(^|;)\\s*" + name + "=([^;]*)");
    return m ? decodeURIComponent(m[2]) : "";
  }

  async function api(method, url, body) {
    const response = await fetch(url, {
      method,
      headers: { "Content-Type": "application/json", "X-CSRFToken": cookie("csrftoken") },
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      const detail = data && (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
      throw new Error(detail || response.status + " " + response.statusText);
    }
    return data;
  }

  /* -- the live socket: snapshot on every (re)connect, then one a second -- */
  function live(onFrame) {
    const status = $("#live-status");
    const STALE_RECONNECT_S = 4, MAX_DELAY_MS = 4000;
    let socket = null, lastFrame = 0, openedAt = 0, delay = 500;
    const show = (state, text) => { status.className = "live-status " + state; status.textContent = text; };
    setInterval(() => {
      if (socket && socket.readyState === WebSocket.OPEN) {
        const age = (Date.now() - lastFrame) / 1000;
        if (age > 3) show("stale", "stale " + Math.round(age) + " s");
        // An open socket that has gone quiet may have lost its server-side subscription (Redis
        // restarted under it): reconnecting brings a whole snapshot and a fresh subscription.
        if (age > STALE_RECONNECT_S && Date.now() - openedAt > STALE_RECONNECT_S * 1000) socket.close();
      }
    }, 1000);
    function connect() {
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      socket = new WebSocket(scheme + "://" + location.host + "/ws/live/");
      socket.onopen = () => { delay = 500; openedAt = Date.now(); show("stale", "waiting"); };
      socket.onmessage = (event) => {
        const message = JSON.parse(event.data);
        if (message.type !== "snapshot") return;
        lastFrame = Date.now();
        status.dataset.frameAt = message.frame.at;
        show("live", "live");
        onFrame(message.frame);
      };
      socket.onclose = (event) => {
        if (event.code === 4401) { show("reconnecting", "signed out"); return; }
        show("reconnecting", "reconnecting");
        setTimeout(connect, delay);
        delay = Math.min(delay * 2, MAX_DELAY_MS);
      };
    }
    connect();
  }

  function initialFrame() {
    const node = $("#initial-frame");
    return node ? JSON.parse(node.textContent) : null;
  }

  /* -- overview -- */
  function chart(id, x, y, color) {
    const node = document.getElementById(id);
    Plotly.react(node, [{ x, y, type: "scatter", mode: "lines+markers", line: { color, width: 2 }, marker: { size: 4 }, fill: "tozeroy" }], {
      title: { text: node.dataset.title, font: { size: 12 } }, margin: { l: 40, r: 10, t: 30, b: 30 }, height: 220,
    }, { displayModeBar: false, responsive: true });
  }

  function renderOverview(f) {
    $("#now-rate").textContent = (f.now.rate ?? 0).toFixed(1);
    $("#now-errors").textContent = pct(f.now.error_rate);
    $("#now-p95").textContent = ms(f.now.p95_ms);
    $("#dead-count").textContent = f.dead_letters.counts.dead || 0;
    $("#workers-count").textContent = f.workers.length;
    chart("chart-rate", f.series.t, f.series.rate, "#2b6cb0");
    chart("chart-errors", f.series.t, f.series.error_rate, "#c62828");
    chart("chart-p95", f.series.t, f.series.p95_ms, "#6b46c1");
    $("#queues").innerHTML = f.queues.map((q) => `<tr><td><a href="/queues/${encodeURIComponent(q.name)}/">${esc(q.name)}</a></td><td class="num">${q.depth}</td><td class="num">${q.consumers == null ? "–" : q.consumers}</td><td>${q.high == null ? "–" : q.low + " / " + q.high}</td><td><span class="state ${esc(q.state)}">${esc(q.state)}</span>${q.activations ? " <span class=muted>(" + q.activations + "×)</span>" : ""}</td></tr>`).join("");
    $("#groups").innerHTML = f.dead_letters.groups.map((g) => `<tr><td><a href="/deadletters/?state=dead&fingerprint=${esc(g.fingerprint)}">${esc(g.error_type)}</a>${g.silence ? ` <span class="muted-group" title="${esc(g.silence.why)}">${esc(g.silence.text)}</span>` : ""}<br><span class="muted">${esc(g.consumer)}</span></td><td class="num">${g.count}</td><td>${esc(g.last_seen.slice(11, 19))}</td></tr>`).join("") || `<tr><td colspan=3 class=muted>none</td></tr>`;
    $("#sagas").innerHTML = Object.entries(f.sagas).map(([s, n]) => `<li><a href="/sagas/?state=${esc(s)}">${esc(s)}</a>: ${n}</li>`).join("") || "<li class=muted>none</li>";
    $("#workers").innerHTML = f.workers.map((w) => `<li>${esc(w.worker)}</li>`).join("") || "<li class=muted>none online</li>";
    $("#sink").textContent = `spans waiting for the collector: ${f.sink.pending}; dropped: ${f.sink.dropped}`;
  }

  // Page scripts (graph.js, trace.js, deadletters.js) register their starters here; a page's
  // template loads its script after this one and calls Flowscope.start(name) when the DOM is ready.
  const pages = {
    overview: () => { const f = initialFrame(); if (f) renderOverview(f); live(renderOverview); },
  };
  const register = (name, starter) => { pages[name] = starter; };
  return { start: (name) => pages[name](), register, api, live, initialFrame, $, $$, esc, pct, ms };
})();
window.Flowscope = Flowscope;
