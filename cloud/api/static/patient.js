// One patient: summary cards from the summaries API (the same code and windows as the alert rules, so the page
// never contradicts an alert), the AGP, trend charts for what the patient measures, alerts including those that
// resolved before review, devices and gateway, a printable report. Every time is in the patient's zone.

import { alertCard, needsHuman } from "./alerts.js";
import { ApiError, api } from "./api.js";
import { drawAgp, drawChart, rangesBar } from "./charts.js";
import { renderPatientGateways } from "./fleet.js";
import { renderProgrammeTime } from "./programme_time.js";
import {
  $, SEVERITY_ORDER, el, formatDate, formatNumber, formatTime, humanise, plural, signed, status, timeElement, unitLabel,
  zoneParts, zonedInstant,
} from "./format.js";

const DAY_MS = 86_400_000;
const PERIODS = [14, 30, 90];
const READINGS_PAGE = 1000;
const GLUCOSE_TARGET_MGDL = [70, 180]; // International Consensus on Time in Range 2019
const SPO2_TARGET = [94, 98]; // BTS guideline for oxygen use in adults 2017 (COPD: 88-92, set per patient)
const TEMPERATURE_NORMAL_CEL = [36.1, 38.0]; // NEWS2: 36.1-38.0 scores 0; the fever rule starts at 38.0
const MGDL_PER_MMOLL = 18.0156;

let shown = 0; // which render is current: a slow answer for a patient the user left is dropped
// Charts are drawn at their figure's width (text stays readable): drawn again when that width changes, on a
// rotated tablet, a resized window, or paper (print media).
const redraws = [];
let redrawTimer = null;
function redrawCharts() {
  if (!$("patient").hidden) for (const redraw of redraws) redraw();
}
window.addEventListener("resize", () => {
  clearTimeout(redrawTimer);
  redrawTimer = setTimeout(redrawCharts, 150);
});
window.addEventListener("beforeprint", redrawCharts);
window.addEventListener("afterprint", redrawCharts);
matchMedia("print").addEventListener("change", redrawCharts);

/** The period from the address: ?days=14|30|90, or ?from=YYYY-MM-DD&to=YYYY-MM-DD in the patient's zone. */
export function periodOf(search, zone) {
  const params = new URLSearchParams(search);
  const from = params.get("from");
  const to = params.get("to");
  const date = /^(\d{4})-(\d{2})-(\d{2})$/;
  if (from && to && date.test(from) && date.test(to) && from <= to) {
    const [, fy, fm, fd] = from.match(date).map(Number);
    const [, ty, tm, td] = to.match(date).map(Number);
    const since = zonedInstant(fy, fm, fd, zone);
    const until = new Date(Math.min(zonedInstant(ty, tm, td + 1, zone).getTime(), Date.now()));
    const days = Math.max(1, Math.min(365, Math.round((until - since) / DAY_MS)));
    return { custom: true, from, to, since, until, days, label: `${from} to ${to}` };
  }
  const days = PERIODS.includes(Number(params.get("days"))) ? Number(params.get("days")) : 30;
  const until = new Date();
  return { custom: false, days, until, since: new Date(until.getTime() - days * DAY_MS), label: `last ${days} days` };
}

function periodHash(patientId, period, alertId) {
  const params = new URLSearchParams();
  if (period.custom) { params.set("from", period.from); params.set("to", period.to); } else params.set("days", String(period.days));
  if (alertId) params.set("alert", String(alertId));
  return `#/patients/${encodeURIComponent(patientId)}?${params}`;
}

function fact(term, value) {
  return el("div", {}, el("dt", {}, term), el("dd", {}, value));
}

function measures(detail) {
  return new Set(Object.keys(detail.latest ?? {}));
}

// --- period picker ---------------------------------------------------------------------------------------

function renderPicker(detail, period, zone) {
  const select = $("period");
  select.value = period.custom ? "custom" : String(period.days);
  $("period-custom").hidden = !period.custom;
  const today = formatDate(new Date(), zone);
  $("period-from").max = today;
  $("period-to").max = today;
  if (period.custom) {
    $("period-from").value = period.from;
    $("period-to").value = period.to;
  }
  select.onchange = () => {
    if (select.value === "custom") {
      $("period-custom").hidden = false;
      $("period-from").value ||= formatDate(new Date(Date.now() - 13 * DAY_MS), zone);
      $("period-to").value ||= today;
      $("period-from").focus();
      return;
    }
    location.hash = periodHash(detail.id, { custom: false, days: Number(select.value) });
  };
  $("period-custom").onsubmit = (event) => {
    event.preventDefault();
    const from = $("period-from").value;
    const to = $("period-to").value;
    if (!from || !to || from > to) {
      status("Pick a start date on or before the end date.", true);
      return;
    }
    location.hash = periodHash(detail.id, { custom: true, from, to });
  };
}

// --- summaries -------------------------------------------------------------------------------------------

function card(id, title, window, ...body) {
  return el("article", { class: "summary-card", id }, el("h4", {}, title), el("p", { class: "window" }, window), ...body);
}

function stat(label, value, extra = null) {
  return el("div", { class: "stat" }, el("dt", {}, label), el("dd", {}, value, extra));
}

function glucoseCard(summary, period) {
  const window = `${period.label}: ${plural(summary.readings, "reading")} on ${plural(summary.days_with_data ?? 0, "day")}`;
  if (!summary.readings) return card("summary-glucose", "Glucose", window, el("p", { class: "none" }, "No readings in this period."));
  const ranges = summary.time_in_ranges_percent;
  const rows = ranges ? [["Very high", ">250", ranges.above_250, "above_250"], ["High", "181–250", ranges.from_181_to_250, "from_181_to_250"],
    ["In range", "70–180", ranges.from_70_to_180, "from_70_to_180"], ["Low", "54–69", ranges.from_54_to_69, "from_54_to_69"],
    ["Very low", "<54", ranges.below_54, "below_54"]] : [];
  const tir = ranges ? el("div", { class: "tir" }, rangesBar(ranges), el("table", { class: "tir-table" },
    el("caption", {}, "Time in ranges (mg/dL)"),
    el("tbody", {}, ...rows.map(([name, span, value, key]) => el("tr", { dataset: { range: key } },
      el("th", { scope: "row" }, el("span", { class: `swatch range-${key}`, "aria-hidden": "true" }), `${name} `, el("small", {}, span)),
      el("td", { class: "value" }, `${formatNumber(value)} %`)))))) : null;
  const sufficient = summary.sufficient_data === false ? el("p", { class: "caution" },
    "Fewer than 70 % of the period has readings: the consensus figures are less reliable.") : null;
  return card("summary-glucose", "Glucose", window, tir,
    el("dl", { class: "stats" },
      stat("Mean", `${formatNumber(summary.mean_mg_dl)} mg/dL`),
      stat("GMI", summary.gmi_percent === null ? "—" : `${formatNumber(summary.gmi_percent)} %`),
      stat("CV", summary.cv_percent === null ? "—" : `${formatNumber(summary.cv_percent)} %`,
        summary.cv_percent === null ? null : el("small", {}, summary.cv_percent <= 36 ? " stable (≤36 %)" : " unstable (>36 %)"))),
    sufficient);
}

function average(label, avg) {
  if (!avg) return stat(label, el("span", { class: "none" }, "no readings"));
  return stat(label, `${formatNumber(avg.systolic, 0)}/${formatNumber(avg.diastolic, 0)} mmHg`,
    el("small", {}, ` ${plural(avg.readings, "reading")}`));
}

function bloodPressureCard(summary) {
  // The headline is the category of the average the 7-day-average alert judges (same code, same window).
  const ruled = summary.rule_average;
  const category = summary.aha_category;
  const days = ruled?.window_days ?? 7;
  const latest = summary.latest_category;
  return card("summary-bp", "Blood pressure", summary.window?.description ?? "7- and 30-day averages",
    el("p", { class: "headline", dataset: { category: category ?? "" } },
      category ? humanise(category) : "No category",
      el("small", {}, ` ACC/AHA category of the ${formatNumber(days)}-day average${ruled ? ` (${plural(ruled.readings, "reading")})` : ""}`)),
    ruled && !ruled.enough_readings ? el("p", { class: "caution" },
      `Fewer than ${ruled.min_readings} readings in the window: the average alert does not judge it yet.`) : null,
    latest && latest !== category ? el("p", { class: "secondary-fact" }, `Latest reading alone: ${humanise(latest)}`) : null,
    el("dl", { class: "stats" },
      average("7-day average", summary.average_7_days), average("30-day average", summary.average_30_days),
      average("Mornings, 7 days", summary.morning_7_days), average("Evenings, 7 days", summary.evening_7_days)));
}

function weightCard(summary, zone) {
  // The changes the rate rules judge (latest minus the lowest in each window), labelled by their windows.
  const windows = summary.changes?.length ? summary.changes.map((w) => [w.label, w.change_kg, w.readings])
    : Object.entries(summary.change_kg ?? {}).map(([key, value]) => [key.replace("_", " "), value, null]);
  const delta = (value) => (value === null || value === undefined ? el("span", { class: "none" }, "no earlier reading")
    : `${signed(value)} kg`);
  return card("summary-weight", "Weight", summary.latest_at ? `Latest ${formatTime(new Date(summary.latest_at), zone)}` : "No weigh-in",
    el("p", { class: "headline" }, summary.latest_kg === null ? "—" : `${formatNumber(summary.latest_kg)} kg`),
    el("dl", { class: "stats" },
      ...windows.map(([label, value]) => stat(humanise(label), delta(value))),
      stat("Trend", summary.slope_kg_per_week === null ? "—" : `${signed(summary.slope_kg_per_week, 2)} kg/week`)),
    summary.change_basis ? el("p", { class: "window" }, humanise(summary.change_basis)) : null);
}

async function renderSummaries(detail, period, zone, base, isCurrent) {
  const metrics = measures(detail);
  const until = period.until.toISOString();
  const wanted = [];
  if (metrics.has("glucose")) wanted.push(api(`${base}/summaries/glucose?days=${period.days}&until=${encodeURIComponent(until)}`)
    .then((s) => glucoseCard(s, period)));
  if (metrics.has("systolic")) wanted.push(api(`${base}/summaries/blood-pressure`).then(bloodPressureCard));
  if (metrics.has("body_weight")) wanted.push(api(`${base}/summaries/weight`).then((w) => weightCard(w, zone)));
  const cards = await Promise.all(wanted.map((p) => p.catch((error) => el("article", { class: "summary-card error" },
    `Could not load a summary: ${error.message}`))));
  if (!isCurrent()) return;
  $("summaries").replaceChildren(...cards);
  $("summaries").hidden = cards.length === 0;
}

// --- alerts ----------------------------------------------------------------------------------------------

async function renderAlerts(detail, period, zone, focusId, isCurrent) {
  const list = $("alert-list");
  const resolved = $("resolved-list");
  if (!detail.scopes.includes("alerts")) {
    list.replaceChildren();
    resolved.replaceChildren();
    $("resolved").hidden = true;
    $("alerts-empty").textContent = "This patient has not shared alerts with your care team.";
    $("alerts-empty").hidden = false;
    return;
  }
  const { alerts } = await api(`/v1/alerts?${new URLSearchParams({ patient_id: detail.id, limit: "200" })}`);
  if (!isCurrent()) return;
  const rank = (a) => (a.status === "open" ? 0 : a.review_state === "pending" ? 1 : 2);
  const active = alerts.filter((a) => a.status !== "resolved" || a.review_state === "pending")
    .sort((a, b) => rank(a) - rank(b) || SEVERITY_ORDER.indexOf(a.severity) - SEVERITY_ORDER.indexOf(b.severity) || b.id - a.id);
  const done = alerts.filter((a) => a.status === "resolved" && a.review_state !== "pending"
    && new Date(a.resolved_at ?? a.updated_at) >= period.since);
  const again = () => renderAlerts(detail, period, zone, null, isCurrent);
  const onChange = (updated) => {
    const kept = !needsHuman(updated) && updated.status !== "acknowledged";
    again().then(() => {
      const card = document.querySelector(`#alerts li[data-alert-id="${updated.id}"]`);
      card?.focus(); // the button pressed is gone: keep the keyboard user on the alert they acted on
      if (kept) card?.scrollIntoView({ block: "nearest" });
    });
  };
  list.replaceChildren(...active.map((a) => alertCard(a, { zone, onChange })));
  resolved.replaceChildren(...done.map((a) => alertCard(a, { zone, onChange })));
  $("resolved").hidden = done.length === 0;
  $("alerts-empty").textContent = "No open alerts.";
  $("alerts-empty").hidden = active.length > 0;
  if (focusId) {
    const target = document.querySelector(`#alerts li[data-alert-id="${focusId}"]`);
    if (target) {
      target.classList.add("highlight");
      target.scrollIntoView({ block: "center" });
      target.focus();
    } else status("That alert is not among this patient's recent alerts.", true);
  }
}

// --- charts ----------------------------------------------------------------------------------------------

/** Points per metric: every reading when the period holds one page of them, else hourly or daily means. */
async function loadSeries(base, kind, metrics, period) {
  const query = new URLSearchParams({ kind, since: period.since.toISOString(), until: period.until.toISOString(),
    limit: String(READINGS_PAGE) });
  const page = await api(`${base}/readings?${query}`);
  if (!page.next_cursor) {
    const points = Object.fromEntries(metrics.map((m) => [m, []]));
    const units = {};
    for (const reading of page.readings) {
      for (const m of metrics) {
        const value = reading.values?.[m];
        if (value && typeof value.value === "number") {
          points[m].push({ time: new Date(reading.measured_at), value: value.value });
          units[m] ??= value.unit;
        }
      }
    }
    return { points, units, note: `${page.readings.length} readings` };
  }
  const bucket = period.days <= 7 ? "hour" : "day";
  const halfBucket = (bucket === "hour" ? 3_600_000 : DAY_MS) / 2;
  const trends = await Promise.all(metrics.map((m) => api(`${base}/trends/${m}?${new URLSearchParams({
    bucket, since: period.since.toISOString(), until: period.until.toISOString() })}`)));
  const points = {};
  const units = {};
  let count = 0;
  trends.forEach((trend, i) => {
    // A mean stands for its whole bucket: drawn at the bucket's middle, with the bucket's min-max as a whisker.
    points[metrics[i]] = trend.buckets.map((b) => ({ time: new Date(new Date(b.start).getTime() + halfBucket),
      value: b.mean, low: b.min, high: b.max, count: b.count }));
    units[metrics[i]] = trend.unit;
    count = Math.max(count, trend.buckets.reduce((n, b) => n + b.count, 0));
  });
  return { points, units, note: `${bucket === "hour" ? "Hourly" : "Daily"} means (bars: lowest to highest) of ${count} readings` };
}

/** The AGP of the period; finger-stick data (few readings per 15-min slot) pools neighbouring slots. */
async function loadAgp(base, period) {
  const query = new URLSearchParams({ days: String(Math.min(period.days, 90)), until: period.until.toISOString() });
  const raw = await api(`${base}/summaries/glucose/agp?${query}`);
  if (raw.readings === 0 || raw.readings / raw.slots.length >= 5) return raw;
  query.set("pool_slots", "2");
  return api(`${base}/summaries/glucose/agp?${query}`);
}

function chartSpec(label, loaded, names, period, zone, { band = null, minSpan = 0 } = {}) {
  const first = Object.keys(names)[0];
  return {
    label, unit: unitLabel(loaded.units[first]), since: period.since, until: period.until, band, minSpan, zone,
    note: `${loaded.note}, ${formatTime(period.since, zone)} to ${formatTime(period.until, zone)}, ${zone}.`,
    series: Object.entries(names).map(([metric, name]) => ({ name, points: loaded.points[metric] ?? [] })),
    formatTime: (date) => formatTime(date, zone), formatValue: formatNumber,
  };
}

async function renderCharts(detail, period, zone, base, isCurrent) {
  const metrics = measures(detail);
  const figures = ["chart-agp", "chart-glucose", "chart-bp", "chart-weight", "chart-heart", "chart-spo2", "chart-temperature"];
  if (!detail.scopes.includes("readings")) {
    for (const id of figures) $(id).hidden = true;
    $("charts-empty").hidden = false;
    return;
  }
  $("charts-empty").hidden = true;
  // Only what the patient measures gets a chart: no empty frames for a device they never had.
  const has = (...names) => names.some((m) => metrics.has(m));
  const heartKind = has("heart_rate") ? "heart_rate" : null;
  const [agp, glucose, bp, weight, heart, spo2, temperature] = await Promise.all([
    has("glucose") ? loadAgp(base, period) : null,
    has("glucose") ? loadSeries(base, "glucose", ["glucose"], period) : null,
    has("systolic", "pulse_rate") ? loadSeries(base, "blood_pressure", ["systolic", "diastolic", "pulse_rate"], period) : null,
    has("body_weight") ? loadSeries(base, "body_weight", ["body_weight"], period) : null,
    heartKind ? loadSeries(base, "heart_rate", ["heart_rate"], period) : null,
    has("spo2") ? loadSeries(base, "pulse_oximetry", ["spo2"], period) : null,
    has("body_temperature") ? loadSeries(base, "body_temperature", ["body_temperature"], period) : null,
  ]);
  if (!isCurrent()) return;
  redraws.length = 0;
  const place = (id, loaded, draw) => {
    $(id).hidden = !loaded;
    if (!loaded) return;
    draw($(id), loaded);
    redraws.push(() => draw($(id), loaded));
  };
  place("chart-agp", agp, (figure, profile) => drawAgp(figure, { ...profile, unit: profile.unit ?? "mg/dL",
    zone: profile.timezone ?? zone }));
  place("chart-glucose", glucose, (figure, loaded) => {
    const perMgdl = loaded.units.glucose === "mmol/L" ? 1 / MGDL_PER_MMOLL : 1;
    const [low, high] = GLUCOSE_TARGET_MGDL.map((v) => Math.round(v * perMgdl * 10) / 10);
    drawChart(figure, chartSpec("Glucose", loaded, { glucose: "Glucose" }, period, zone,
      { band: { low, high, label: `Target range ${low}–${high} ${unitLabel(loaded.units.glucose ?? "mg/dL")}` } }));
  });
  place("chart-bp", bp && has("systolic") ? bp : null, (figure, loaded) => drawChart(figure, chartSpec("Blood pressure",
    loaded, { systolic: "Systolic", diastolic: "Diastolic" }, period, zone, { minSpan: 60 })));
  place("chart-weight", weight, (figure, loaded) => drawChart(figure, chartSpec("Weight", loaded,
    { body_weight: "Weight" }, period, zone, { minSpan: loaded.units.body_weight === "[lb_av]" ? 8 : 4 })));
  // Heart rate: a wearable's own series where there is one, else the pulse the cuff measured with each reading.
  const pulse = heart ?? (bp && has("pulse_rate") ? bp : null);
  place("chart-heart", pulse, (figure, loaded) => drawChart(figure, chartSpec(heart ? "Heart rate" : "Heart rate (from the cuff)",
    loaded, heart ? { heart_rate: "Heart rate" } : { pulse_rate: "Pulse" }, period, zone, { minSpan: 30 })));
  place("chart-spo2", spo2, (figure, loaded) => drawChart(figure, chartSpec("Oxygen saturation", loaded, { spo2: "SpO2" },
    period, zone, { band: { low: SPO2_TARGET[0], high: SPO2_TARGET[1], label: `Usual target ${SPO2_TARGET.join("–")} %` },
      minSpan: 10 })));
  place("chart-temperature", temperature, (figure, loaded) => drawChart(figure, chartSpec("Body temperature", loaded,
    { body_temperature: "Temperature" }, period, zone, { band: { low: TEMPERATURE_NORMAL_CEL[0],
      high: TEMPERATURE_NORMAL_CEL[1], label: `Normal ${TEMPERATURE_NORMAL_CEL.join("–")} °C` }, minSpan: 2 })));
}

// --- devices and gateways --------------------------------------------------------------------------------

function battery(level) {
  if (level === null || level === undefined) return el("span", { class: "none" }, "—");
  const low = level <= 20;
  return el("span", { class: low ? "battery-low" : null }, low ? el("span", { class: "icon", "aria-hidden": "true" }, "!") : null,
    `${formatNumber(level, 0)} %${low ? " (low)" : ""}`);
}

function offset(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const abs = Math.abs(seconds);
  const text = abs < 120 ? `${formatNumber(abs, 0)} s` : abs < 7200 ? `${formatNumber(abs / 60, 0)} min` : `${formatNumber(abs / 3600, 1)} h`;
  return `${seconds >= 0 ? "+" : "−"}${text}`;
}

const PROBLEM_WORDS = { battery_low: "battery low", device_error: "device error", quarantined_records: "records quarantined",
  clock_off: "clock off", not_online: "not online", storage_full: "storage full", uplink_error: "uplink error",
  component_errors: "component errors", readings_lost: "readings lost" };

function deviceName(d) {
  const kind = humanise(String(d.profile ?? "device").split(".").pop()); // "ble.blood_pressure" -> "Blood pressure"
  const model = [d.manufacturer, d.model].filter(Boolean).join(" ");
  return model ? `${kind}: ${model}` : kind;
}

function devicesTable(devices, zone) {
  return el("table", { id: "device-table" }, el("caption", {}, "Devices"),
    el("thead", {}, el("tr", {}, ...["Device", "Battery", "Last reading", "Clock offset", "Problems"]
      .map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...devices.map((d) => {
      const problems = (d.problems ?? []).map((p) => PROBLEM_WORDS[p] ?? humanise(p));
      if (d.error) problems.push(d.error);
      if (d.quarantined_records) problems.push(`${d.quarantined_records} quarantined`);
      const words = [...new Set(problems.filter((p) => p !== "records quarantined"))].join("; ");
      const last = d.last_reading?.measured_at ?? d.last_seen ?? null;
      return el("tr", { dataset: { deviceUid: d.uid, problems: (d.problems ?? []).join(" ") } },
        el("th", { scope: "row" }, deviceName(d), el("small", {}, d.uid)),
        el("td", { dataset: { label: "Battery" } }, battery(d.battery_percent ?? d.battery)),
        el("td", { dataset: { label: "Last reading" } }, last ? timeElement(last, zone) : el("span", { class: "none" }, "never")),
        el("td", { dataset: { label: "Clock offset" } }, offset(d.clock_offset_s)),
        el("td", { dataset: { label: "Problems" }, class: words ? "problem" : "none" },
          words ? el("span", { class: "icon", "aria-hidden": "true" }, "!") : null, words || "none"));
    })));
}

const GATEWAY_STATE = { online: "online", offline: "offline", not_reporting: "not reporting", unknown: "state unknown" };

function gatewaysList(gateways, zone) {
  return el("ul", { id: "gateway-list", class: "gateway-list" }, ...gateways.map((g) => {
    const online = g.online === true;
    const problems = (g.problems ?? []).filter((p) => p !== "not_online").map((p) => PROBLEM_WORDS[p] ?? humanise(p));
    return el("li", { dataset: { gatewayId: g.gateway_id, state: g.state ?? "" } },
      el("strong", {}, `Gateway ${g.gateway_id}`), " ",
      el("span", { class: `gateway-state ${online ? "online" : "offline"}` },
        el("span", { class: "icon", "aria-hidden": "true" }, online ? "●" : "○"), GATEWAY_STATE[g.state] ?? g.state),
      g.last_contact_at ? el("span", { class: "when" }, "Last heard ", timeElement(g.last_contact_at, zone)) : null,
      el("span", { class: "backlog" }, g.outbox_depth === null || g.outbox_depth === undefined ? "Outbox backlog unknown"
        : `Outbox backlog: ${plural(g.outbox_depth, "reading")}`),
      problems.length ? el("span", { class: "problem" }, ` ${problems.join("; ")}`) : null);
  }));
}

async function renderEquipment(detail, zone, base, isCurrent) {
  const box = $("equipment-body");
  let equipment;
  try {
    equipment = await api(`${base}/equipment`);
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    // Without the equipment view (an older API, or no readings scope), what the twin knows of the devices.
    const known = Object.entries(detail.devices ?? {}).map(([uid, d]) => ({ uid, ...d }));
    equipment = { devices: known, gateways: [] };
  }
  if (!isCurrent()) return;
  const devices = equipment.devices ?? [];
  const gateways = equipment.gateways ?? [];
  box.replaceChildren(...[
    devices.length ? devicesTable(devices, zone) : el("p", { class: "none" }, "No devices assigned."),
    gateways.length ? gatewaysList(gateways, zone) : el("p", { class: "none" }, "No gateway has reported for these devices."),
  ]);
}

// --- the page --------------------------------------------------------------------------------------------

export async function showPatient(patientId, search) {
  const mine = ++shown;
  const isCurrent = () => mine === shown;
  status("Loading patient…");
  const base = `/v1/patients/${encodeURIComponent(patientId)}`;
  const detail = await api(base);
  if (!isCurrent()) return null;
  const zone = detail.timezone || "UTC";
  const period = periodOf(search, zone);
  const focusId = new URLSearchParams(search).get("alert");
  const name = detail.display_name || detail.id;
  $("patient-title").textContent = name;
  document.title = `${name} — RPM`;
  const adherence = detail.adherence;
  $("patient-facts").replaceChildren(
    fact("Patient id", detail.id),
    fact("Sex", detail.sex ? humanise(detail.sex) : "—"),
    fact("Born", detail.birth_date ?? "—"),
    fact("Times in", detail.timezone ? zone : "UTC (no time zone recorded)"),
    fact("Adherence", adherence ? `${adherence.days_with_readings} of ${adherence.period_days} days` +
      (adherence.meets_16_day_rule ? " (meets the 16-day rule)" : ` (${adherence.days_short} short of 16)`) : "—"),
  );
  const now = new Date();
  const p = zoneParts(now, zone);
  $("report-head").textContent = `Report for ${name} (${detail.id}), ${period.label}: ` +
    `${formatTime(period.since, zone)} to ${formatTime(period.until, zone)} ${zone}. Printed ${p.year}-` +
    `${String(p.month).padStart(2, "0")}-${String(p.day).padStart(2, "0")}.`;
  renderPicker(detail, period, zone);
  $("print-report").onclick = () => window.print();
  const results = await Promise.allSettled([
    renderSummaries(detail, period, zone, base, isCurrent),
    renderAlerts(detail, period, zone, focusId, isCurrent),
    renderCharts(detail, period, zone, base, isCurrent),
    renderEquipment(detail, zone, base, isCurrent),
    renderPatientGateways(detail, zone, isCurrent),
    renderProgrammeTime(detail, zone, base, isCurrent),
  ]);
  const failed = results.find((r) => r.status === "rejected");
  if (failed) throw failed.reason;
  if (isCurrent() && !focusId) status("");
  return detail;
}

/** The patient on screen, if any, and a way to refresh its alerts when the live stream says they changed. */
export function refreshPatientAlerts() {
  const match = location.hash.match(/^#\/patients\/([^?]+)(?:\?(.*))?$/);
  if (!match) return;
  const patientId = decodeURIComponent(match[1]);
  api(`/v1/patients/${encodeURIComponent(patientId)}`).then((detail) => {
    const zone = detail.timezone || "UTC";
    const mine = shown;
    return renderAlerts(detail, periodOf(match[2] ?? "", zone), zone, null, () => mine === shown);
  }).catch(() => { /* the next navigation shows the error */ });
}
