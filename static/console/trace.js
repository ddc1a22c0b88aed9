/* Flowscope console: the trace waterfall. Loaded after console.js, on its page only. */
"use strict";

(() => {
  const { $, esc, api, live } = Flowscope;
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


  Flowscope.register("trace", () => { trace(); live(() => {}); });
})();
