/* The queue page: the spread of work between its competing consumers, as a small bar chart. */
"use strict";
(() => {
  function spread() {
    const rows = JSON.parse(document.getElementById("spread-data").textContent);
    const node = document.getElementById("spread-chart");
    if (!rows.length) { node.remove(); return; }
    const fair = 1 / rows.length;
    Plotly.react(node, [{ x: rows.map((r) => r.worker), y: rows.map((r) => r.deliveries), type: "bar", marker: { color: rows.map((r) => (r.share > Number(node.dataset.threshold) * fair ? "#c53030" : "#3b6fb6")) } }], {
      title: { text: "deliveries per worker process", font: { size: 12 } }, margin: { l: 40, r: 10, t: 30, b: 40 }, height: 218,
      shapes: [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: fair * rows.reduce((n, r) => n + r.deliveries, 0), y1: fair * rows.reduce((n, r) => n + r.deliveries, 0), line: { dash: "dot", color: "#888" } }],
    }, { displayModeBar: false, responsive: true });
  }
  Flowscope.register("queue", spread);
})();
