/* Flowscope console: dead letters, one and many. Loaded after console.js, on its page only. */
"use strict";

(() => {
  const { $, $$, esc, api, live } = Flowscope;
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


  Flowscope.register("deadLetters", () => { deadLetters(); live(() => {}); });
  Flowscope.register("deadLetter", () => { deadLetter(); live(() => {}); });
})();
