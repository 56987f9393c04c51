// The Sluice admin page. Every call to the admin API sends the token from this tab's session
// storage as `Authorization: Bearer …` (never a cookie, never a URL) and `x-sluice-client: ui`
// so the audit log says where a change came from. Data goes into the page as text only.
"use strict";

const TOKEN = "sluice-admin-token";
const PERIODS = ["monthly", "weekly", "daily", "lifetime"];
let liveTimer = null;
let liveHistory = [];
let spendRows = [];
let editing = null;

const $ = (id) => document.getElementById(id);

function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
  }
  return e;
}

function say(text, isError) {
  const m = $("message");
  m.textContent = text;
  m.className = isError ? "error" : "";
  m.hidden = !text;
}

class AuthError extends Error {}

async function api(method, path, body) {
  const token = sessionStorage.getItem(TOKEN);
  if (!token) throw new AuthError("not signed in");
  const headers = { authorization: "Bearer " + token, "x-sluice-client": "ui" };
  if (body !== undefined) headers["content-type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store", credentials: "omit" });
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (r.status === 401) {
    signOut("The admin token was refused; sign in again.");
    throw new AuthError("refused");
  }
  if (!r.ok) {
    const msg = data && data.error && data.error.message ? data.error.message : `HTTP ${r.status}`;
    throw new Error(msg);
  }
  return data;
}

// Runs `f`, showing its error; authentication errors already moved to the sign-in form.
async function attempt(f) {
  try { await f(); } catch (e) { if (!(e instanceof AuthError)) say(e.message, true); }
}

const usd = (v) => (v === null || v === undefined ? "–" : "$" + Number(v).toFixed(v !== 0 && Math.abs(v) < 0.01 ? 6 : 2));
const num = (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US", { maximumFractionDigits: 2 }));
const ms = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(1) + " ms");

function table(el, columns, rows) {
  el.replaceChildren(
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : "" }, c.title)))),
    h("tbody", {}, rows.length === 0
      ? h("tr", {}, h("td", { colspan: columns.length, class: "hint" }, "nothing yet"))
      : rows.map((r) => h("tr", {}, columns.map((c) => {
          const v = c.value(r);
          return h("td", { class: (c.num ? "num " : "") + (c.cls ? c.cls(r) : "") }, v);
        })))),
  );
}

function limitsText(r) {
  const parts = [];
  if (r.rpm != null) parts.push(`${r.rpm} rpm`);
  if (r.tpm != null) parts.push(`${r.tpm} tpm`);
  if (r.max_concurrency != null) parts.push(`${r.max_concurrency} in flight`);
  return parts.join(", ") || "none";
}

function budgetText(r) {
  return r.budget_usd == null ? "none" : `${usd(r.budget_usd)} ${r.budget_period || ""}`;
}

// Limit fields from a form: empty means none (null).
function limitFields(form) {
  const f = new FormData(form);
  const out = {};
  for (const name of ["rpm", "tpm", "max_concurrency"]) {
    const v = String(f.get(name) || "").trim();
    out[name] = v === "" ? null : parseInt(v, 10);
  }
  const b = String(f.get("budget_usd") || "").trim();
  out.budget_usd = b === "" ? null : parseFloat(b);
  out.budget_period = String(f.get("budget_period") || "monthly");
  return out;
}

function withoutNulls(o) {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== null && v !== ""));
}

function showKey(key) {
  $("new-key-value").value = key;
  $("new-key").hidden = false;
  $("copy-key").textContent = "Copy";
}

// ---- keys -------------------------------------------------------------------------------

async function loadKeys() {
  const list = await api("GET", "/admin/keys");
  table($("keys-table"), [
    { title: "ID", value: (k) => k.id },
    { title: "Name", value: (k) => k.name },
    { title: "Team", value: (k) => k.team },
    { title: "Prefix", value: (k) => h("code", {}, k.prefix) },
    { title: "Status", value: (k) => (k.disabled ? "disabled" : "active"), cls: (k) => (k.disabled ? "state-disabled" : "state-active") },
    { title: "Limits", value: limitsText },
    { title: "Budget", value: budgetText },
    { title: "Spend this period", num: true, value: (k) => usd(k.spend_usd) },
    { title: "In flight", num: true, value: (k) => num(k.in_flight) },
    { title: "", value: (k) => k.source === "config"
        ? h("span", { class: "hint" }, "from the config file")
        : h("span", {},
            h("button", { type: "button", "data-action": "edit", onclick: () => openEdit("key", k) }, "Edit limits"),
            h("button", { type: "button", "data-action": "rotate", onclick: () => rotateKey(k) }, "Rotate"),
            h("button", { type: "button", "data-action": k.disabled ? "enable" : "disable", onclick: () => toggleKey(k) }, k.disabled ? "Enable" : "Disable")) },
  ], list.data);
}

async function createKey(ev) {
  ev.preventDefault();
  const form = ev.target;
  const f = new FormData(form);
  const body = withoutNulls(limitFields(form));
  body.name = String(f.get("name")).trim();
  const team = String(f.get("team") || "").trim();
  if (team) body.team = team;
  const models = String(f.get("models") || "").split(",").map((s) => s.trim()).filter(Boolean);
  if (models.length) body.models = models;
  if (body.budget_usd === undefined) delete body.budget_period;
  await attempt(async () => {
    const k = await api("POST", "/admin/keys", body);
    form.reset();
    showKey(k.key);
    say(`Key ${k.id} created.`);
    await loadKeys();
  });
}

async function rotateKey(k) {
  if (!confirm(`Rotate ${k.name} (${k.id})? The current key stops working at once.`)) return;
  await attempt(async () => {
    const r = await api("POST", `/admin/keys/${encodeURIComponent(k.id)}/rotate`);
    showKey(r.key);
    say(`Key ${k.id} rotated.`);
    await loadKeys();
  });
}

async function toggleKey(k) {
  const action = k.disabled ? "enable" : "disable";
  await attempt(async () => {
    await api("POST", `/admin/keys/${encodeURIComponent(k.id)}/${action}`);
    say(`Key ${k.id} ${action}d.`);
    await loadKeys();
  });
}

// ---- editing limits (keys and teams) ----------------------------------------------------

function openEdit(kind, r) {
  editing = { kind, id: kind === "key" ? r.id : r.name };
  $("edit-title").textContent = `Limits of ${kind} ${editing.id}`;
  const form = $("edit-form");
  for (const name of ["rpm", "tpm", "max_concurrency", "budget_usd"]) form.elements[name].value = r[name] ?? "";
  form.elements.budget_period.value = PERIODS.includes(r.budget_period) ? r.budget_period : "monthly";
  $("edit-limits").showModal();
}

async function saveEdit(ev) {
  ev.preventDefault();
  const body = limitFields($("edit-form"));
  const { kind, id } = editing;
  $("edit-limits").close();
  await attempt(async () => {
    const path = kind === "key" ? `/admin/keys/${encodeURIComponent(id)}` : `/admin/teams/${encodeURIComponent(id)}`;
    await api("PATCH", path, body);
    say(`Limits of ${kind} ${id} saved.`);
    await (kind === "key" ? loadKeys() : loadTeams());
  });
}

// ---- teams ------------------------------------------------------------------------------

async function loadTeams() {
  const list = await api("GET", "/admin/teams");
  table($("teams-table"), [
    { title: "Team", value: (t) => t.name },
    { title: "Keys", num: true, value: (t) => t.keys },
    { title: "Limits", value: limitsText },
    { title: "Budget", value: budgetText },
    { title: "Spend this period", num: true, value: (t) => usd(t.spend_usd) },
    { title: "In flight", num: true, value: (t) => num(t.in_flight) },
    { title: "", value: (t) => t.created
        ? h("span", {},
            h("button", { type: "button", onclick: () => openEdit("team", t) }, "Edit limits"),
            h("button", { type: "button", onclick: () => deleteTeam(t) }, "Delete"))
        : h("span", { class: "hint" }, "named by keys only") },
  ], list.data);
}

async function createTeam(ev) {
  ev.preventDefault();
  const form = ev.target;
  const body = withoutNulls(limitFields(form));
  body.name = String(new FormData(form).get("name")).trim();
  if (body.budget_usd === undefined) delete body.budget_period;
  await attempt(async () => {
    await api("POST", "/admin/teams", body);
    form.reset();
    say(`Team ${body.name} created.`);
    await loadTeams();
  });
}

async function deleteTeam(t) {
  if (!confirm(`Delete team ${t.name}? Its keys keep working and keep its name.`)) return;
  await attempt(async () => {
    await api("DELETE", `/admin/teams/${encodeURIComponent(t.name)}`);
    say(`Team ${t.name} deleted.`);
    await loadTeams();
  });
}

// ---- spend ------------------------------------------------------------------------------

function isoDay(d) { return d.toISOString().slice(0, 10); }

async function loadSpend(ev) {
  if (ev) ev.preventDefault();
  const f = new FormData($("spend-form"));
  const by = String(f.get("group_by"));
  const q = new URLSearchParams({ group_by: by });
  if (f.get("from")) q.set("from", String(f.get("from")));
  if (f.get("to")) q.set("to", String(f.get("to")));
  const r = await api("GET", `/admin/spend?${q}`);
  spendRows = r.data;
  const total = spendRows.reduce((a, x) => a + x.cost_micros, 0) / 1e6;
  const reqs = spendRows.reduce((a, x) => a + x.requests, 0);
  $("spend-total").textContent = `${usd(total)} over ${reqs} requests, by ${by}.`;
  SluiceChart.bars($("spend-chart"), spendRows.map((x) => x.group || "(none)"), spendRows.map((x) => x.cost_micros / 1e6), usd);
  table($("spend-table"), [
    { title: by, value: (x) => x.group || "(none)" },
    { title: "Requests", num: true, value: (x) => num(x.requests) },
    { title: "Input tokens", num: true, value: (x) => num(x.input_tokens) },
    { title: "Output tokens", num: true, value: (x) => num(x.output_tokens) },
    { title: "Cached", num: true, value: (x) => num(x.cached_tokens) },
    { title: "Reasoning", num: true, value: (x) => num(x.reasoning_tokens) },
    { title: "Cost", num: true, value: (x) => "$" + x.cost_usd },
  ], spendRows);
}

function csvField(v) {
  const s = String(v ?? "");
  // Quote, and keep spreadsheet formulas from running.
  const safe = /^[=+\-@\t\r]/.test(s) ? "'" + s : s;
  return /[",\n\r']/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}

function exportCsv() {
  const cols = ["group", "requests", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "cost_usd"];
  const lines = [cols.join(",")].concat(spendRows.map((r) => cols.map((c) => csvField(r[c])).join(",")));
  const blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv" });
  const a = h("a", { href: URL.createObjectURL(blob), download: `sluice-spend-${new FormData($("spend-form")).get("group_by")}.csv` });
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

// ---- live traffic -----------------------------------------------------------------------

async function loadLive() {
  const r = await api("GET", "/admin/live");
  $("live-window").textContent = Number(r.window_s).toFixed(0);
  const card = (label, value, id) => h("div", { class: "card", id }, h("div", { class: "value" }, value), h("div", { class: "label" }, label));
  $("live-cards").replaceChildren(
    card("requests/s", num(r.requests_per_s), "live-rps"),
    card("errors/s", num(r.errors_per_s), "live-eps"),
    card("tokens/s", num(r.tokens_per_s), "live-tps"),
    card("in flight", num(r.in_flight), "live-inflight"),
    card("requests since start", num(r.requests_total), "live-requests-total"),
    card("tokens since start", num(r.tokens_total), "live-tokens-total"),
  );
  liveHistory.push({ rps: r.requests_per_s, eps: r.errors_per_s });
  if (liveHistory.length > 100) liveHistory.shift();
  SluiceChart.lines($("live-chart"), [
    { name: "requests/s", color: "#1f6feb", values: liveHistory.map((x) => x.rps) },
    { name: "errors/s", color: "#c62828", values: liveHistory.map((x) => x.eps) },
  ], num);
  table($("live-table"), [
    { title: "Model", value: (m) => m.model },
    { title: "req/s", num: true, value: (m) => num(m.requests_per_s) },
    { title: "4xx/s", num: true, value: (m) => num(m.client_errors_per_s) },
    { title: "5xx/s", num: true, value: (m) => num(m.server_errors_per_s) },
    { title: "in tok/s", num: true, value: (m) => num(m.input_tokens_per_s) },
    { title: "out tok/s", num: true, value: (m) => num(m.output_tokens_per_s) },
    { title: "p50", num: true, value: (m) => ms(m.latency_p50_ms) },
    { title: "p99", num: true, value: (m) => ms(m.latency_p99_ms) },
    { title: "TTFT p50", num: true, value: (m) => ms(m.ttft_p50_ms) },
    { title: "TTFT p99", num: true, value: (m) => ms(m.ttft_p99_ms) },
    { title: "requests", num: true, value: (m) => num(m.requests_total) },
    { title: "errors", num: true, value: (m) => num(m.errors_total) },
  ], r.models);
}

// ---- health and audit -------------------------------------------------------------------

async function loadHealth() {
  const r = await api("GET", "/admin/health");
  table($("health-table"), [
    { title: "Model", value: (d) => d.model },
    { title: "Deployment", value: (d) => d.deployment },
    { title: "Provider", value: (d) => d.provider },
    { title: "Breaker", value: (d) => d.breaker.replace("_", "-"), cls: (d) => "state-" + d.breaker },
    { title: "Probes again in", num: true, value: (d) => (d.reopens_in_s == null ? "–" : d.reopens_in_s.toFixed(1) + " s") },
    { title: "Trips", num: true, value: (d) => num(d.trips) },
    { title: "Health check", value: (d) => d.health.replace("_", " "), cls: (d) => "state-" + d.health },
  ], r.deployments);
  table($("providers-table"), [
    { title: "Provider", value: (p) => p.name },
    { title: "Health check", value: (p) => p.health.replace("_", " "), cls: (p) => "state-" + p.health },
  ], r.providers);
}

async function loadAudit() {
  const r = await api("GET", "/admin/audit?limit=200");
  table($("audit-table"), [
    { title: "When (UTC)", value: (a) => new Date(a.ts_ms).toISOString().replace("T", " ").slice(0, 19) },
    { title: "Who", value: (a) => a.actor },
    { title: "Via", value: (a) => a.via },
    { title: "What", value: (a) => a.action },
    { title: "On", value: (a) => a.target },
    { title: "Status", num: true, value: (a) => a.status },
  ], r.data);
}

// ---- response cache ----------------------------------------------------------------------

function bytes(v) {
  if (v === null || v === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let n = Number(v);
  let u = 0;
  while (n >= 1024 && u < units.length - 1) { n /= 1024; u += 1; }
  return (u === 0 ? String(n) : n.toFixed(1)) + " " + units[u];
}

function cacheCards(s) {
  const card = (id, label, value) => h("div", { class: "card", id }, h("div", { class: "value" }, value), h("div", { class: "label" }, label));
  $("cache-cards").replaceChildren(
    card("cache-entries", "Entries", num(s.entries)),
    card("cache-bytes", "Size", `${bytes(s.bytes)} of ${bytes(s.max_bytes)}`),
    card("cache-inserts", "Kept", num(s.inserts)),
    card("cache-evictions", "Evicted", num(s.evictions)),
    card("cache-too-large", "Too large to keep", num(s.too_large)),
    card("cache-clears", "Cleared", num(s.clears)),
    card("cache-vectors", "Semantic vectors", `${num(s.vectors)} (${bytes(s.vector_bytes)})`),
  );
}

async function loadCache() {
  const r = await api("GET", "/admin/cache");
  cacheCards(r.store);
  table($("cache-groups"), [
    { title: "Model", value: (g) => g.model },
    { title: "Exact", value: (g) => (g.exact ? "yes" : "no") },
    { title: "Semantic", value: (g) => (g.semantic ? `yes (≥ ${g.threshold})` : "no") },
    { title: "Scope", value: (g) => g.scope },
    { title: "TTL", num: true, value: (g) => num(g.ttl_s) + " s" },
    { title: "Coalesce", value: (g) => (g.coalesce ? "yes" : "no") },
  ], r.groups);
  const select = $("cache-clear").elements.model;
  const chosen = select.value;
  select.replaceChildren(h("option", { value: "" }, "all models"), ...r.groups.map((g) => h("option", { value: g.model }, g.model)));
  select.value = r.groups.some((g) => g.model === chosen) ? chosen : "";
}

async function clearCache(ev) {
  ev.preventDefault();
  const f = ev.target.elements;
  const model = f.model.value;
  const scope = f.scope.value.trim();
  const what = [model ? `model ${model}` : "every model", scope ? `scope ${scope}` : "every scope"].join(", ");
  if (!confirm(`Clear the cached answers of ${what}? Requests will go to the upstreams until the cache fills again.`)) return;
  const q = new URLSearchParams();
  if (model) q.set("model", model);
  if (scope) q.set("scope", scope);
  const qs = q.toString();
  const r = await api("DELETE", "/admin/cache" + (qs ? "?" + qs : ""));
  cacheCards(r.store);
  say(`Cleared the cached answers of ${what}.`);
}

// ---- navigation and sign-in -------------------------------------------------------------

const PAGES = { keys: loadKeys, teams: loadTeams, spend: loadSpend, live: loadLive, health: loadHealth, cache: loadCache, audit: loadAudit };

async function show() {
  const page = (location.hash || "#keys").slice(1);
  const load = PAGES[page] ? page : "keys";
  for (const p of Object.keys(PAGES)) $("page-" + p).hidden = p !== load;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === load);
  clearInterval(liveTimer);
  liveTimer = null;
  say("");
  if (load === "live") liveTimer = setInterval(() => attempt(loadLive), 3000);
  await attempt(PAGES[load]);
}

function signOut(text) {
  sessionStorage.removeItem(TOKEN);
  clearInterval(liveTimer);
  $("nav").hidden = true;
  $("who").hidden = true;
  for (const p of Object.keys(PAGES)) $("page-" + p).hidden = true;
  $("login").hidden = false;
  say(text || "", Boolean(text));
}

async function signedIn() {
  const me = await api("GET", "/admin/whoami");
  $("token-id").textContent = "signed in as " + me.token_id;
  $("login").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
  say("");
  await show();
}

function start() {
  const today = new Date();
  const from = new Date(today.getTime() - 29 * 86400e3);
  const tomorrow = new Date(today.getTime() + 86400e3);
  const sf = $("spend-form");
  sf.elements.from.value = isoDay(from);
  sf.elements.to.value = isoDay(tomorrow);
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN, $("token").value.trim());
    $("token").value = "";
    await attempt(signedIn);
  });
  $("logout").addEventListener("click", () => signOut());
  $("create-key").addEventListener("submit", createKey);
  $("create-team").addEventListener("submit", createTeam);
  $("edit-form").addEventListener("submit", saveEdit);
  $("edit-cancel").addEventListener("click", () => $("edit-limits").close());
  $("spend-form").addEventListener("submit", (ev) => attempt(() => loadSpend(ev)));
  $("spend-csv").addEventListener("click", exportCsv);
  $("cache-clear").addEventListener("submit", (ev) => attempt(() => clearCache(ev)));
  $("copy-key").addEventListener("click", async () => {
    const input = $("new-key-value");
    try {
      await navigator.clipboard.writeText(input.value);
    } catch (_) {
      input.select();
      document.execCommand("copy");
    }
    $("copy-key").textContent = "Copied";
  });
  $("dismiss-key").addEventListener("click", () => {
    $("new-key-value").value = "";
    $("new-key").hidden = true;
  });
  window.addEventListener("hashchange", () => { if (sessionStorage.getItem(TOKEN)) show(); });
  if (sessionStorage.getItem(TOKEN)) attempt(signedIn);
  else signOut();
}

document.addEventListener("DOMContentLoaded", start);
