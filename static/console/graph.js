/* Flowscope console: the flow graph. Loaded after console.js, on its page only. */
"use strict";

(() => {
  const { $, esc, pct, ms, api, live, initialFrame } = Flowscope;
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


  Flowscope.register("graph", () => { const f = initialFrame(); if (f) renderGraph(f); live(renderGraph); });
})();
