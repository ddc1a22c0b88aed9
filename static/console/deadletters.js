/* Flowscope console: dead letters, one and many. Loaded after console.js, on its page only. */
"use strict";

(() => {
  const { $, $$, esc, api, live } = Flowscope;
  /* -- dead letters: selection, groups and filter requeue, with a dry-run count, a canary, a rate,
     progress, resume and cancel; the rows and the groups follow the job in place -- */
  const when = (iso) => esc(iso.slice(0, 19).replace("T", " "));
  let shownGroups = [];
  // `keep`: groups shown before stay, at 0, when they leave the filter (all of a group of dead
  // ones requeued), so the operator sees the count fall rather than the row vanish.
  async function loadGroups(filter, canOperate, keep = false) {
    const query = (extra) => new URLSearchParams({ ...filter, ...extra, limit: 20 }).toString();
    // The count is the filter's; "dead" is how many of each group are still dead, the number a
    // requeue makes fall (one query when the filter already keeps to dead ones).
    const [found, dead] = await Promise.all([
      api("GET", "/api/v1/deadletters/groups?" + query({})),
      filter.state === "dead" ? null : api("GET", "/api/v1/deadletters/groups?" + query({ state: "dead" })),
    ]);
    const deadCount = new Map((dead || found).map((g) => [g.fingerprint, g.count]));
    const seen = new Set(found.map((g) => g.fingerprint));
    const groups = keep ? [...found, ...shownGroups.filter((g) => !seen.has(g.fingerprint)).map((g) => ({ ...g, count: 0 }))] : found;
    shownGroups = groups;
    $("#groups").innerHTML = groups.map((g) => `<tr data-fingerprint="${esc(g.fingerprint)}">
      <td><b>${esc(g.error_type)}</b>${g.silence ? ` <span class="muted-group" title="${esc(g.silence.why)}">${esc(g.silence.text)}</span>` : ""}<br><span class="muted">${esc(g.error_message.slice(0, 120))}</span></td>
      <td>${esc(g.message_type)} · ${esc(g.consumer)}</td><td class="num count">${g.count}</td><td class="num dead-count">${deadCount.get(g.fingerprint) || 0}</td>
      <td>${when(g.first_seen)}</td><td>${when(g.last_seen)}</td>
      <td><a href="?state=dead&fingerprint=${esc(g.fingerprint)}${filter.app ? "&app=" + encodeURIComponent(filter.app) : ""}">list</a>${canOperate ? ` · <button class="requeue-group" data-fingerprint="${esc(g.fingerprint)}">Requeue group…</button>` : ""}</td></tr>`).join("")
      || `<tr><td colspan="7" class="muted">No dead letters match.</td></tr>`;
  }

  /* The rows on the page, refreshed by id: their state moves dead -> requeued -> resolved or dead. */
  async function refreshRows() {
    const rows = $$("tr[data-id]");
    if (!rows.length) return [];
    const query = new URLSearchParams({ ids: rows.map((r) => r.dataset.id).join(","), limit: "500" });
    const { items } = await api("GET", "/api/v1/deadletters?" + query.toString());
    const states = new Map(items.map((d) => [String(d.id), d.state]));
    for (const row of rows) {
      const state = states.get(row.dataset.id), cell = row.querySelector(".state");
      if (state && cell && cell.textContent !== state) { cell.textContent = state; cell.className = "state " + state; }
    }
    return [...states.values()];
  }

  function describe(job) {
    const c = job.canary, o = job.outcomes;
    const status = `${job.state}: ${job.done} requeued, ${job.skipped} skipped of ${job.total} (${Math.round(100 * job.progress)} %)`;
    const canary = !c.size ? "no canary"
      : `canary: ${c.sent} sent, ${c.succeeded} succeeded, ${c.failed_again} failed again, ${c.pending} pending${c.seconds !== null ? ` (judged after ${c.seconds.toFixed(1)} s)` : ""}`;
    return { status, canary, outcomes: `outcomes so far: ${o.succeeded} succeeded, ${o.failed_again} failed again, ${o.pending} pending` };
  }

  async function deadLetters() {
    const filter = JSON.parse($("#filter").textContent);
    const bulk = $("#bulk");
    const canOperate = Boolean(bulk);
    await loadGroups(filter, canOperate);
    if (!bulk) return;
    let request = null, job = null, settled = 0;
    $("#select-all")?.addEventListener("change", (e) => $$(".pick").forEach((box) => { box.checked = e.target.checked; }));
    async function prepare(body, what) {
      request = body;
      bulk.hidden = false;
      $("#bulk-progress").value = 0;
      for (const id of ["#bulk-status", "#bulk-canary", "#bulk-outcomes", "#bulk-reason"]) $(id).textContent = "";
      const { count } = await api("POST", "/api/v1/requeue-jobs", { ...body, dry_run: true });
      $("#bulk-what").textContent = `${count} dead letter(s) ${what} would be requeued.`;
      $("#bulk-start").disabled = count === 0;
    }
    // Delegated: the group table is redrawn while a job runs.
    $("#groups").addEventListener("click", (e) => {
      const b = e.target.closest(".requeue-group");
      if (b) prepare({ fingerprint: b.dataset.fingerprint, ...(filter.app ? { app: filter.app } : {}) }, "in this cause group");
    });
    $("#requeue-selected")?.addEventListener("click", () => {
      const ids = $$(".pick:checked").map((b) => Number(b.value));
      if (!ids.length) { alert("Select some dead letters first."); return; }
      prepare({ ids }, "selected");
    });
    $("#requeue-filter")?.addEventListener("click", () => prepare(filter, "matching the filter"));
    $("#bulk-start").addEventListener("click", async () => {
      const rate = parseFloat($("#bulk-rate").value), canary = parseInt($("#bulk-canary-size").value, 10), share = parseFloat($("#bulk-share").value);
      const settings = { rate_per_s: rate > 0 ? rate : null, canary_size: Number.isNaN(canary) ? 10 : canary, max_failure_share: Number.isNaN(share) ? 0.2 : share / 100 };
      try {
        job = await api("POST", "/api/v1/requeue-jobs", { ...request, ...settings });
      } catch (err) { $("#bulk-status").textContent = err.message; return; }
      $("#bulk-start").disabled = true;
      settled = 0;
      poll();
    });
    const act = (action) => async () => {
      if (!job) return;
      try {
        job = await api("POST", `/api/v1/requeue-jobs/${job.id}/${action}`);
        show();
        if (action === "resume") { settled = 0; poll(); }
      }
      catch (err) { $("#bulk-reason").textContent = err.message; }
    };
    $("#bulk-cancel").addEventListener("click", act("cancel"));
    $("#bulk-resume").addEventListener("click", act("resume"));
    function show() {
      const text = describe(job);
      $("#bulk-progress").value = job.progress;
      $("#bulk-status").textContent = text.status;
      $("#bulk-canary").textContent = text.canary;
      $("#bulk-outcomes").textContent = text.outcomes;
      $("#bulk-reason").textContent = job.state === "paused" ? "paused: " + job.paused_reason : (job.error || "");
      $("#bulk-cancel").hidden = !["canary", "running", "paused"].includes(job.state);
      $("#bulk-resume").hidden = job.state !== "paused";
    }
    // The job every 300 ms; the rows and groups every second while it goes, and after it ends
    // until none of its requeued copies is pending any more (their outcomes come later).
    let refreshed = 0;
    async function poll() {
      job = await api("GET", `/api/v1/requeue-jobs/${job.id}`);
      show();
      const going = ["canary", "running"].includes(job.state);
      const pending = job.outcomes.pending > 0;
      if (Date.now() - refreshed > 1000 || !going) {
        refreshed = Date.now();
        const states = await refreshRows().catch(() => []);
        await loadGroups(filter, canOperate, true).catch(() => {});
        if (!going && !pending && !states.includes("requeued")) settled += 1;
      }
      if (going || settled < 2) setTimeout(poll, going ? 300 : 1000);
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
