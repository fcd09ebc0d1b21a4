// The triage panel: server-side search, filters, sort and paging (GET /v1/patients), all kept in the address
// (#/?q=...&filter=critical&sort=name&page=2) so the back button brings the same view back.

import { api } from "./api.js";
import { $, SEVERITY_LABEL, SEVERITY_ORDER, el, formatNumber, status, timeElement, unitLabel } from "./format.js";

export const PAGE_SIZE = 50;
export const FILTERS = [
  ["critical", "Critical"], ["unacknowledged", "Unacknowledged"], ["needs_review", "Needs review"],
  ["missing_data", "Missing data"], ["below_16_days", "Below 16 days"], ["device_problem", "Device problem"],
];
const SORTS = { triage: "Triage", name: "Name", last_reading: "Last reading", days_with_data: "Days with data" };

let catalogue = {};
export function useCatalogue(metrics) {
  catalogue = metrics;
}

/** The panel's view from the address: what the API is asked for. */
export function panelState(search) {
  const params = new URLSearchParams(search);
  const sort = SORTS[params.get("sort")] ? params.get("sort") : "triage";
  const order = params.get("order") === "asc" || params.get("order") === "desc" ? params.get("order") : null;
  const page = Math.max(1, Number.parseInt(params.get("page") ?? "1", 10) || 1);
  const known = new Set(FILTERS.map(([name]) => name));
  return { q: params.get("q") ?? "", filters: params.getAll("filter").filter((f) => known.has(f)), sort, order, page };
}

export function panelHash(state) {
  const params = new URLSearchParams();
  if (state.q) params.set("q", state.q);
  for (const f of state.filters) params.append("filter", f);
  if (state.sort !== "triage") params.set("sort", state.sort);
  if (state.order) params.set("order", state.order);
  if (state.page > 1) params.set("page", String(state.page));
  const query = params.toString();
  return query ? `#/?${query}` : "#/";
}

function go(state) {
  location.hash = panelHash(state);
}

function alertBadges(patient) {
  const counts = patient.open_alerts;
  if (counts === null || counts === undefined) {
    return el("span", { class: "none", title: "no consent to see this patient's alerts" }, "not shared");
  }
  const badges = SEVERITY_ORDER.filter((s) => counts[s] > 0)
    .map((s) => el("span", { class: `badge severity-${s}`, dataset: { severity: s } }, `${SEVERITY_LABEL[s]}: ${counts[s]}`));
  const open = SEVERITY_ORDER.reduce((n, s) => n + (counts[s] ?? 0), 0);
  // An API without the counts says nothing: "acknowledged" is claimed only when the panel says so.
  const known = typeof patient.unacknowledged === "number";
  const waiting = patient.unacknowledged ?? 0;
  const review = patient.needs_review ?? 0;
  const marks = [];
  // Icon and words: "not acknowledged" must read without colour, and differ at a glance from "all seen".
  if (waiting > 0) {
    marks.push(el("span", { class: "ack-state unacknowledged", dataset: { unacknowledged: waiting } },
      el("span", { class: "icon", "aria-hidden": "true" }, "!"), `${waiting} not acknowledged`));
  } else if (open > 0 && known) {
    marks.push(el("span", { class: "ack-state acknowledged" }, el("span", { class: "icon", "aria-hidden": "true" }, "✓"),
      "acknowledged"));
  }
  if (review > 0) {
    marks.push(el("span", { class: "ack-state needs-review", dataset: { needsReview: review } },
      el("span", { class: "icon", "aria-hidden": "true" }, "!"), `${review} to review`));
  }
  if (!badges.length && !marks.length) return el("span", { class: "none" }, "none");
  return el("span", { class: "alert-cell" }, ...badges, ...marks);
}

function vitalCell(label, latest, metrics, separator = "/") {
  const present = metrics.filter((m) => latest?.[m]);
  if (!present.length) return el("td", { class: "none", dataset: { label } }, "—");
  const value = present.map((m) => formatNumber(latest[m].value)).join(separator);
  return el("td", { dataset: { label } }, el("span", { class: "value" }, `${value} ${unitLabel(catalogue[present[0]]?.unit)}`),
    timeElement(latest[present[0]].measured_at));
}

/** The programme's current 30-day period (issue 25): what it still needs, in words, or null when not enrolled. */
export function programmeNote(programme) {
  if (!programme) return null;
  const target = programme.target_days;
  const title = `${programme.programme_id}: period ${programme.period_start} to ${programme.period_end},`
    + ` ${programme.days_with_data} of ${target} days with data so far`;
  if (programme.needs_days === 0) {
    return el("small", { class: "programme-met", title, dataset: { programme: "met" } }, `✓ ${target}-day rule met this period`);
  }
  const need = `${programme.needs_days} ${programme.needs_days === 1 ? "reading" : "readings"}`;
  const left = `${programme.days_left} ${programme.days_left === 1 ? "day" : "days"}`;
  if (!programme.reachable) {
    return el("small", { class: "programme-missed", title, dataset: { programme: "unreachable" } },
      el("span", { class: "icon", "aria-hidden": "true" }, "✗"), ` ${target}-day rule out of reach this period`,
      ` (needs ${need}, ${left} left)`);
  }
  return el("small", { class: "programme-needs", title, dataset: { programme: "needs" } },
    el("span", { class: "icon", "aria-hidden": "true" }, "!"), ` needs ${need} in the next ${left}`);
}

function adherenceCell(adherence, programme) {
  if (!adherence) return el("td", { class: "none", dataset: { label: "Adherence" } }, "not shared");
  const met = adherence.meets_16_day_rule;
  return el("td", { dataset: { label: "Adherence" } }, el("span", { class: "value" }, `${adherence.days_with_readings} of 30 days`),
    el("small", { class: met ? "adherence-met" : "adherence-short" },
      met ? "✓ meets the 16-day rule" : "below the 16-day rule"), programmeNote(programme));
}

function row(p) {
  const link = el("a", { href: `#/patients/${encodeURIComponent(p.patient_id)}` }, p.display_name || p.patient_id);
  const heart = p.latest?.heart_rate ? ["heart_rate"] : ["pulse_rate"];
  const waiting = (p.unacknowledged ?? 0) > 0;
  return el("tr", { dataset: { patientId: p.patient_id }, class: waiting ? "row-unacknowledged" : null },
    el("th", { scope: "row" }, link, el("small", {}, p.patient_id)),
    el("td", { dataset: { label: "Open alerts" } }, alertBadges(p)),
    vitalCell("Blood pressure", p.latest, ["systolic", "diastolic"]),
    vitalCell("Glucose", p.latest, ["glucose"]),
    vitalCell("Weight", p.latest, ["body_weight"]),
    vitalCell("Heart rate", p.latest, heart),
    adherenceCell(p.adherence, p.programme));
}

function renderChips(state, counts) {
  $("panel-filters").replaceChildren(...FILTERS.map(([name, label]) => {
    const on = state.filters.includes(name);
    const count = counts?.[name];
    const chip = el("button", { type: "button", class: "chip", "aria-pressed": on ? "true" : "false",
      dataset: { filter: name } }, on ? el("span", { class: "icon", "aria-hidden": "true" }, "✓") : null, label,
    count === undefined ? null : el("span", { class: "count" }, String(count)));
    chip.addEventListener("click", () => {
      const filters = on ? state.filters.filter((f) => f !== name) : [...state.filters, name];
      go({ ...state, filters, page: 1 });
    });
    return chip;
  }));
}

function renderPaging(state, total, shown) {
  const first = total === 0 ? 0 : (state.page - 1) * PAGE_SIZE + 1;
  const last = (state.page - 1) * PAGE_SIZE + shown;
  const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
  for (const nav of document.querySelectorAll(".paging")) {
    const previous = el("button", { type: "button", class: "secondary", disabled: state.page <= 1 }, "← Previous");
    previous.addEventListener("click", () => go({ ...state, page: state.page - 1 }));
    const next = el("button", { type: "button", class: "secondary", disabled: state.page >= pages }, "Next →");
    next.addEventListener("click", () => go({ ...state, page: state.page + 1 }));
    nav.replaceChildren(previous, el("span", { class: "range" }, `${first}–${last} of ${total}`), next);
  }
}

let controlsWired = false;

function wireControls() {
  if (controlsWired) return;
  controlsWired = true;
  $("panel-search").addEventListener("submit", (event) => {
    event.preventDefault();
    go({ ...panelState(location.hash.replace(/^#\/?\??/, "")), q: $("panel-q").value.trim(), page: 1 });
  });
  $("panel-sort").addEventListener("change", () => {
    const [sort, order] = $("panel-sort").value.split(":");
    go({ ...panelState(location.hash.replace(/^#\/?\??/, "")), sort, order: order || null, page: 1 });
  });
}

export async function showPanel(search) {
  wireControls();
  const state = panelState(search);
  $("panel-q").value = state.q;
  const sortValue = `${state.sort}${state.order ? `:${state.order}` : ""}`;
  $("panel-sort").value = [...$("panel-sort").options].some((o) => o.value === sortValue) ? sortValue : "triage";
  status("Loading patients…");
  const query = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String((state.page - 1) * PAGE_SIZE) });
  if (state.q) query.set("q", state.q);
  for (const f of state.filters) query.append("filter", f);
  if (state.sort !== "triage") query.set("sort", state.sort);
  if (state.order) query.set("order", state.order);
  const answer = await api(`/v1/patients?${query}`);
  const patients = answer.patients;
  const total = answer.total ?? patients.length;
  $("panel-table").querySelector("tbody").replaceChildren(...patients.map(row));
  renderChips(state, answer.counts);
  renderPaging(state, total, patients.length);
  $("panel-table").hidden = patients.length === 0;
  const empty = $("panel-empty");
  empty.hidden = patients.length > 0;
  empty.textContent = state.q || state.filters.length ? "No patient matches the search and filters."
    : "No patients: no active consent covers your care team yet.";
  const all = answer.counts?.all;
  status(state.q || state.filters.length ? `${total} of ${all ?? "?"} patients match.` : `${total} patients.`);
  return answer;
}
