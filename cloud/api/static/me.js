// The patient's own page (/ui/me): my readings in plain words, my devices, who sees my data (grant with a care
// team's invite code, a 30-day share, stop sharing in one step), who looked, my data to take with me, and a
// request to close my account. Phone first. Every sentence, value and unit comes from the API in words
// (GET /v1/patients/{id}/overview speaks the same categories and windows as the alert rules); the page adds
// no number of its own without its unit, and never shows a UCUM code. Charts are the workspace's (charts.js).

import { ApiError, api, auth, chooseAuth, takeTokenFromUrl, token, usePastedToken, whenUnauthorised } from "./api.js";
import { drawChart } from "./charts.js";
import { $, el, formatDate, formatNumber, formatTime, plural, status, timeElement } from "./format.js";

const DAY_MS = 86_400_000;
const LOG_PAGE = 20;
const SHARE_DAYS = 30;
const STATUS_WORDS = { ok: "On target", attention: "Needs attention", urgent: "Urgent: talk to your care team",
  unknown: "Not enough readings yet" };

const state = { patientId: null, zone: undefined, overview: null, days: 14, logBefore: null };
const redraws = [];

function setView(view) {
  document.body.dataset.view = view;
  $("sign-in").hidden = view !== "sign-in";
  $("me").hidden = !["me", "loading-more"].includes(view);
  $("sign-out").hidden = view === "sign-in";
}

function showSignIn(message = "") {
  setView("sign-in");
  status("");
  $("sign-in-oidc").hidden = !auth.configured;
  $("sign-in-paste").hidden = auth.configured;
  $("sign-in-error").textContent = message;
  $("sign-in-error").hidden = !message;
}

const pid = () => encodeURIComponent(state.patientId);

/** Ask before a change that cannot be undone from here; resolves true for "yes". Esc or Cancel: false. */
function confirmStep(title, text, yes) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-yes").textContent = yes;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
  });
}

function when(iso) {
  return iso ? timeElement(iso, state.zone) : el("span", { class: "none" }, "never");
}

function day(iso) {
  return el("time", { datetime: new Date(iso).toISOString() }, formatDate(new Date(iso), state.zone));
}

// --- my readings -----------------------------------------------------------------------------------------

function measureCard(measure) {
  const latest = measure.latest
    ? el("p", { class: "latest" }, el("span", { class: "value" }, measure.latest.text), " ",
      el("span", { class: "when" }, "on ", when(measure.latest.at)))
    : el("p", { class: "latest none" }, "No reading yet");
  const figures = chartGroups(measure).map((group, index) =>
    el("figure", { class: "chart", id: `chart-${measure.metric_group}-${index}` }, el("figcaption", {}, group.title)));
  const card = el("article", { class: `card measure status-${measure.status}`, id: `measure-${measure.metric_group}`,
    "aria-labelledby": `measure-${measure.metric_group}-title` },
  el("h3", { id: `measure-${measure.metric_group}-title` }, measure.title),
  latest,
  el("p", { class: "sentence" }, measure.sentence),
  el("p", { class: `badge status-${measure.status}` }, STATUS_WORDS[measure.status] ?? STATUS_WORDS.unknown),
  ...figures);
  return card;
}

/** The charts of a measure, one per unit (systolic and diastolic share one, in mmHg). */
function chartGroups(measure) {
  const groups = new Map();
  for (const chart of measure.charts ?? []) {
    const group = groups.get(chart.unit_text) ?? { title: measure.title, unit: chart.unit_text, metrics: [] };
    group.metrics.push(chart);
    groups.set(chart.unit_text, group);
  }
  // A chart of its own for a metric in another unit (the pulse a cuff measures) is titled by that metric.
  const all = [...groups.values()];
  for (const group of all.slice(1)) if (group.metrics.length === 1) group.title = group.metrics[0].label;
  return all;
}

async function drawMeasureCharts(measure) {
  const until = new Date();
  const since = new Date(until.getTime() - state.days * DAY_MS);
  const query = `bucket=day&since=${encodeURIComponent(since.toISOString())}&until=${encodeURIComponent(until.toISOString())}`;
  await Promise.all(chartGroups(measure).map(async (group, index) => {
    const trends = await Promise.all(group.metrics.map((chart) =>
      api(`/v1/patients/${pid()}/trends/${encodeURIComponent(chart.metric)}?${query}`)));
    const spec = {
      label: `${group.title}, daily average`, unit: group.unit, since, until, zone: state.zone, band: null, minSpan: 0,
      note: `Last ${state.days} days. Each point is one day's average; the line through it spans that day's lowest to highest.`,
      series: group.metrics.map((chart, i) => ({ name: chart.label, points: trends[i].buckets.map((b) => ({
        time: new Date(b.start), value: b.mean, low: b.min, high: b.max, count: b.count })) })),
      formatTime: (date) => formatDate(date, state.zone),
      formatValue: (value) => formatNumber(value, 1),
    };
    const figure = $(`chart-${measure.metric_group}-${index}`);
    const draw = () => drawChart(figure, spec);
    draw();
    redraws.push(draw);
  }));
}

async function showReadings(overview) {
  redraws.length = 0;
  const list = $("measures");
  list.replaceChildren(...overview.measures.map(measureCard));
  $("measures-empty").hidden = overview.measures.length > 0;
  await Promise.all(overview.measures.map(drawMeasureCharts));
}

// --- my devices ------------------------------------------------------------------------------------------

function showDevices(overview) {
  $("gateway-list").replaceChildren(...overview.gateways.map((g) => el("li", { class: `gateway gateway-${g.state}` },
    el("strong", {}, "Home hub: "), g.text, g.since ? el("span", { class: "when" }, " since ", when(g.since)) : null)));
  $("device-list").replaceChildren(...overview.devices.map((d) => el("li", { class: "card device" },
    el("h3", {}, d.name || d.type_text),
    d.name && d.name !== d.type_text ? el("p", {}, d.type_text) : null,
    el("p", {}, d.battery_pct === null || d.battery_pct === undefined ? "Battery: not reported"
      : `Battery: ${formatNumber(d.battery_pct, 0)} %`),
    el("p", {}, "Last reading: ", when(d.last_reading_at)))));
  $("devices-empty").hidden = overview.devices.length + overview.gateways.length > 0;
}

// --- who sees my data ------------------------------------------------------------------------------------

function members(grant) {
  if (!grant.members?.length) return null;
  return el("p", { class: "members" }, "People in this team: ",
    grant.members.map((m) => `${m.name || m.subject} (${m.role.replaceAll("_", " ")})`).join(", "), ".");
}

function grantItem(grant) {
  const until = grant.expires_at ? el("span", {}, " until ", day(grant.expires_at), ", then it stops by itself")
    : el("span", {}, ", until you stop it");
  const stop = el("button", { type: "button", class: "danger no-print", dataset: { consentId: grant.consent_id } },
    `Stop sharing with ${grant.care_team_name}`);
  stop.addEventListener("click", () => revoke(grant, stop));
  return el("li", { class: "card grant", dataset: { consentId: grant.consent_id, careTeam: grant.care_team_id } },
    el("h3", {}, grant.care_team_name),
    el("p", {}, `Sees ${grant.scopes_text}.`),
    el("p", {}, "Since ", day(grant.granted_at), until, "."),
    members(grant), stop);
}

function pastItem(grant) {
  const ended = grant.revoked_at ? ["stopped by you on ", day(grant.revoked_at)]
    : ["ended by itself on ", day(grant.expires_at)];
  return el("li", { dataset: { consentId: grant.consent_id } }, `${grant.care_team_name}: saw ${grant.scopes_text}; `,
    ...ended, ".");
}

async function showAccess() {
  const answer = await api(`/v1/patients/${pid()}/access`);
  $("grant-list").replaceChildren(...answer.grants.map(grantItem));
  $("grants-empty").hidden = answer.grants.length > 0;
  $("past-list").replaceChildren(...(answer.past ?? []).map(pastItem));
  $("past-grants").hidden = !(answer.past ?? []).length;
}

async function revoke(grant, button) {
  const yes = await confirmStep(`Stop sharing with ${grant.care_team_name}?`,
    `${grant.care_team_name} will no longer see ${grant.scopes_text}, from their next look on. You can share again with a new invite code.`,
    "Stop sharing");
  if (!yes) {
    button.focus();
    return;
  }
  try {
    await api(`/v1/patients/${pid()}/consents/${encodeURIComponent(grant.consent_id)}`, { method: "DELETE" });
    status(`You stopped sharing with ${grant.care_team_name}.`);
    await Promise.all([showAccess(), showLog(true)]);
    $("access-title").focus();
  } catch (error) {
    if (error.status !== 401) status(`Could not stop sharing: ${error.message}`, true);
  }
}

function inviteError(message) {
  const error = $("invite-error");
  error.textContent = message;
  error.hidden = !message;
  $("invite-code").toggleAttribute("aria-invalid", Boolean(message));
  if (message) $("invite-code").setAttribute("aria-invalid", "true");
}

async function share(event) {
  event.preventDefault();
  const code = $("invite-code").value.toUpperCase().replace(/[^0-9A-Z]/g, "");
  if (code.length !== 8) {
    inviteError("An invite code has 8 letters and digits, like ABCD-2345.");
    $("invite-code").focus();
    return;
  }
  const body = { invite_code: `${code.slice(0, 4)}-${code.slice(4)}` };
  const days = Number(new FormData($("invite-form")).get("share-for"));
  if (days) body.expires_at = new Date(Date.now() + days * DAY_MS).toISOString();
  const button = $("invite-form").querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const consent = await api(`/v1/patients/${pid()}/consents`, { method: "POST", body });
    inviteError("");
    $("invite-code").value = "";
    await showAccess();
    const name = $("grant-list").querySelector(`[data-consent-id="${CSS.escape(String(consent.id))}"] h3`)?.textContent;
    status(`You now share your data${name ? ` with ${name}` : ""}${days ? ` for ${plural(days, "day")}` : ""}.`);
  } catch (error) {
    if (error.status === 401) return;
    inviteError(error.status === 429 ? "Too many wrong codes. Wait a while, then try again."
      : error.status === 422 || error.status === 404 || error.status === 410
        ? `That code did not work: ${error.message}` : `Could not share: ${error.message}`);
    $("invite-code").focus();
  } finally {
    button.disabled = false;
  }
}

// --- who looked ------------------------------------------------------------------------------------------

function logItem(entry) {
  const what = entry.outcome_text === "looked" ? `looked at ${entry.what}` : `asked for ${entry.what} and ${entry.outcome_text}`;
  return el("li", { class: entry.outcome_text === "looked" ? "looked" : "refused" },
    el("span", { class: "when" }, when(entry.at)), el("span", {}, `${entry.who} ${what}.`));
}

async function showLog(fromStart = false) {
  if (fromStart) state.logBefore = null;
  const params = new URLSearchParams({ limit: String(LOG_PAGE) });
  if (state.logBefore) params.set("before", String(state.logBefore));
  const answer = await api(`/v1/patients/${pid()}/access-log?${params}`);
  const items = answer.entries.map(logItem);
  if (fromStart || !state.logBefore) $("log-list").replaceChildren(...items);
  else $("log-list").append(...items);
  state.logBefore = answer.next_before ?? null;
  $("log-more").hidden = !state.logBefore;
  $("log-empty").hidden = $("log-list").children.length > 0;
  return items;
}

async function showOlder() {
  const button = $("log-more");
  button.disabled = true;
  try {
    const items = await showLog(false);
    // Keyboard and screen-reader users land on the first entry just added, not back at the top.
    if (items[0]) {
      items[0].tabIndex = -1;
      items[0].focus();
    }
  } catch (error) {
    if (error.status !== 401) status(`Could not load older entries: ${error.message}`, true);
  } finally {
    button.disabled = false;
  }
}

// --- my data ---------------------------------------------------------------------------------------------

async function download(path, accept, filename, what) {
  $("download-status").textContent = `Preparing ${what}…`;
  try {
    const response = await fetch(path, { headers: { Accept: accept, Authorization: `Bearer ${token()}` },
      credentials: "omit" });
    if (!response.ok) throw new ApiError(response.status, response.statusText);
    const url = URL.createObjectURL(await response.blob());
    const link = el("a", { href: url, download: filename, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    $("download-status").textContent = `${what[0].toUpperCase()}${what.slice(1)} downloaded as ${filename}.`;
  } catch (error) {
    $("download-status").textContent = `Could not download ${what}: ${error.message}`;
  }
}

// --- close my account ------------------------------------------------------------------------------------

function showClosure(request) {
  // Said before anything is asked as well as after: what the care team keeps, and why, is part of the choice.
  const pending = request?.status === "pending";
  const box = $("closure-pending");
  box.hidden = !request;
  $("closure-form").hidden = pending;
  if (!request) return;
  box.replaceChildren(
    pending ? el("p", { class: "notice" }, "You asked to close your account on ", day(request.requested_at),
      ". Your care team is taking care of it.") : el("p", {}, "If you ask to close your account:"),
    el("h3", {}, pending ? "What your care team keeps, and why" : "What your care team would keep, and why"),
    el("ul", { class: "kept" }, ...(request.kept ?? []).map((text) => el("li", {}, text))),
    el("h3", {}, pending ? "What is removed" : "What would be removed"),
    el("ul", { class: "removed" }, ...(request.removed ?? []).map((text) => el("li", {}, text))));
}

async function loadClosure() {
  showClosure(await api(`/v1/patients/${pid()}/closure-request`));
}

async function askClosure(event) {
  event.preventDefault();
  const yes = await confirmStep("Ask to close your account?",
    "Your care team will be told. They keep what they must by law, and remove the rest.", "Ask to close");
  if (!yes) return;
  const reason = $("closure-reason").value.trim();
  try {
    showClosure(await api(`/v1/patients/${pid()}/closure-request`, { method: "POST", body: reason ? { reason } : {} }));
    $("closure-title").focus();
  } catch (error) {
    if (error.status !== 401) status(`Could not send the request: ${error.message}`, true);
  }
}

// --- the page --------------------------------------------------------------------------------------------

async function load() {
  setView("loading");
  status("Loading your record…");
  try {
    const me = await api("/v1/me");
    if (me.role !== "patient" || !me.patient_id) {
      setView("error");
      status("This page is for patients. Care teams use the workspace at /ui.", true);
      return;
    }
    state.patientId = me.patient_id;
    state.zone = me.timezone || undefined;
    const overview = await api(`/v1/patients/${pid()}/overview`);
    state.overview = overview;
    state.zone = overview.timezone || state.zone;
    const name = overview.display_name || me.display_name || me.name;
    $("me-title").textContent = name ? `${name}: your health record` : "Your health record";
    $("me-intro").textContent = `Times are in your time zone (${state.zone ?? "this device's"}).`
      + ` Page shown ${formatTime(new Date(), state.zone)}.`;
    setView("me");
    showDevices(overview);
    await Promise.all([showReadings(overview), showAccess(), showLog(true), loadClosure()]);
    status("");
    document.body.dataset.view = "me";
  } catch (error) {
    if (error.status === 401) return; // back at sign-in with the reason
    setView("error");
    status(`Could not load your record: ${error.message}`, true);
  }
}

/** ``#first-time=TOKEN``: a single-use link from the care team, for a patient without an account yet. Swapped
 * once for a short patient token (kept in this tab only, like a pasted one) and at once taken out of the address
 * bar and the history. Answers the reason when the link was used or has expired. */
async function redeemFirstTimeLink() {
  const link = new URLSearchParams(location.hash.slice(1)).get("first-time");
  if (!link) return "";
  history.replaceState(null, "", `${location.pathname}${location.search}`);
  try {
    const response = await fetch(`/v1/first-time-links/${encodeURIComponent(link)}/redeem`, {
      method: "POST", headers: { Accept: "application/json" }, credentials: "omit" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) return body.detail || `the link did not work (${response.status})`;
    usePastedToken(body.access_token);
    return "";
  } catch (error) {
    return `the link did not work: ${error.message}`;
  }
}

async function start() {
  whenUnauthorised((message) => {
    if (!auth.configured) auth.signOut();
    showSignIn(message);
  });
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const given = $("token-input").value.trim();
    if (!given) return;
    $("token-input").value = "";
    usePastedToken(given);
  });
  $("sign-in-button").addEventListener("click", () => auth.signIn());
  $("sign-out").addEventListener("click", () => {
    auth.signOut();
    showSignIn();
  });
  $("invite-form").addEventListener("submit", share);
  $("invite-code").addEventListener("input", () => inviteError(""));
  $("log-more").addEventListener("click", showOlder);
  $("closure-form").addEventListener("submit", askClosure);
  $("print-summary").addEventListener("click", () => window.print());
  $("download-fhir").addEventListener("click", () => download(`/fhir/Patient/${pid()}/$everything`,
    "application/fhir+json", `${state.patientId}-record.json`, "your record"));
  $("download-csv").addEventListener("click", () => download(`/v1/patients/${pid()}/readings?format=csv&limit=100000`,
    "text/csv", `${state.patientId}-readings.csv`, "your readings"));
  for (const radio of document.querySelectorAll("input[name=period]")) {
    radio.addEventListener("change", () => {
      state.days = Number(radio.value);
      if (state.overview) showReadings(state.overview).catch((error) => status(`Charts: ${error.message}`, true));
    });
  }
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => redraws.forEach((draw) => draw()), 150);
  });
  matchMedia("print").addEventListener("change", () => redraws.forEach((draw) => draw()));

  await chooseAuth();
  auth.onChange(() => {
    if (!token()) showSignIn();
    else if (document.body.dataset.view === "sign-in") load();
  });
  const linkProblem = auth.configured ? "" : await redeemFirstTimeLink();
  takeTokenFromUrl();
  if (token() && !linkProblem) await load();
  else showSignIn(linkProblem ? `Your sign-in link: ${linkProblem}` : window.rpmAuth?.state().error ?? "");
}

start();
