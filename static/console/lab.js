/* The Lab page: per scenario, both styles over time, the fault window shaded. */
"use strict";

(() => {
  const node = document.getElementById("lab-data");
  if (!node || typeof Plotly === "undefined") return;
  const colors = { sync: "#c0392b", async: "#2471a3" };
  const queueColors = { inventory: "#7d3c98", billing: "#d35400", shipping: "#138d75", notifications: "#7f8c8d" };

  function layout(title, fault, extra = {}) {
    const shapes = fault ? [{ type: "rect", xref: "x", yref: "paper", x0: fault[0], x1: fault[1], y0: 0, y1: 1, fillcolor: "#f5b041", opacity: 0.25, line: { width: 0 } }] : [];
    return {
      title: { text: title, font: { size: 12 } }, margin: { l: 50, r: 10, t: 30, b: 35 }, height: 240, shapes,
      xaxis: { title: { text: "s from the first order", font: { size: 11 } } }, legend: { orientation: "h", y: -0.3 }, ...extra,
    };
  }

  function line(x, y, name, color, dash) {
    return { x, y, name, type: "scatter", mode: "lines", line: { color, width: 2, dash: dash || "solid" }, connectgaps: false };
  }

  const config = { displayModeBar: false, responsive: true };
  for (const scenario of JSON.parse(node.textContent)) {
    const throughput = [], latency = [], queues = [];
    for (const [style, s] of Object.entries(scenario.styles)) {
      if (!s || !s.t) continue;
      throughput.push(line(s.t, s.completed, style + " completed", colors[style]));
      if (s.failed && s.failed.some((v) => v)) throughput.push(line(s.t, s.failed, style + " failed", colors[style], "dot"));
      latency.push(line(s.t, s.e2e_p50_ms, style + " p50", colors[style]));
      latency.push(line(s.t, s.e2e_p99_ms, style + " p99", colors[style], "dot"));
      if (s.caller_p99_ms) latency.push(line(s.t, s.caller_p99_ms, style + " caller p99", colors[style], "dashdot"));
      if (style === "async" && s.queue_t) {
        for (const [service, depth] of Object.entries(s.queue_depth || {})) queues.push(line(s.queue_t, depth, service, queueColors[service]));
      }
    }
    const id = (what) => `lab-${scenario.name}-${what}`;
    Plotly.newPlot(id("throughput"), throughput, layout("orders completed (and failed) per second", scenario.fault, { yaxis: { rangemode: "tozero" } }), config);
    Plotly.newPlot(id("latency"), latency, layout("latency by arrival second: end to end, and as the caller saw it (ms, log)", scenario.fault, { yaxis: { type: "log" } }), config);
    Plotly.newPlot(id("queues"), queues, layout("async: queue depth per service", scenario.fault, { yaxis: { rangemode: "tozero" } }), config);
  }
})();
