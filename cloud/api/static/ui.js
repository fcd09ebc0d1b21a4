// The clinician page: triage panel and one patient's trends and open alerts, over the /v1 API.
// The bearer token comes from the sign-in form or once from the URL (#token=...), lives in sessionStorage
// (this tab only) and is removed from the address bar at once. Data is put in the page with textContent,
// never as HTML.

import { drawChart } from "./charts.js";

const TOKEN_KEY = "rpm.token";
const SEVERITY_ORDER = ["critical", "warning", "info"];
const SEVERITY_LABEL = { critical: "Critical", warning: "Warning", info: "Info" };
// UCUM codes as the API stores them, written the way a clinician reads them.
const UNIT_LABEL = { "mm[Hg]": "mmHg", "/min": "/min", "[lb_av]": "lb", "mmol/L": "mmol/L", "mg/dL": "mg/dL",
  "%": "%", "Cel": "°C" };
const GLUCOSE_TARGET_MGDL = [70, 180]; // International Consensus on Time in Range 2019
const SPO2_TARGET = [94, 98]; // BTS guideline for oxygen use in adults 2017 (COPD: 88-92, set per patient)
const TEMPERATURE_NORMAL_CEL = [36.1, 38.0]; // NEWS2: 36.1-38.0 scores 0; the fever rule starts at 38.0
const MGDL_PER_MMOLL = 18.0156;
const READINGS_PAGE = 1000;
const REQUEST_TIMEOUT_MS = 20_000;

const $ = (id) => document.getElementById(id);
let catalogue = {};
let currentPatient = null;

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

// --- token -------------------------------------------------------------------------------------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function takeTokenFromUrl() {
  const params = new URLSearchParams(location.hash.slice(1));
  const given = params.get("token");
  if (!given) return;
  sessionStorage.setItem(TOKEN_KEY, given.trim());
  // Keep the token out of the history and of anything that copies the address.
  history.replaceState(null, "", `${location.pathname}${location.search}#/`);
}

function signOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  showSignIn(message);
}

// --- API ---------------------------------------------------------------------------------------------

// A page needs few requests in flight; more would only queue for the server's database connections.
const MAX_IN_FLIGHT = 3;
let inFlight = 0;
const waiting = [];

async function api(path, options = {}) {
  // A finished request hands its slot straight to the next waiting one, so the count never overshoots.
  if (inFlight >= MAX_IN_FLIGHT) await new Promise((resolve) => waiting.push(resolve));
  else inFlight += 1;
  try {
    return await request(path, options);
  } finally {
    const next = waiting.shift();
    if (next) next();
    else inFlight -= 1;
  }
}

async function request(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json", Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const problem = await response.json();
      detail = problem.detail || problem.title || detail;
    } catch { /* not problem+json: keep the status text */ }
    if (response.status === 401) signOut(`Signed out: ${detail}`);
    throw new ApiError(response.status, detail);
  }
  return response.json();
}

// --- formatting --------------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

const pad = (n) => String(n).padStart(2, "0");

/** The browser's local time, written the same way everywhere on the page: 2026-11-22 21:50. */
function formatTime(date) {
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function timeElement(iso) {
  const date = new Date(iso);
  return el("time", { datetime: date.toISOString(), class: "when" }, formatTime(date));
}

function unitOf(metric) {
  const code = catalogue[metric]?.unit ?? "";
  return UNIT_LABEL[code] ?? code;
}

function formatNumber(value) {
  return Number.isInteger(value) ? String(value) : value.toFixed(1).replace(/\.0$/, "");
}

function humanise(slug) {
  const text = String(slug).replaceAll("_", " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function status(message, isError = false) {
  const node = $("status");
  node.textContent = message;
  node.classList.toggle("error", isError);
}

// --- views -------------------------------------------------------------------------------------------

function show(view) {
  for (const id of ["sign-in", "panel", "patient"]) $(id).hidden = id !== view;
  $("sign-out").hidden = view === "sign-in";
}

function showSignIn(message = "") {
  show("sign-in");
  status("");
  const error = $("sign-in-error");
  error.textContent = message;
  error.hidden = !message;
}

function alertBadges(counts) {
  if (counts === null || counts === undefined) {
    return el("span", { class: "none", title: "no consent to see this patient's alerts" }, "not shared");
  }
  const badges = SEVERITY_ORDER.filter((s) => counts[s] > 0)
    .map((s) => el("span", { class: `badge severity-${s}`, dataset: { severity: s } }, `${SEVERITY_LABEL[s]}: ${counts[s]}`));
  return badges.length ? el("span", {}, ...badges) : el("span", { class: "none" }, "none");
}

function vitalCell(latest, metrics, separator = "/") {
  const present = metrics.filter((m) => latest?.[m]);
  if (!present.length) return el("td", { class: "none" }, "—");
  const value = present.map((m) => formatNumber(latest[m].value)).join(separator);
  return el("td", {}, el("span", { class: "value" }, `${value} ${unitOf(present[0])}`),
    timeElement(latest[present[0]].measured_at));
}

function adherenceCell(adherence) {
  if (!adherence) return el("td", { class: "none" }, "not shared");
  const met = adherence.meets_16_day_rule;
  return el("td", {}, el("span", { class: "value" }, `${adherence.days_with_readings} of 30 days`),
    el("small", { class: met ? "adherence-met" : "adherence-short" }, met ? "meets the 16-day rule" : "below the 16-day rule"));
}

async function showPanel() {
  show("panel");
  currentPatient = null;
  status("Loading patients…");
  const { patients } = await api("/v1/patients");
  const body = $("panel-table").querySelector("tbody");
  body.replaceChildren(...patients.map((p) => {
    const link = el("a", { href: `#/patients/${encodeURIComponent(p.patient_id)}` }, p.display_name || p.patient_id);
    const heart = p.latest?.heart_rate ? ["heart_rate"] : ["pulse_rate"];
    const row = el("tr", { dataset: { patientId: p.patient_id } },
      el("th", { scope: "row" }, link, el("small", {}, p.patient_id)),
      el("td", {}, alertBadges(p.open_alerts)),
      vitalCell(p.latest, ["systolic", "diastolic"]),
      vitalCell(p.latest, ["glucose"]),
      vitalCell(p.latest, ["body_weight"]),
      vitalCell(p.latest, heart),
      adherenceCell(p.adherence));
    return row;
  }));
  $("panel-table").hidden = patients.length === 0;
  $("panel-empty").hidden = patients.length > 0;
  status(`${patients.length} patient${patients.length === 1 ? "" : "s"}.`);
}

function fact(term, value) {
  return el("div", {}, el("dt", {}, term), el("dd", {}, value));
}

async function showPatient(patientId) {
  show("patient");
  status("Loading patient…");
  const detail = await api(`/v1/patients/${encodeURIComponent(patientId)}`);
  currentPatient = detail;
  $("patient-title").textContent = detail.display_name || detail.id;
  const adherence = detail.adherence;
  $("patient-facts").replaceChildren(
    fact("Patient id", detail.id),
    fact("Sex", detail.sex ? humanise(detail.sex) : "—"),
    fact("Born", detail.birth_date ?? "—"),
    fact("Adherence", adherence ? `${adherence.days_with_readings} of ${adherence.period_days} days` +
      (adherence.meets_16_day_rule ? " (meets the 16-day rule)" : ` (${adherence.days_short} short of 16)`) : "—"),
    ...Object.values(detail.categories ?? {}).filter((c) => c.category).map((c) =>
      fact("BP category", `${humanise(c.category)} (${c.source})`)),
  );
  await Promise.all([renderAlerts(detail), renderCharts(detail)]);
  status("");
}

// --- alerts ------------------------------------------------------------------------------------------

async function renderAlerts(detail) {
  const list = $("alert-list");
  if (!detail.scopes.includes("alerts")) {
    list.replaceChildren();
    $("alerts-empty").textContent = "This patient has not shared alerts with your care team.";
    $("alerts-empty").hidden = false;
    return;
  }
  const query = new URLSearchParams({ patient_id: detail.id, limit: "100" });
  query.append("status", "open");
  query.append("status", "acknowledged");
  const { alerts } = await api(`/v1/alerts?${query}`);
  alerts.sort((a, b) => SEVERITY_ORDER.indexOf(a.severity) - SEVERITY_ORDER.indexOf(b.severity) || b.id - a.id);
  list.replaceChildren(...alerts.map(alertItem));
  $("alerts-empty").textContent = "No open alerts.";
  $("alerts-empty").hidden = alerts.length > 0;
}

function alertState(alert) {
  if (alert.status === "acknowledged") {
    return el("p", { class: "alert-state" }, `Acknowledged by ${alert.acknowledged_by} `,
      timeElement(alert.acknowledged_at));
  }
  return el("p", { class: "alert-state" }, "Open, not yet acknowledged");
}

function alertItem(alert) {
  const messageId = `alert-${alert.id}-message`;
  const item = el("li", { class: `alert-${alert.severity}`, dataset: { alertId: alert.id, status: alert.status } });
  const text = el("div", {},
    el("span", { class: `badge severity-${alert.severity}` }, SEVERITY_LABEL[alert.severity] ?? alert.severity),
    el("strong", {}, humanise(alert.rule_id)),
    el("p", { class: "message", id: messageId }, alert.message),
    el("span", { class: "when" }, "Opened ", timeElement(alert.opened_at)),
    alertState(alert));
  item.append(text);
  if (alert.status === "open") {
    const button = el("button", { type: "button", class: "acknowledge" }, "Acknowledge");
    button.setAttribute("aria-describedby", messageId);
    button.addEventListener("click", () => acknowledge(alert, item, button));
    item.append(button);
  }
  return item;
}

async function acknowledge(alert, item, button) {
  button.disabled = true;
  try {
    const updated = await api(`/v1/alerts/${alert.id}/acknowledge`, { method: "POST", body: {} });
    const replacement = alertItem(updated);
    replacement.tabIndex = -1;
    item.replaceWith(replacement);
    replacement.focus(); // the button is gone: keep the keyboard user on the alert they acted on
    status(`Alert acknowledged: ${humanise(updated.rule_id)}.`);
  } catch (error) {
    button.disabled = false;
    status(`Could not acknowledge the alert: ${error.message}`, true);
  }
}

// --- charts ------------------------------------------------------------------------------------------

function period() {
  const days = Number($("period").value);
  const until = new Date();
  return { days, until, since: new Date(until.getTime() - days * 86_400_000) };
}

/** Points per metric: every reading when the period holds one page of them, else hourly or daily means. */
async function loadSeries(patientId, kind, metrics, range) {
  const base = `/v1/patients/${encodeURIComponent(patientId)}`;
  const query = new URLSearchParams({ kind, since: range.since.toISOString(), until: range.until.toISOString(),
    limit: String(READINGS_PAGE) });
  const page = await api(`${base}/readings?${query}`);
  if (!page.next_cursor) {
    const points = Object.fromEntries(metrics.map((m) => [m, []]));
    let unit = null;
    for (const reading of page.readings) {
      for (const m of metrics) {
        const value = reading.values?.[m];
        if (value && typeof value.value === "number") {
          points[m].push({ time: new Date(reading.measured_at), value: value.value });
          unit ??= value.unit;
        }
      }
    }
    return { points, unit: unit ?? catalogue[metrics[0]]?.unit, note: `${page.readings.length} readings` };
  }
  const bucket = range.days <= 7 ? "hour" : "day";
  const halfBucket = (bucket === "hour" ? 3_600_000 : 86_400_000) / 2;
  const trends = await Promise.all(metrics.map((m) => api(`${base}/trends/${m}?${new URLSearchParams({
    bucket, since: range.since.toISOString(), until: range.until.toISOString() })}`)));
  const points = {};
  let count = 0;
  trends.forEach((trend, i) => {
    // A mean stands for its whole bucket: drawn at the bucket's middle, with the bucket's min-max as a whisker.
    points[metrics[i]] = trend.buckets.map((b) => ({ time: new Date(new Date(b.start).getTime() + halfBucket),
      value: b.mean, low: b.min, high: b.max, count: b.count }));
    count = Math.max(count, trend.buckets.reduce((n, b) => n + b.count, 0));
  });
  return { points, unit: trends[0].unit,
    note: `${bucket === "hour" ? "Hourly" : "Daily"} means (bars: lowest to highest) of ${count} readings` };
}

function chartSpec(label, loaded, names, range, { band = null, minSpan = 0 } = {}) {
  return {
    label, unit: UNIT_LABEL[loaded.unit] ?? loaded.unit, since: range.since, until: range.until, band, minSpan,
    note: `${loaded.note}, ${formatTime(range.since)} to ${formatTime(range.until)}, local time.`,
    series: Object.entries(names).map(([metric, name]) => ({ name, points: loaded.points[metric] })),
    formatTime, formatValue: formatNumber,
  };
}

async function renderCharts(detail) {
  const range = period();
  if (!detail.scopes.includes("readings")) return;
  const [bp, glucose, weight, spo2, temperature] = await Promise.all([
    loadSeries(detail.id, "blood_pressure", ["systolic", "diastolic"], range),
    loadSeries(detail.id, "glucose", ["glucose"], range),
    loadSeries(detail.id, "body_weight", ["body_weight"], range),
    loadSeries(detail.id, "pulse_oximetry", ["spo2"], range),
    loadSeries(detail.id, "body_temperature", ["body_temperature"], range),
  ]);
  if (currentPatient !== detail) return; // the user moved on while these loaded
  drawChart($("chart-bp"), chartSpec("Blood pressure", bp, { systolic: "Systolic", diastolic: "Diastolic" }, range,
    { minSpan: 60 }));
  const perMgdl = glucose.unit === "mmol/L" ? 1 / MGDL_PER_MMOLL : 1;
  const [low, high] = GLUCOSE_TARGET_MGDL.map((v) => Math.round(v * perMgdl * 10) / 10);
  const glucoseUnit = UNIT_LABEL[glucose.unit] ?? glucose.unit;
  drawChart($("chart-glucose"), chartSpec("Glucose", glucose, { glucose: "Glucose" }, range,
    { band: { low, high, label: `Target range ${low}–${high} ${glucoseUnit}` } }));
  const weightSpan = weight.unit === "[lb_av]" ? 8 : 4;
  drawChart($("chart-weight"), chartSpec("Weight", weight, { body_weight: "Weight" }, range, { minSpan: weightSpan }));
  // Oximeters and thermometers are in few programmes: their charts show only where the period has readings.
  const optional = [
    ["chart-spo2", "Oxygen saturation", spo2, { spo2: "SpO2" },
      { band: { low: SPO2_TARGET[0], high: SPO2_TARGET[1], label: `Usual target ${SPO2_TARGET.join("–")} %` }, minSpan: 10 }],
    ["chart-temperature", "Body temperature", temperature, { body_temperature: "Temperature" },
      { band: { low: TEMPERATURE_NORMAL_CEL[0], high: TEMPERATURE_NORMAL_CEL[1],
        label: `Normal ${TEMPERATURE_NORMAL_CEL.join("–")} °C` }, minSpan: 2 }],
  ];
  for (const [id, label, loaded, names, options] of optional) {
    const figure = $(id);
    figure.hidden = Object.values(loaded.points).every((points) => points.length === 0);
    if (!figure.hidden) drawChart(figure, chartSpec(label, loaded, names, range, options));
  }
}

// --- routing -----------------------------------------------------------------------------------------

async function route() {
  takeTokenFromUrl();
  if (!token()) {
    showSignIn();
    return;
  }
  const match = location.hash.match(/^#\/patients\/(.+)$/);
  document.body.dataset.view = "loading";
  try {
    if (match) await showPatient(decodeURIComponent(match[1]));
    else await showPanel();
    document.body.dataset.view = match ? "patient" : "panel";
  } catch (error) {
    if (error.status === 401) return; // already back at sign-in, with the reason
    status(error.status === 404 ? "No such patient, or not shared with your care team." : `Error: ${error.message}`,
      true);
  }
}

async function start() {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const given = $("token-input").value.trim();
    if (!given) return;
    sessionStorage.setItem(TOKEN_KEY, given);
    $("token-input").value = "";
    if (location.hash === "#/") route();
    else location.hash = "#/"; // hashchange routes
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("period").addEventListener("change", () => {
    if (currentPatient) renderCharts(currentPatient).catch((error) => status(`Error: ${error.message}`, true));
  });
  window.addEventListener("hashchange", route);
  try {
    catalogue = await (await fetch("/ui/metrics.json")).json();
  } catch {
    catalogue = {};
  }
  await route();
}

start();
