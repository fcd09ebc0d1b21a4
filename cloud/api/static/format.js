// Building and wording page content. Data goes in with textContent (el children are text nodes), never as HTML.

export const SEVERITY_ORDER = ["critical", "warning", "info"];
export const SEVERITY_LABEL = { critical: "Critical", warning: "Warning", info: "Info" };
// UCUM codes as the API stores them, written the way a clinician reads them.
export const UNIT_LABEL = { "mm[Hg]": "mmHg", "/min": "/min", "{beats}/min": "/min", "[lb_av]": "lb",
  "mmol/L": "mmol/L", "mg/dL": "mg/dL", "%": "%", "Cel": "°C", "kg": "kg", "[degF]": "°F" };
// The same codes inside alert texts ("192 mm[Hg]"), longest first so "{beats}/min" wins over "/min".
const UCUM_IN_TEXT = new RegExp(Object.keys(UNIT_LABEL).filter((code) => UNIT_LABEL[code] !== code)
  .sort((a, b) => b.length - a.length)
  .map((code) => (/^\w/.test(code) ? "\\b" : "") + code.replace(/[[\]{}()/.*+?^$|\\]/g, "\\$&")
    + (/\w$/.test(code) ? "\\b" : "")).join("|"), "g");

export const $ = (id) => document.getElementById(id);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined && child !== false) node.append(child);
  return node;
}

export function unitLabel(code) {
  return UNIT_LABEL[code] ?? code ?? "";
}

/** An alert text as the rules wrote it, with UCUM codes swapped for the units people read. */
export function humanText(text) {
  return String(text ?? "").replace(UCUM_IN_TEXT, (code) => UNIT_LABEL[code]);
}

export function formatNumber(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (Number.isInteger(value)) return String(value);
  return value.toFixed(digits).replace(/\.0+$/, "");
}

export function signed(value, digits = 1) {
  if (value === null || value === undefined) return "—";
  const text = formatNumber(Math.abs(value), digits);
  return value > 0 ? `+${text}` : value < 0 ? `−${text}` : text;
}

export function humanise(slug) {
  const text = String(slug ?? "").replaceAll("_", " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** An alert's rule as people name it ("Hypertensive crisis"); the id made readable when the API gave no title. */
export function ruleTitle(alert) {
  return alert.rule_title || humanise(alert.rule_id);
}

export function plural(n, word, many = `${word}s`) {
  return `${n} ${n === 1 ? word : many}`;
}

// --- time in a given zone ------------------------------------------------------------------------------

const formatters = new Map();

function formatter(zone) {
  const key = zone ?? "";
  if (!formatters.has(key)) {
    let made;
    try {
      made = new Intl.DateTimeFormat("en-GB", { timeZone: zone || undefined, year: "numeric", month: "2-digit",
        day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
    } catch { // a zone name this browser does not know: UTC, and the page says so where it names the zone
      made = new Intl.DateTimeFormat("en-GB", { timeZone: "UTC", year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
    }
    formatters.set(key, made);
  }
  return formatters.get(key);
}

/** Wall-clock parts of ``date`` in ``zone`` (undefined: the browser's zone). */
export function zoneParts(date, zone) {
  const parts = Object.fromEntries(formatter(zone).formatToParts(date).map((p) => [p.type, p.value]));
  return { year: +parts.year, month: +parts.month, day: +parts.day, hour: +parts.hour % 24, minute: +parts.minute,
    second: +parts.second };
}

/** Milliseconds ``zone`` is ahead of UTC at ``date``. */
export function zoneOffset(date, zone) {
  const p = zoneParts(date, zone);
  return Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, p.second) - Math.floor(date.getTime() / 1000) * 1000;
}

/** The instant of wall-clock ``y-m-d h:00`` in ``zone``; twice corrected so a DST change on that day holds. */
export function zonedInstant(year, month, day, zone, hour = 0) {
  const wall = Date.UTC(year, month - 1, day, hour);
  let guess = wall - zoneOffset(new Date(wall), zone);
  guess = wall - zoneOffset(new Date(guess), zone);
  return new Date(guess);
}

export function zonedMidnight(time, zone) {
  const p = zoneParts(new Date(time), zone);
  return zonedInstant(p.year, p.month, p.day, zone).getTime();
}

const pad = (n) => String(n).padStart(2, "0");

/** 2026-11-22 21:50, in ``zone`` (undefined: the browser's). */
export function formatTime(date, zone) {
  const p = zoneParts(date, zone);
  return `${p.year}-${pad(p.month)}-${pad(p.day)} ${pad(p.hour)}:${pad(p.minute)}`;
}

export function formatDate(date, zone) {
  const p = zoneParts(date, zone);
  return `${p.year}-${pad(p.month)}-${pad(p.day)}`;
}

export function timeElement(iso, zone) {
  const date = new Date(iso);
  return el("time", { datetime: date.toISOString(), class: "when" }, formatTime(date, zone));
}

/** "5 min ago" beside a time in a cross-patient list, where each patient's own zone would mislead. */
export function ago(iso, now = Date.now()) {
  const minutes = Math.round((now - new Date(iso).getTime()) / 60_000);
  if (minutes < 1) return "just now";
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 48) return `${hours} h ago`;
  return `${Math.round(hours / 24)} days ago`;
}

export function status(message, isError = false) {
  const node = $("status");
  node.textContent = message;
  node.classList.toggle("error", isError);
}
