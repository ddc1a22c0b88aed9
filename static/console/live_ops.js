/* Flowscope console: the workers and tasks pages of attached apps, live over the console's socket. */
"use strict";

const FlowscopeLive = (() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const num = (v) => (v == null ? "–" : String(v));
  const FINISHED = new Set(["succeeded", "failed", "revoked"]);

  function renderWorkers(frame) {
    const only = ($("#workers-app") || {}).value || "";
    const rows = (frame.attached ? frame.attached.workers : []).filter((w) => !only || w.app === only);
    $("#live-workers").innerHTML = rows.map((w) => `<tr data-worker="${esc(w.hostname)}">
      <td>${esc(w.app)}</td><td>${esc(w.hostname)}</td>
      <td><span class="state ${w.online ? "resolved" : "failed"}">${w.online ? "online" : "offline"}</span>${!w.online && !w.said_offline ? ` <span class="muted">(silent ${Math.round(w.silent_s)} s)</span>` : ""}</td>
      <td>${esc(w.heartbeat_at.slice(0, 19).replace("T", " "))}</td><td>${esc(w.pool)}</td>
      <td class="num">${num(w.concurrency)}</td><td class="num">${num(w.active)}</td><td class="num">${num(w.processed)}</td><td class="num">${num(w.dropped)}</td>
      <td>${w.source === "events" ? "events only" : "agent"}</td></tr>`).join("") || `<tr><td colspan="10" class="muted">No worker of an attached app has reported${only ? " for " + esc(only) : ""}.</td></tr>`;
  }

  function taskRow(t, canOperate) {
    const dead = t.dead_letter_id ? ` <a href="/deadletters/${t.dead_letter_id}/">dead letter ${t.dead_letter_id}</a>` : "";
    const error = (t.exception ? `<span class="error">${esc(t.exception.slice(0, 200))}</span>` : "") + dead;
    const revoke = t.revoke ? `<span class="muted">${t.revoke.terminate ? "terminate" : "revoke"} ${t.revoke.sent ? "sent" : "ordered"}</span>` : "";
    const actions = canOperate && !FINISHED.has(t.state)
      ? `<button class="revoke" data-id="${esc(t.id)}" data-app="${esc(t.app)}">Revoke</button> <button class="terminate" data-id="${esc(t.id)}" data-app="${esc(t.app)}">Terminate</button> ${revoke}`
      : revoke;
    return `<tr data-task="${esc(t.id)}" data-state="${esc(t.state)}">
      <td>${esc(t.state_at.slice(0, 19).replace("T", " "))}</td><td>${esc(t.app)}</td>
      <td>${esc(t.name)}<br><span class="muted">${t.trace_id ? `<a href="/traces/${esc(t.trace_id)}/">${esc(t.id)}</a>` : esc(t.id)}</span></td>
      <td><span class="state ${esc(t.state)}">${esc(t.state)}</span>${t.exact_call ? "" : ' <span class="state" title="known from Celery events alone: no exact call, no exact requeue">events only</span>'}</td>
      <td>${esc(t.worker)}</td><td class="num">${t.runtime_s == null ? "–" : t.runtime_s.toFixed(3) + " s"}</td>
      <td><code>${esc(t.args)}</code></td><td><code>${esc(t.kwargs)}</code></td><td>${error}</td>${canOperate ? `<td>${actions}</td>` : ""}</tr>`;
  }

  function tasks(canOperate) {
    const initial = JSON.parse($("#initial-tasks").textContent);
    const body = $("#live-tasks");
    const render = (items) => {
      body.innerHTML = items.map((t) => taskRow(t, canOperate)).join("") || `<tr><td colspan="10" class="muted">No task matches.</td></tr>`;
    };
    render(initial.items);
    let mark = null, fetching = false;
    const refresh = async () => {
      if (fetching) return;
      fetching = true;
      try {
        const query = new URLSearchParams({ ...initial.filters, limit: "50" });
        render((await Flowscope.api("GET", "/api/v1/tasks?" + query)).items);
      } catch (e) { /* the next frame tries again */ } finally { fetching = false; }
    };
    body.addEventListener("click", async (event) => {
      const button = event.target.closest("button.revoke, button.terminate");
      if (!button) return;
      const terminate = button.classList.contains("terminate");
      const signal = terminate ? $("#revoke-signal").value : undefined;
      const what = terminate ? `Terminate task ${button.dataset.id} (${signal})?` : `Revoke task ${button.dataset.id}?`;
      if (!confirm(what)) return;
      const status = $("#revoke-status");
      try {
        const order = await Flowscope.api("POST", `/api/v1/tasks/${encodeURIComponent(button.dataset.id)}/revoke`, { app: button.dataset.app, terminate, signal });
        status.textContent = `order ${order.order}: ${terminate ? "terminate" : "revoke"} of ${order.task_id} waits for ${order.app}'s agent`;
        status.className = "";
        refresh();
      } catch (e) { status.textContent = e.message; status.className = "error"; }
    });
    const counts = (frame) => {
      const c = (frame.attached && frame.attached.task_counts) || {};
      $("#task-counts").innerHTML = Object.entries(c).map(([s, n]) => `<span class="state ${esc(s)}">${esc(s)}: ${n}</span>`).join(" ");
    };
    Flowscope.live((frame) => {
      counts(frame);
      const now = frame.attached ? frame.attached.tasks_mark : null;
      if (initial.first_page && mark !== null && now !== mark) refresh();
      mark = now;
    });
  }

  function workers() {
    const node = $("#initial-frame");
    if (node) renderWorkers(JSON.parse(node.textContent));
    Flowscope.live(renderWorkers);
  }

  return { workers, tasks };
})();
window.FlowscopeLive = FlowscopeLive;
