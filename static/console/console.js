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
    $("#queues").innerHTML = f.queues.map((q) => `<tr><td>${esc(q.name)}</td><td class="num">${q.depth}</td><td class="num">${q.consumers == null ? "–" : q.consumers}</td><td>${q.high == null ? "–" : q.low + " / " + q.high}</td><td><span class="state ${esc(q.state)}">${esc(q.state)}</span>${q.activations ? " <span class=muted>(" + q.activations + "×)</span>" : ""}</td></tr>`).join("");
    $("#groups").innerHTML = f.dead_letters.groups.map((g) => `<tr><td><a href="/deadletters/?state=dead&fingerprint=${esc(g.fingerprint)}">${esc(g.error_type)}</a><br><span class="muted">${esc(g.consumer)}</span></td><td class="num">${g.count}</td><td>${esc(g.last_seen.slice(11, 19))}</td></tr>`).join("") || `<tr><td colspan=3 class=muted>none</td></tr>`;
    $("#sagas").innerHTML = Object.entries(f.sagas).map(([s, n]) => `<li><a href="/sagas/?state=${esc(s)}">${esc(s)}</a>: ${n}</li>`).join("") || "<li class=muted>none</li>";
    $("#workers").innerHTML = f.workers.map((w) => `<li>${esc(w.worker)}</li>`).join("") || "<li class=muted>none online</li>";
    $("#sink").textContent = `spans waiting for the collector: ${f.sink.pending}; dropped: ${f.sink.dropped}`;
  }

  /* -- flow graph: senders, queues, handlers in three columns; redrawn in place; one app or all -- */
  const COLUMNS = { service: 0, handler: 2, queue: 1 };
  // The page's app filter ({app, own}): every frame carries all apps' edges and is narrowed here.
  function graphFilter() {
    const node = $("#graph-filter");
    return node ? JSON.parse(node.textContent) : { app: "", own: "" };
  }
  function chosenGraph(graph) {
    const { app, own } = graphFilter();
    if (!app) return graph;
    const wanted = app === own ? "" : app;
    return { ...graph, nodes: graph.nodes.filter((n) => n.app === wanted), edges: graph.edges.filter((e) => e.app === wanted) };
  }
  function layout(graph) {
    const kinds = Object.fromEntries(graph.nodes.map((n) => [n.id, n.kind]));
    const targets = new Set(graph.edges.map((e) => e.target));
    const sources = new Set(graph.edges.map((e) => e.source));
    const column = (id) => (kinds[id] === "queue" ? 1 : sources.has(id) && !targets.has(id) ? 0 : kinds[id] === "handler" ? 2 : COLUMNS[kinds[id]] ?? 0);
    const byColumn = [[], [], []];
    graph.nodes.forEach((n) => byColumn[column(n.id)].push(n.id));
    const pos = {};
    byColumn.forEach((ids, c) => ids.sort().forEach((id, i) => { pos[id] = [c, -(i + 0.5) / Math.max(ids.length, 1)]; }));
    return pos;
  }
  // A queue node of Flowscope's own says what waits in it and who consumes it (consumers: RabbitMQ only).
  function queueLabel(n, queues) {
    const q = n.kind === "queue" && !n.app && (queues || []).find((q) => q.name === n.label);
    const label = n.app ? `${n.label} <span style="color:#889">(${n.app})</span>` : n.label;
    if (!q) return label;
    return `${label}<br>${q.depth} waiting${q.consumers == null ? "" : " · " + q.consumers + " consumer" + (q.consumers === 1 ? "" : "s")}`;
  }
  function health(e) { return e.error_rate > 0.1 || e.dead > 0 ? "#c62828" : e.error_rate > 0.01 ? "#d69e2e" : "#1a7f37"; }
  function renderGraph(f) {
    const graph = chosenGraph(f.graph), pos = layout(graph), traces = [];
    const byId = Object.fromEntries(graph.nodes.map((n) => [n.id, n]));
    // A task-to-task edge is drawn through its queue; the publishes it stands for are not drawn twice.
    const throughQueue = new Set(graph.edges.filter((e) => e.queue).map((e) => e.source + "\n" + e.queue));
    graph.edges.forEach((e) => {
      if (!e.queue && throughQueue.has(e.source + "\n" + e.target)) return;
      const [a, b, q] = [pos[e.source], pos[e.target], e.queue ? pos[e.queue] : null];
      if (!a || !b) return;
      const name = (id) => (byId[id] ? byId[id].kind + ":" + byId[id].label : id);
      const wait = e.queue_wait_p95_ms == null ? "" : ` · wait p95 ${ms(e.queue_wait_p95_ms)}`;
      const label = `${name(e.source)} → ${e.queue ? name(e.queue) + " → " : ""}${name(e.target)}${e.app ? " (" + e.app + ")" : ""}<br>${e.rate_per_s.toFixed(2)}/s · errors ${pct(e.error_rate)} · p95 ${ms(e.p95_ms)}${wait}`;
      const short = `${e.rate_per_s.toFixed(1)}/s · ${pct(e.error_rate)} err · p95 ${ms(e.p95_ms)}`;
      const from = q || a, mid = [(from[0] + b[0]) / 2, (from[1] + b[1]) / 2];
      const xs = q ? [a[0], q[0], mid[0], b[0]] : [a[0], mid[0], b[0]], ys = q ? [a[1], q[1], mid[1], b[1]] : [a[1], mid[1], b[1]];
      const at = (value, blank) => xs.map((_, i) => (i === xs.length - 2 ? value : blank)); // the label's point: the middle of the last leg
      traces.push({ x: xs, y: ys, mode: "lines+markers+text", type: "scatter",
        line: { color: health(e), width: 1 + Math.min(8, Math.log2(1 + e.rate_per_s)) }, marker: { size: at(10, 0), color: health(e) },
        text: at(short, ""), textposition: "top center", textfont: { size: 10, color: health(e) },
        hoverinfo: "text", hovertext: at(label, ""), customdata: at({ edge: e, node: byId[e.target] }, null), showlegend: false });
    });
    traces.push({ x: graph.nodes.map((n) => pos[n.id][0]), y: graph.nodes.map((n) => pos[n.id][1]), mode: "markers+text", type: "scatter",
      text: graph.nodes.map((n) => queueLabel(n, f.queues)), textposition: "top center", hoverinfo: "text", customdata: graph.nodes.map((n) => ({ node: n })),
      marker: { size: 18, color: graph.nodes.map((n) => ({ service: "#2b6cb0", queue: "#805ad5", handler: "#2f855a" }[n.kind] || "#718096")) }, showlegend: false });
    const node = $("#flow-graph");
    Plotly.react(node, traces, { xaxis: { visible: false, range: [-0.3, 2.3] }, yaxis: { visible: false, range: [-1.05, 0.12] }, margin: { l: 10, r: 10, t: 10, b: 10 }, hovermode: "closest",
      annotations: ["senders", "queues", "handlers"].map((t, i) => ({ x: i, y: 0.05, text: t, showarrow: false, font: { color: "#667" } })) }, { displayModeBar: false, responsive: true });
    if (!node.dataset.bound) {
      node.dataset.bound = "1";
      node.on("plotly_click", (event) => {
        const data = event.points[0].customdata;
        if (data) showGraphDetail(data);
      });
    }
  }
  async function showGraphDetail({ edge, node }) {
    const panel = $("#graph-detail");
    const { own } = graphFilter();
    const kind = node ? node.kind : "", name = node ? node.label : "";
    const app = "&app=" + encodeURIComponent(node && node.app ? node.app : own);
    const query = kind === "handler" ? "consumer=" + encodeURIComponent(name) + app : kind === "queue" ? "queue=" + encodeURIComponent(name) + app : "";
    let html = `<h3>${esc(edge ? edge.source + " → " + edge.target : node.id)}</h3>`;
    if (edge) html += `<p>${edge.count} hops · ${edge.errors} failed attempts · ${edge.dead} dead letters · p50 ${ms(edge.p50_ms)} · p95 ${ms(edge.p95_ms)}${edge.queue_wait_p95_ms == null ? "" : " · queue wait p95 " + ms(edge.queue_wait_p95_ms)}</p>`;
    if (!query) { panel.innerHTML = html + "<p class=muted>A sender: its failures show on the queues it sends to.</p>"; return; }
    const page = await api("GET", "/api/v1/deadletters?state=dead&limit=20&" + query);
    html += `<h4>Dead letters</h4><ul>` + (page.items.map((d) => `<li><a href="/deadletters/${d.id}/">${esc(d.error_type)}</a> ${esc(d.dead_at.slice(11, 19))}</li>`).join("") || "<li class=muted>none</li>") + "</ul>";
    html += `<p><a href="/deadletters/?state=dead&${query}">all dead letters here</a></p>`;
    const traces = [...new Set(page.items.map((d) => d.id))].slice(0, 5);
    if (traces.length) html += "<h4>Traces of failures</h4><ul>" + (await Promise.all(traces.map((id) => api("GET", "/api/v1/deadletters/" + id)))).filter((d) => d.trace_id).map((d) => `<li><a href="/traces/${d.trace_id}/">${d.trace_id.slice(0, 12)}…</a></li>`).join("") + "</ul>";
    panel.innerHTML = html;
  }

  /* -- dead letters: selection, groups and filter requeue, with a dry-run count, a rate, progress and cancel -- */
  async function loadGroups(filter, canOperate) {
    const query = new URLSearchParams({ ...filter, limit: 20 }).toString();
    const groups = await api("GET", "/api/v1/deadletters/groups?" + query);
    $("#groups").innerHTML = groups.map((g) => `<tr data-fingerprint="${esc(g.fingerprint)}">
      <td><b>${esc(g.error_type)}</b><br><span class="muted">${esc(g.error_message.slice(0, 120))}</span></td>
      <td>${esc(g.message_type)} · ${esc(g.consumer)}</td><td class="num">${g.count}</td>
      <td>${esc(g.first_seen.slice(0, 19).replace("T", " "))}</td><td>${esc(g.last_seen.slice(0, 19).replace("T", " "))}</td>
      <td><a href="?state=dead&fingerprint=${esc(g.fingerprint)}${filter.app ? "&app=" + encodeURIComponent(filter.app) : ""}">list</a>${canOperate ? ` · <button class="requeue-group" data-fingerprint="${esc(g.fingerprint)}">Requeue group…</button>` : ""}</td></tr>`).join("")
      || `<tr><td colspan="6" class="muted">No dead letters match.</td></tr>`;
  }

  async function deadLetters() {
    const filter = JSON.parse($("#filter").textContent);
    const bulk = $("#bulk");
    await loadGroups(filter, Boolean(bulk));
    if (!bulk) return;
    let request = null, job = null;
    $("#select-all")?.addEventListener("change", (e) => $$(".pick").forEach((box) => { box.checked = e.target.checked; }));
    async function prepare(body, what) {
      request = body;
      bulk.hidden = false;
      $("#bulk-progress").value = 0;
      $("#bulk-status").textContent = "";
      const { count } = await api("POST", "/api/v1/requeue-jobs", { ...body, dry_run: true });
      $("#bulk-what").textContent = `${count} dead letter(s) ${what} would be requeued.`;
      $("#bulk-start").disabled = count === 0;
    }
    $$(".requeue-group").forEach((b) => b.addEventListener("click", () => prepare({ fingerprint: b.dataset.fingerprint, ...(filter.app ? { app: filter.app } : {}) }, "in this cause group")));
    $("#requeue-selected")?.addEventListener("click", () => {
      const ids = $$(".pick:checked").map((b) => Number(b.value));
      if (!ids.length) { alert("Select some dead letters first."); return; }
      prepare({ ids }, "selected");
    });
    $("#requeue-filter")?.addEventListener("click", () => prepare(filter, "matching the filter"));
    $("#bulk-start").addEventListener("click", async () => {
      const rate = parseFloat($("#bulk-rate").value);
      try {
        job = await api("POST", "/api/v1/requeue-jobs", { ...request, rate_per_s: rate > 0 ? rate : null });
      } catch (err) { $("#bulk-status").textContent = err.message; return; }
      $("#bulk-start").disabled = true;
      $("#bulk-cancel").hidden = false;
      poll();
    });
    $("#bulk-cancel").addEventListener("click", async () => { if (job) job = await api("POST", `/api/v1/requeue-jobs/${job.id}/cancel`).catch((e) => ({ ...job, error: e.message })); });
    async function poll() {
      job = await api("GET", `/api/v1/requeue-jobs/${job.id}`);
      $("#bulk-progress").value = job.progress;
      $("#bulk-status").textContent = `${job.state}: ${job.done} requeued, ${job.skipped} skipped of ${job.total} (${Math.round(100 * job.progress)} %)`;
      if (job.state === "running") setTimeout(poll, 300);
      else $("#bulk-cancel").hidden = true;
    }
  }

  /* -- one dead letter: requeue, edit and requeue (with the change shown), discard -- */
  function lineDiff(a, b) {
    const x = a.split("\n"), y = b.split("\n"), out = [];
    const lcs = Array.from({ length: x.length + 1 }, () => new Array(y.length + 1).fill(0));
    for (let i = x.length - 1; i >= 0; i--) for (let j = y.length - 1; j >= 0; j--) lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    let i = 0, j = 0;
    while (i < x.length && j < y.length) {
      if (x[i] === y[j]) { out.push("  " + esc(x[i])); i++; j++; }
      else if (lcs[i + 1][j] >= lcs[i][j + 1]) out.push(`<span class=del>- ${esc(x[i++])}</span>`);
      else out.push(`<span class=add>+ ${esc(y[j++])}</span>`);
    }
    while (i < x.length) out.push(`<span class=del>- ${esc(x[i++])}</span>`);
    while (j < y.length) out.push(`<span class=add>+ ${esc(y[j++])}</span>`);
    return out.join("\n");
  }
  function deadLetter() {
    const original = $("#payload")?.textContent || "";
    $("#requeue-one")?.addEventListener("click", async (e) => {
      try {
        await api("POST", `/api/v1/deadletters/${e.target.dataset.id}/requeue`);
        $("#requeue-result").textContent = "requeued: watching for the outcome…";
        e.target.disabled = true;
        watch(e.target.dataset.id, "#requeue-result");
      } catch (err) { $("#requeue-result").textContent = err.message; }
    });
    $("#edit-preview")?.addEventListener("click", () => {
      try { JSON.parse($("#edit-payload").value); } catch (err) { $("#edit-result").textContent = "not JSON: " + err.message; return; }
      $("#edit-result").textContent = "";
      $("#edit-diff").innerHTML = lineDiff(original, JSON.stringify(JSON.parse($("#edit-payload").value), null, 2));
    });
    $("#edit-requeue")?.addEventListener("click", async (e) => {
      let payload;
      try { payload = JSON.parse($("#edit-payload").value); } catch (err) { $("#edit-result").textContent = "not JSON: " + err.message; return; }
      try {
        await api("POST", `/api/v1/deadletters/${e.target.dataset.id}/edit-requeue`, { payload });
        $("#edit-result").textContent = "";
        $("#edit-diff").innerHTML = lineDiff(original, JSON.stringify(payload, null, 2));
        watch(e.target.dataset.id, "#requeue-result");
      } catch (err) { $("#edit-result").textContent = err.message; }
    });
    $("#discard")?.addEventListener("click", async (e) => {
      const reason = $("#discard-reason").value.trim();
      if (!reason) { $("#discard-result").textContent = "say why, for the audit log"; return; }
      try { await api("POST", `/api/v1/deadletters/${e.target.dataset.id}/discard`, { reason }); location.reload(); }
      catch (err) { $("#discard-result").textContent = err.message; }
    });
  }
  async function watch(id, where) {
    const d = await api("GET", `/api/v1/deadletters/${id}`);
    const state = $("#dl-state");
    state.textContent = d.state;
    state.className = "state " + d.state;
    if (d.state === "requeued") { setTimeout(() => watch(id, where), 500); return; }
    $(where).textContent = d.state === "resolved" ? "succeeded after the requeue" : "failed again: " + d.error_message;
  }

  /* -- trace waterfall, a window of spans at a time (usable at 20,000 spans) -- */
  function trace() {
    const id = JSON.parse($("#trace-id").textContent), size = 500;
    let offset = 0, total = 0;
    async function load() {
      const t = await api("GET", `/api/v1/traces/${id}?offset=${offset}&limit=${size}`);
      total = t.spans;
      $("#window").textContent = `${offset + 1}–${Math.min(offset + size, total)} of ${total}`;
      $("#prev").disabled = offset === 0;
      $("#next").disabled = offset + size >= total;
      const links = [...t.links_out.map((l) => `links to <a href="/traces/${l.trace_id}/">${l.trace_id}</a>`), ...t.links_in.map((l) => `linked from <a href="/traces/${l.trace_id}/">${l.trace_id}</a>`)];
      $("#trace-links").innerHTML = links.join(" · ");
      const items = t.items;
      const labels = items.map((s, i) => `${"\u00a0\u00a0".repeat(Math.min(s.depth, 12))}${s.name} #${offset + i}`);
      Plotly.react("waterfall", [{
        type: "bar", orientation: "h", y: labels, x: items.map((s) => Math.max(s.duration_ms, 0.05)), base: items.map((s) => s.start_ms),
        marker: { color: items.map((s) => (s.status_code === 2 ? "#c62828" : s.kind === 3 ? "#2b6cb0" : s.kind === 4 ? "#2f855a" : "#718096")) },
        hovertext: items.map((s) => `${s.name} · ${s.service}<br>start +${s.start_ms.toFixed(1)} ms · ${s.duration_ms.toFixed(2)} ms`), hoverinfo: "text",
        customdata: items.map((_, i) => i),
      }], { height: Math.max(300, 22 * items.length + 60), margin: { l: 320, r: 20, t: 10, b: 30 }, yaxis: { autorange: "reversed", tickfont: { size: 11 } }, xaxis: { title: "ms since the trace began" } },
      { displayModeBar: false, responsive: true });
      const node = document.getElementById("waterfall");
      node.removeAllListeners?.("plotly_click");
      node.on("plotly_click", (event) => showSpan(items[event.points[0].customdata]));
    }
    function showSpan(s) {
      $("#span-detail").innerHTML = `<h3>${esc(s.name)}</h3><p>${esc(s.service)} · ${s.duration_ms.toFixed(3)} ms${s.status_message ? " · <span class=error>" + esc(s.status_message) + "</span>" : ""}</p>`
        + "<h4>Attributes</h4><table>" + Object.entries(s.attributes).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(typeof v === "object" ? JSON.stringify(v) : v)}</td></tr>`).join("") + "</table>"
        + (s.events.length ? "<h4>Events</h4>" + s.events.map((e) => `<p><b>${esc(e.name)}</b> ${esc(e.time)}</p><pre>${esc(JSON.stringify(e.attributes, null, 2))}</pre>`).join("") : "")
        + (s.links.length ? "<h4>Links</h4>" + s.links.map((l) => `<p><a href="/traces/${esc(l.trace_id)}/">${esc(l.trace_id)}</a></p>`).join("") : "");
    }
    $("#prev").addEventListener("click", () => { offset = Math.max(0, offset - size); load(); });
    $("#next").addEventListener("click", () => { offset += size; load(); });
    load();
  }

  const pages = {
    overview: () => { const f = initialFrame(); if (f) renderOverview(f); live(renderOverview); },
    graph: () => { const f = initialFrame(); if (f) renderGraph(f); live(renderGraph); },
    deadLetters: () => { deadLetters(); live(() => {}); },
    deadLetter: () => { deadLetter(); live(() => {}); },
    trace: () => { trace(); live(() => {}); },
  };
  return { start: (name) => pages[name](), api, lineDiff, live };
})();
window.Flowscope = Flowscope;
