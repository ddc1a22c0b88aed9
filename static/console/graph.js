/* Flowscope console: the flow graph. Loaded after console.js and dagre, on its page only.

   Laid out by dagre (static/vendor/dagre: a layered layout that orders nodes to reduce
   crossings), drawn by Plotly in pixels, one layout unit to one screen pixel, so the boxes dagre
   keeps apart are the boxes the browser draws: every label (node, edge, group) is a box dagre
   placed, and none can cover another. The view (app, window, grouping, selection) lives in the
   URL, so a pasted link opens the same graph. */
"use strict";

(() => {
  const { $, esc, pct, ms, api, live, initialFrame } = Flowscope;
  const FONT = { family: "Arial, Helvetica, sans-serif", size: 11 };
  const LINE = 1.3 * FONT.size; // Plotly's line spacing for annotation text
  const KIND_COLOUR = { service: "#2b6cb0", queue: "#805ad5", handler: "#2f855a" };
  const LINK_COLOUR = "#b7791f";
  const REFRESH_MS = 5000; // a window other than the live frame's is fetched this often

  /* -- the view, read from and written to the URL -- */
  function readView() {
    const filter = $("#graph-filter"), view = $("#graph-view");
    return { app: "", own: "", window: 5, group: "app", select: "", ...(filter ? JSON.parse(filter.textContent) : {}), ...(view ? JSON.parse(view.textContent) : {}) };
  }
  const view = readView();
  function writeUrl() {
    const query = new URLSearchParams();
    if (view.app) query.set("app", view.app);
    if (view.window !== 5) query.set("window", String(view.window));
    if (view.group !== "app") query.set("group", view.group);
    if (view.select) query.set("select", view.select);
    const text = query.toString();
    history.replaceState(null, "", location.pathname + (text ? "?" + text : ""));
  }

  function chosenGraph(graph) {
    const { app, own } = view;
    if (!app) return graph;
    const wanted = app === own ? "" : app;
    return { ...graph, nodes: graph.nodes.filter((n) => n.app === wanted), edges: graph.edges.filter((e) => e.app === wanted) };
  }

  /* -- text sizes, measured with the font Plotly draws in -- */
  const measure = document.createElement("canvas").getContext("2d");
  function textBox(html, size = FONT.size) {
    const lines = html.split("<br>").map((l) => l.replace(/<[^>]+>/g, "").replace(/&[a-z#0-9]+;/g, "x"));
    measure.font = `${size}px ${FONT.family}`;
    const width = Math.max(...lines.map((l) => measure.measureText(l).width));
    return { width: Math.ceil(width) + 14, height: Math.ceil(lines.length * 1.3 * size) + 8 };
  }

  // A rate short enough to sit on an edge: 120/s, 3.4/s, 0.02/s, 0.4/min, 3/h (a day's quiet edge).
  const rate = (r) => (r >= 100 ? Math.round(r) + "/s" : r >= 1 ? r.toFixed(1) + "/s" : r >= 0.01 ? r.toFixed(2) + "/s" : r * 60 >= 0.1 ? (r * 60).toFixed(1) + "/min" : Math.max(r > 0 ? 1 : 0, Math.round(r * 3600)) + "/h");
  // Wider with the rate, in half pixels: a rate that moves a little does not redraw the graph.
  const widthOf = (r) => Math.round(2 * (1 + Math.min(7, Math.log2(1 + r)))) / 2;
  function health(e) { return e.error_rate > 0.1 || e.dead > 0 ? "#c62828" : e.error_rate > 0.01 ? "#d69e2e" : "#1a7f37"; }
  const edgeKey = (e) => `${e.source}→${e.target}${e.queue ? "→" + e.queue : ""}${e.kind === "link" ? "~" + e.link : ""}`;
  const nodeName = (n) => (n ? n.kind + ":" + n.label : "");

  // A queue node says what waits in it (Flowscope's own queues: depth and consumers, RabbitMQ
  // only for consumers) and how long messages waited there (p95 over the window).
  function queueLabel(n, queues, wait) {
    const q = n.kind === "queue" && !n.app && (queues || []).find((q) => q.name === n.label);
    let label = esc(n.label) + (n.app && !view.app ? ` <span style="color:#889">(${esc(n.app)})</span>` : "");
    if (q) label += `<br>${q.depth} waiting${q.consumers == null ? "" : " · " + q.consumers + " consumer" + (q.consumers === 1 ? "" : "s")}`;
    if (wait != null) label += `<br>wait p95 ${ms(wait)}`;
    return label;
  }

  /* -- the legs drawn: an attached app's task-to-task edge goes through its queue node -- */
  function legsOf(graph) {
    const legs = [], publishes = new Set(graph.edges.filter((e) => !e.queue && e.kind !== "link").map((e) => e.source + "\n" + e.target));
    graph.edges.forEach((e) => {
      if (e.queue) {
        if (!publishes.has(e.source + "\n" + e.queue)) legs.push({ from: e.source, to: e.queue, edge: e, label: false });
        legs.push({ from: e.queue, to: e.target, edge: e, label: true });
      } else legs.push({ from: e.source, to: e.target, edge: e, label: true });
    });
    return legs;
  }

  /* -- groups: by app, or by flow (the handlers and queues chained by messages, with the services that feed only them) -- */
  function groupsOf(graph, legs, how) {
    const parent = {};
    if (how === "app") graph.nodes.forEach((n) => { parent[n.id] = "group:" + (n.app || view.own); });
    if (how === "flow") {
      const root = Object.fromEntries(graph.nodes.map((n) => [n.id, n.id]));
      const find = (id) => (root[id] === id ? id : (root[id] = find(root[id])));
      const kind = Object.fromEntries(graph.nodes.map((n) => [n.id, n.kind]));
      legs.filter((l) => l.edge.kind !== "link" && kind[l.from] !== "service").forEach((l) => { root[find(l.from)] = find(l.to); });
      graph.nodes.filter((n) => n.kind !== "service").forEach((n) => { parent[n.id] = find(n.id); });
      graph.nodes.filter((n) => n.kind === "service").forEach((n) => {
        const fed = new Set(legs.filter((l) => l.from === n.id && parent[l.to]).map((l) => parent[l.to]));
        if (fed.size === 1) parent[n.id] = [...fed][0];
      });
      const names = {}; // a flow is named after its first queue (else its first node)
      graph.nodes.slice().sort((a, b) => (a.kind === "queue" ? 0 : 1) - (b.kind === "queue" ? 0 : 1) || a.label.localeCompare(b.label))
        .forEach((n) => { if (parent[n.id] && !names[parent[n.id]]) names[parent[n.id]] = n.label; });
      Object.keys(parent).forEach((id) => { parent[id] = "group:flow " + names[parent[id]]; });
    }
    return parent;
  }

  function layout(graph, legs, parent) {
    const g = new dagre.graphlib.Graph({ compound: true, multigraph: true });
    g.setGraph({ rankdir: "TB", nodesep: 14, ranksep: 28, edgesep: 10, marginx: 12, marginy: 12 });
    const waits = {};
    graph.edges.forEach((e) => { if (e.queue && e.queue_wait_p95_ms != null) waits[e.queue] = Math.max(waits[e.queue] || 0, e.queue_wait_p95_ms); });
    const labels = {};
    graph.nodes.forEach((n) => {
      labels[n.id] = queueLabel(n, current.queues, waits[n.id]);
      g.setNode(n.id, { ...textBox(labels[n.id]), node: n });
    });
    new Set(Object.values(parent)).forEach((group) => {
      g.setNode(group, { group });
      const title = `<b>${esc(group.slice(6))}</b>`; // the group's name, in a box of its own inside it
      g.setNode(group + "\ntitle", { ...textBox(title), title });
      g.setParent(group + "\ntitle", group);
    });
    Object.entries(parent).forEach(([id, group]) => g.setParent(id, group));
    // A group's title sits a rank above the nodes its messages enter by: tied to them by edges that are not drawn.
    new Set(Object.values(parent)).forEach((group) => {
      const members = Object.keys(parent).filter((id) => parent[id] === group);
      const fedInside = new Set(legs.filter((l) => parent[l.from] === group && l.edge.kind !== "link").map((l) => l.to));
      const entries = members.filter((id) => !fedInside.has(id));
      (entries.length ? entries : members.slice(0, 1)).forEach((id) => g.setEdge(group + "\ntitle", id, { minlen: 1 }, "title"));
    });
    legs.forEach((leg, i) => {
      const e = leg.edge;
      leg.text = leg.label ? (e.kind === "link" ? `${esc(e.link)} · ${e.count}` : `${rate(e.rate_per_s)}${e.error_rate ? " · " + pct(e.error_rate) + " err" : ""} · p95 ${ms(e.p95_ms)}`) : "";
      g.setEdge(leg.from, leg.to, leg.text ? { ...textBox(leg.text, 10), labelpos: "c", leg: i } : { leg: i }, String(i));
    });
    dagre.layout(g);
    return { g, labels };
  }

  /* -- the path through a node or an edge: everything upstream of its start, downstream of its end -- */
  function pathOf(select, graph, legs) {
    const edge = graph.edges.find((e) => edgeKey(e) === select);
    const node = graph.nodes.find((n) => n.id === select);
    if (!edge && !node) return null;
    const nodes = new Set(), onPath = new Set();
    const walk = (start, forward) => {
      const stack = [start], seen = new Set([start]);
      while (stack.length) {
        const at = stack.pop();
        nodes.add(at);
        legs.forEach((l, i) => {
          const [here, next] = forward ? [l.from, l.to] : [l.to, l.from];
          if (here !== at) return;
          onPath.add(i);
          if (!seen.has(next)) { seen.add(next); stack.push(next); }
        });
      }
    };
    if (node) { walk(node.id, true); walk(node.id, false); }
    else {
      walk(edge.source, false); walk(edge.target, true);
      legs.forEach((l, i) => { if (l.edge === edge) { onPath.add(i); nodes.add(l.from); nodes.add(l.to); } });
    }
    return { nodes, legs: onPath, edge, node };
  }

  let current = { graph: { nodes: [], edges: [] }, queues: [] }, refs = [], shownSelect = null, lastDrawn = "", drawnLegs = [], drawnGraph = { nodes: [], edges: [] };
  function draw() {
    const started = performance.now();
    const graph = chosenGraph(current.graph), legs = legsOf(graph);
    const parent = groupsOf(graph, legs, view.group);
    const { g, labels } = layout(graph, legs, parent);
    const laidOut = performance.now();
    const path = view.select ? pathOf(view.select, graph, legs) : null;
    const holder = $("#flow-graph");
    const width = Math.max(g.graph().width, holder.clientWidth - 2), height = Math.max(g.graph().height, 200);
    const dim = (on) => (path && !on ? 0.18 : 1);
    const shapes = [], annotations = [], traces = [];
    refs = [];
    g.nodes().forEach((id) => {
      const box = g.node(id);
      const rect = { type: "rect", x0: box.x - box.width / 2, x1: box.x + box.width / 2, y0: box.y - box.height / 2, y1: box.y + box.height / 2 };
      if (box.group) shapes.push({ ...rect, layer: "below", fillcolor: "rgba(90,103,216,0.06)", line: { color: "rgba(90,103,216,0.35)", width: 1, dash: "dot" } });
      if (box.title) {
        annotations.push({ x: box.x, y: box.y, text: box.title, showarrow: false, font: { ...FONT, color: "#556" }, borderpad: 2 });
        refs.push(null);
      }
      if (box.node) {
        const n = box.node, on = !path || path.nodes.has(id), colour = KIND_COLOUR[n.kind] || "#718096";
        shapes.push({ ...rect, layer: "below", fillcolor: "#fff", opacity: dim(on), line: { color: colour, width: path && on ? 3 : 1.5 } });
        annotations.push({ x: box.x, y: box.y, text: labels[id], showarrow: false, font: { ...FONT, color: colour }, borderpad: 2, opacity: dim(on),
          captureevents: true, hovertext: esc(nodeName(n)) + (n.app ? ` (${esc(n.app)})` : ""), name: "node" });
        refs.push({ node: n });
      }
    });
    g.edges().forEach((ref) => {
      const e = g.edge(ref);
      if (e.leg == null) return; // a group title's tie
      const leg = legs[e.leg], edge = leg.edge, on = !path || path.legs.has(e.leg);
      const colour = edge.kind === "link" ? LINK_COLOUR : health(edge);
      const name = (id) => nodeName(graph.nodes.find((n) => n.id === id)) || id;
      const hover = edge.kind === "link"
        ? `${esc(name(edge.source))} ⇢ ${esc(name(edge.target))}<br>joined by span links (${esc(edge.link)}): ${edge.count}`
        : `${esc(name(edge.source))} → ${edge.queue ? esc(name(edge.queue)) + " → " : ""}${esc(name(edge.target))}${edge.app ? " (" + esc(edge.app) + ")" : ""}<br>${edge.rate_per_s.toFixed(2)}/s · errors ${pct(edge.error_rate)} · p95 ${ms(edge.p95_ms)}${edge.queue_wait_p95_ms == null ? "" : " · wait p95 " + ms(edge.queue_wait_p95_ms)}`;
      const xs = e.points.map((p) => p.x), ys = e.points.map((p) => p.y);
      traces.push({ x: xs, y: ys, type: "scatter", mode: "lines+markers", showlegend: false, opacity: dim(on), hoverinfo: "text", hovertext: xs.map(() => hover),
        line: { color: colour, width: edge.kind === "link" ? 1.5 : widthOf(edge.rate_per_s), dash: edge.kind === "link" ? "dash" : "solid", shape: "spline" },
        marker: { symbol: "arrow", angleref: "previous", size: xs.map((_, i) => (i === xs.length - 1 ? 11 : 0)), color: colour },
        customdata: xs.map(() => e.leg) });
      if (leg.text) {
        annotations.push({ x: e.x, y: e.y, text: leg.text, showarrow: false, font: { ...FONT, size: 10, color: colour }, bgcolor: "rgba(255,255,255,0.9)", borderpad: 2,
          opacity: dim(on), captureevents: true, hovertext: hover, name: "edge" });
        refs.push({ edge, node: graph.nodes.find((n) => n.id === edge.target) });
      }
    });
    // A frame that changes nothing drawn leaves the drawing alone: a label under the pointer stays put.
    drawnLegs = legs;
    drawnGraph = graph;
    if (view.select !== shownSelect && path) { shownSelect = view.select; showGraphDetail({ edge: path.edge, node: path.node || graph.nodes.find((n) => path.edge && n.id === path.edge.target) }); }
    const drawn = JSON.stringify([traces, shapes, annotations, width, height]);
    if (drawn === lastDrawn) return;
    lastDrawn = drawn;
    holder.dataset.path = path ? JSON.stringify([...path.nodes].sort()) : "";
    holder.dataset.nodes = String(graph.nodes.length);
    holder.dataset.edges = String(graph.edges.length);
    holder.dataset.layoutMs = String(Math.round(laidOut - started));
    // One axis unit to one pixel (a small graph in the middle), y downwards as dagre lays it out.
    Plotly.react(holder, traces, {
      width, height, margin: { l: 0, r: 0, t: 0, b: 0 }, font: FONT, hovermode: "closest", dragmode: false, showlegend: false,
      xaxis: { visible: false, range: [-(width - g.graph().width) / 2, width - (width - g.graph().width) / 2], fixedrange: true }, yaxis: { visible: false, range: [height, 0], fixedrange: true },
      shapes, annotations, paper_bgcolor: "#fff", plot_bgcolor: "#fff",
    }, { displayModeBar: false, responsive: false });
    if (!holder.dataset.bound) {
      holder.dataset.bound = "1";
      holder.on("plotly_clickannotation", (event) => choose(refs[event.index]));
      holder.on("plotly_click", (event) => {
        const i = event.points[0] && event.points[0].customdata;
        const leg = i == null ? null : drawnLegs[i];
        if (leg) choose({ edge: leg.edge, node: drawnGraph.nodes.find((n) => n.id === leg.edge.target) });
      });
    }
  }
  function choose(ref) {
    if (!ref) return;
    const key = ref.edge ? edgeKey(ref.edge) : ref.node.id;
    view.select = view.select === key ? "" : key; // a second click on the same thing clears it
    shownSelect = null;
    writeUrl();
    draw();
    if (!view.select) $("#graph-detail").innerHTML = '<p class="muted">Click a node or an edge to highlight its path and list its failures.</p>';
  }

  async function showGraphDetail({ edge, node }) {
    const panel = $("#graph-detail");
    const { own } = view;
    const kind = node ? node.kind : "", name = node ? node.label : "";
    const app = "&app=" + encodeURIComponent(node && node.app ? node.app : own);
    const query = kind === "handler" ? "consumer=" + encodeURIComponent(name) + app : kind === "queue" ? "queue=" + encodeURIComponent(name) + app : "";
    let html = `<h3>${esc(edge ? edge.source + (edge.kind === "link" ? " ⇢ " : " → ") + edge.target : node.id)}</h3><p><a href="#" id="clear-selection">clear the selection</a></p>`;
    if (edge && edge.kind === "link") html += `<p>${edge.count} hops joined by span links (${esc(edge.link)}): a message that died here was sent again into that queue.</p>`;
    else if (edge) html += `<p>${edge.count} hops · ${edge.errors} failed attempts · ${edge.dead} dead letters · p50 ${ms(edge.p50_ms)} · p95 ${ms(edge.p95_ms)}${edge.queue_wait_p95_ms == null ? "" : " · queue wait p95 " + ms(edge.queue_wait_p95_ms)}</p>`;
    const bind = () => { const clear = $("#clear-selection"); if (clear) clear.onclick = (ev) => { ev.preventDefault(); choose({ node: { id: view.select }, edge: null }); }; };
    if (!query) { panel.innerHTML = html + "<p class=muted>A sender: its failures show on the queues it sends to.</p>"; bind(); return; }
    panel.innerHTML = html;
    bind();
    const page = await api("GET", "/api/v1/deadletters?state=dead&limit=20&" + query);
    html += `<h4>Dead letters</h4><ul>` + (page.items.map((d) => `<li><a href="/deadletters/${d.id}/">${esc(d.error_type)}</a> ${esc(d.dead_at.slice(11, 19))}</li>`).join("") || "<li class=muted>none</li>") + "</ul>";
    html += `<p><a href="/deadletters/?state=dead&${query}">all dead letters here</a>`
      // A queue of Flowscope's own has a page of its consumers and their spread (console/pattern_pages.py).
      + (kind === "queue" && !(node && node.app) ? ` · <a href="/queues/${encodeURIComponent(name)}/">the queue's consumers</a>` : "") + "</p>";
    const traces = [...new Set(page.items.map((d) => d.id))].slice(0, 5);
    if (traces.length) html += "<h4>Traces of failures</h4><ul>" + (await Promise.all(traces.map((id) => api("GET", "/api/v1/deadletters/" + id)))).filter((d) => d.trace_id).map((d) => `<li><a href="/traces/${d.trace_id}/">${d.trace_id.slice(0, 12)}…</a></li>`).join("") + "</ul>";
    panel.innerHTML = html;
    bind();
  }

  /* -- data: the live frame carries the last 5 minutes; a longer window is fetched and refreshed -- */
  let refresh = null;
  async function fetchWindow() {
    const query = new URLSearchParams({ minutes: String(view.window) });
    if (view.app) query.set("app", view.app);
    const asked = view.window;
    const graph = await api("GET", "/api/v1/graph?" + query.toString());
    if (asked !== view.window) return; // the window changed while this was on its way
    current = { ...current, graph };
    draw();
  }
  function useWindow() {
    clearInterval(refresh);
    refresh = null;
    if (view.window !== 5) {
      fetchWindow();
      refresh = setInterval(fetchWindow, REFRESH_MS);
    }
  }
  function onFrame(f) {
    current = { graph: view.window === 5 ? f.graph : current.graph, queues: f.queues };
    draw();
  }

  function bindControls() {
    const on = (id, apply) => { const node = $(id); if (node) node.addEventListener("change", () => { apply(node.value); writeUrl(); }); };
    on("#window-filter", (value) => { view.window = Number(value); useWindow(); });
    on("#group-filter", (value) => { view.group = value; draw(); });
  }

  Flowscope.register("graph", () => {
    bindControls();
    const f = initialFrame();
    if (f) { current = { graph: f.graph, queues: f.queues }; draw(); }
    useWindow();
    live(onFrame);
  });
})();
