/* Flowscope console: the Alerts page. Loaded after console.js, on its page only.

   Everything shown comes from the alerts API and is fetched again every few seconds (rules'
   states, deliveries and history change as the workers evaluate); every change is an API call,
   so what the page can do, a script can do too. */
"use strict";

(() => {
  const { $, $$, esc, api } = Flowscope;
  const BASE = "/api/v1/alerts";
  const REFRESH_MS = 3000;
  let rules = [], channels = [], cursor = "", paged = false; // paged: the operator asked for older alerts; stop redrawing page one
  const canOperate = () => ["operator", "admin"].includes(document.body.dataset.role);
  const when = (iso) => (iso ? new Date(iso).toISOString().replace("T", " ").slice(0, 19) : "–");

  function fail(error) {
    const box = $("#alerts-error");
    box.textContent = String(error.message || error);
    box.hidden = false;
  }
  const ok = () => { $("#alerts-error").hidden = true; };

  function scopeText(r) { return r.scope === "all" ? "all" : `${r.scope} ${r.scope_value}`; }
  function silenceText(s) { return s ? `muted until ${when(s.until)} by ${s.created_by} (${s.reason})` : ""; }

  function drawRules() {
    $("#rules tbody").innerHTML = rules.map((r) => `<tr data-id="${r.id}">
      <td>${esc(r.name)}</td><td>${esc(r.kind)}</td><td>${esc(scopeText(r))}</td><td>${r.threshold}</td>
      <td>${r.window_seconds} / ${r.for_seconds} / ${r.clear_seconds} s</td>
      <td class="state-${esc(r.state)}">${esc(r.state)}${r.firing > 1 ? ` (${r.firing})` : ""}</td>
      <td class="muted">${esc(silenceText(r.silence))}</td>
      ${canOperate() ? `<td><button data-edit-rule="${r.id}">Edit</button> <button data-delete-rule="${r.id}">Delete</button></td>` : ""}</tr>`).join("")
      || `<tr><td colspan="8" class="muted">No rules yet.</td></tr>`;
    const options = rules.map((r) => `<option value="${r.id}">${esc(r.name)}</option>`).join("");
    for (const select of $$('select[name="rule_id"], #history-filter select[name="rule"]')) {
      const chosen = select.value;
      select.innerHTML = `<option value="">${select.name === "rule" ? "all" : "—"}</option>` + options;
      select.value = chosen;
    }
  }

  function drawChannels() {
    $("#channels tbody").innerHTML = channels.map((c) => `<tr data-id="${c.id}">
      <td>${esc(c.name)}</td><td>${esc(c.kind)}${c.slack ? " (Slack)" : ""}</td>
      <td>${esc(c.kind === "email" ? c.emails.join(", ") : c.url)}</td>
      <td>${c.kind === "webhook" ? (c.secret_set ? "secret set" : "unsigned") : "–"}</td><td>${c.enabled ? "yes" : "no"}</td>
      ${canOperate() ? `<td><button data-test-channel="${c.id}">Send a test</button> <button data-edit-channel="${c.id}">Edit</button> <button data-delete-channel="${c.id}">Delete</button></td>` : ""}</tr>`).join("")
      || `<tr><td colspan="6" class="muted">No channels yet.</td></tr>`;
    const select = $('#rule-form select[name="channels"]');
    if (select) {
      const chosen = new Set(Array.from(select.selectedOptions).map((o) => o.value));
      select.innerHTML = channels.map((c) => `<option value="${c.id}" ${chosen.has(String(c.id)) ? "selected" : ""}>${esc(c.name)}</option>`).join("");
    }
  }

  async function drawSilences() {
    const silences = await api("GET", `${BASE}/silences`);
    const names = Object.fromEntries(rules.map((r) => [r.id, r.name]));
    $("#silences tbody").innerHTML = silences.map((s) => `<tr>
      <td>${s.rule_id ? "rule " + esc(names[s.rule_id] || s.rule_id) : "failure group " + esc(s.fingerprint)}</td>
      <td>${when(s.until)}</td><td>${esc(s.created_by)}</td><td>${esc(s.reason)}</td>
      ${canOperate() ? `<td><button data-end-silence="${s.id}">End now</button></td>` : ""}</tr>`).join("")
      || `<tr><td colspan="5" class="muted">Nothing is silenced.</td></tr>`;
  }

  async function drawDeliveries() {
    const rows = await api("GET", `${BASE}/deliveries?limit=20`);
    $("#deliveries tbody").innerHTML = rows.map((d) => `<tr class="delivery-${esc(d.state)}">
      <td>${when(d.created_at)}</td><td>${esc(d.channel)}</td><td>${esc(d.kind)}</td><td>${d.alert_id ?? "–"}</td>
      <td>${esc(d.state)}</td><td>${d.attempts}</td><td>${esc(d.last_error)}</td></tr>`).join("")
      || `<tr><td colspan="7" class="muted">No notices yet.</td></tr>`;
  }

  function historyQuery() {
    const form = $("#history-filter");
    const query = new URLSearchParams({ limit: "20" });
    if (form.rule.value) query.set("rule", form.rule.value);
    if (form.state.value) query.set("state", form.state.value);
    return query;
  }

  function alertRow(a) {
    return `<tr><td>${when(a.started_at)}</td><td>${when(a.resolved_at)}</td><td>${esc(a.rule)}</td>
      <td>${esc(a.state)}${a.muted ? " (muted)" : ""}</td><td title="${esc(JSON.stringify(a.observed))}">${esc(a.summary)}</td>
      <td><button data-deliveries="${a.id}">Notices</button><div class="alert-deliveries" id="alert-deliveries-${a.id}"></div></td></tr>`;
  }

  async function drawHistory(append = false) {
    const query = historyQuery();
    if (append && cursor) query.set("cursor", cursor);
    const page = await api("GET", `${BASE}/history?${query}`);
    const rows = page.items.map(alertRow).join("");
    const body = $("#history tbody");
    body.innerHTML = (append ? body.innerHTML : "") + rows || `<tr><td colspan="6" class="muted">No alerts yet.</td></tr>`;
    cursor = page.next_cursor;
    $("#history-more").hidden = !cursor;
  }

  async function refresh() {
    try {
      [rules, channels] = await Promise.all([api("GET", `${BASE}/rules`), api("GET", `${BASE}/channels`)]);
      drawRules();
      drawChannels();
      await Promise.all([drawSilences(), drawDeliveries()]);
      if (!paged) await drawHistory();
    } catch (error) {
      fail(error);
    }
  }

  function ruleBody(form) {
    return {
      name: form.name.value, kind: form.kind.value, scope: form.scope.value, scope_value: form.scope_value.value.trim(),
      threshold: Number(form.threshold.value || 0), window_seconds: Number(form.window_seconds.value), for_seconds: Number(form.for_seconds.value),
      clear_seconds: Number(form.clear_seconds.value), enabled: form.enabled.checked,
      channels: Array.from(form.channels.selectedOptions).map((o) => Number(o.value)),
    };
  }

  function channelBody(form) {
    const body = { name: form.name.value, kind: form.kind.value, enabled: form.enabled.checked };
    if (body.kind === "webhook") {
      body.url = form.url.value.trim();
      body.slack = form.slack.checked;
      if (form.secret.value) body.secret = form.secret.value; // left out on an edit: the saved one is kept
    } else {
      body.emails = form.emails.value.split(",").map((e) => e.trim()).filter(Boolean);
    }
    return body;
  }

  async function submit(event, save) {
    event.preventDefault();
    try {
      await save(event.target);
      event.target.reset();
      event.target.id.value = "";
      ok();
      await refresh();
    } catch (error) {
      fail(error);
    }
  }

  function fill(form, values) {
    for (const [name, value] of Object.entries(values)) {
      const field = form.elements[name];
      if (!field || name === "channels") continue;
      if (field.type === "checkbox") field.checked = Boolean(value);
      else field.value = Array.isArray(value) ? value.join(", ") : value ?? "";
    }
    form.closest("details").open = true;
  }

  async function onClick(event) {
    const target = event.target.closest("button");
    if (!target) return;
    const data = target.dataset;
    try {
      if (data.testChannel) {
        await api("POST", `${BASE}/channels/${data.testChannel}/test`);
        await drawDeliveries();
      } else if (data.deleteRule && confirm("Delete this rule and its history?")) {
        await api("DELETE", `${BASE}/rules/${data.deleteRule}`);
      } else if (data.deleteChannel && confirm("Delete this channel?")) {
        await api("DELETE", `${BASE}/channels/${data.deleteChannel}`);
      } else if (data.endSilence) {
        await api("DELETE", `${BASE}/silences/${data.endSilence}`);
      } else if (data.editRule) {
        const rule = rules.find((r) => String(r.id) === data.editRule);
        fill($("#rule-form"), rule);
        for (const option of $("#rule-form").channels.options) option.selected = rule.channels.includes(Number(option.value));
        return;
      } else if (data.editChannel) {
        fill($("#channel-form"), { ...channels.find((c) => String(c.id) === data.editChannel), secret: "" });
        return;
      } else if (data.deliveries) {
        const rows = await api("GET", `${BASE}/deliveries?alert=${data.deliveries}`);
        $(`#alert-deliveries-${data.deliveries}`).innerHTML = rows.map((d) => `<div>${esc(d.channel)}: ${esc(d.kind)} ${esc(d.state)} ×${d.attempts} ${esc(d.last_error)}</div>`).join("") || "none";
        return;
      } else {
        return;
      }
      ok();
      await refresh();
    } catch (error) {
      fail(error);
    }
  }

  function start() {
    document.addEventListener("click", onClick);
    const ruleForm = $("#rule-form");
    if (ruleForm) {
      ruleForm.addEventListener("submit", (e) => submit(e, (f) => (f.id.value ? api("PUT", `${BASE}/rules/${f.id.value}`, ruleBody(f)) : api("POST", `${BASE}/rules`, ruleBody(f)))));
      $("#channel-form").addEventListener("submit", (e) => submit(e, (f) => (f.id.value ? api("PUT", `${BASE}/channels/${f.id.value}`, channelBody(f)) : api("POST", `${BASE}/channels`, channelBody(f)))));
      $("#silence-form").addEventListener("submit", (e) => submit(e, (f) => {
        const until = new Date(Date.now() + Number(f.minutes.value) * 60000).toISOString();
        const body = { until, reason: f.reason.value };
        if (f.rule_id.value) body.rule_id = Number(f.rule_id.value);
        else body.fingerprint = f.fingerprint.value.trim();
        return api("POST", `${BASE}/silences`, body);
      }));
    }
    $("#history-filter").addEventListener("change", () => { cursor = ""; paged = false; drawHistory().catch(fail); });
    $("#history-more").addEventListener("click", () => { paged = true; drawHistory(true).catch(fail); });
    refresh();
    setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
  }

  Flowscope.register("alerts", start);
})();
