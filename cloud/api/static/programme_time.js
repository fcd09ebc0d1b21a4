// The care team's programme block on a patient's page (issue 25): this calendar month's clinician minutes and
// the codes they meet, the current 30-day period's days with data, a start/stop timer and an "add minutes" form
// (reason, interactive communication yes/no), all through /v1/patients/{id}/time-entries and
// /v1/patients/{id}/reports/rpm. The block builds its own section so the page shell stays as it is.

import { ApiError, api, token } from "./api.js";
import { $, el, formatDate, formatTime, humanise, plural } from "./format.js";

export const REASONS = [
  ["data_review", "Data review"], ["call", "Call"], ["alert_review", "Alert review"], ["comment", "Comment"],
  ["care_plan", "Care plan"],
];
const TICK_MS = 15_000;

let ticker = null; // the running timer's elapsed-minutes refresh (one per page)

/** The signed-in person (the token's subject): only their own timer can be stopped. Null when unreadable. */
export function signedInSubject() {
  try {
    const part = (token() ?? "").split(".")[1];
    if (!part) return null;
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "="));
    return JSON.parse(json).sub ?? null;
  } catch {
    return null;
  }
}

function section() {
  let box = $("programme-time");
  if (box) return box;
  box = el("section", { id: "programme-time", "aria-labelledby": "programme-time-title" },
    el("h3", { id: "programme-time-title" }, "Programme: days with data and clinician time"),
    el("div", { id: "programme-time-body" }),
    el("p", { id: "programme-time-status", role: "status", class: "programme-status" }));
  // Before the devices, after the trends: where the care team ends its review of the patient.
  $("patient").insertBefore(box, $("equipment"));
  return box;
}

function say(message, isError = false) {
  const node = $("programme-time-status");
  node.textContent = message;
  node.classList.toggle("error", isError);
}

function monthOf(zone) {
  return formatDate(new Date(), zone).slice(0, 7);
}

function reasonSelect(id) {
  return el("select", { id, name: "reason", required: true },
    ...REASONS.map(([value, label]) => el("option", { value }, label)));
}

function interactiveChoice(name, legend) {
  // Two radios, nothing chosen: whether the time held real-time interactive communication is asked, never assumed.
  return el("fieldset", { class: "interactive-choice" }, el("legend", {}, legend),
    el("label", {}, el("input", { type: "radio", name, value: "yes", required: true }), " Yes"),
    el("label", {}, el("input", { type: "radio", name, value: "no" }), " No"));
}

function chosen(form, name) {
  const value = new FormData(form).get(name);
  return value === null ? null : value === "yes";
}

function currentPeriod(report, today) {
  if (!report) return null;
  return report.periods.find((p) => p.start <= today && today <= p.end) ?? report.periods.at(-1) ?? null;
}

function monthSummary(report, entries, zone) {
  const today = formatDate(new Date(), zone);
  const period = currentPeriod(report, today);
  const done = entries.filter((e) => e.minutes !== null);
  const minutes = done.reduce((n, e) => n + e.minutes, 0);
  const codes = report ? Object.entries(report.management_codes).map(([c, u]) => (u === 1 ? c : `${c} ×${u}`)) : [];
  const facts = [
    el("div", {}, el("dt", {}, "This month"),
      el("dd", { id: "programme-minutes", dataset: { minutes } }, `${plural(minutes, "minute")} in ${plural(done.length, "activity", "activities")}`)),
    el("div", {}, el("dt", {}, "Management codes"),
      el("dd", { id: "programme-codes" }, codes.length ? codes.join(", ")
        : (report?.management_note ?? (report ? "none yet" : "not enrolled in a programme")))),
  ];
  if (period) {
    const code = period.device_supply_code ? ` (meets ${period.device_supply_code} so far)` : "";
    facts.push(el("div", {}, el("dt", {}, "Current period"),
      el("dd", { id: "programme-period" }, `${period.start} to ${period.end}: ${plural(period.days_with_data, "day")} with data${code}`)));
  }
  return el("dl", { class: "facts programme-facts" }, ...facts);
}

function timerBlock(base, entries, me, zone, rerender) {
  const running = entries.filter((e) => e.minutes === null);
  const mine = running.find((e) => me === null || e.person === me);
  const others = running.filter((e) => e !== mine)
    .map((e) => el("p", { class: "none" }, `${e.person}'s timer is running since ${formatTime(new Date(e.started_at), zone)}.`));
  if (mine) {
    const elapsed = el("strong", { id: "programme-timer-elapsed" });
    const show = () => {
      elapsed.textContent = plural(Math.max(0, Math.floor((Date.now() - Date.parse(mine.started_at)) / 60_000)), "minute");
    };
    show();
    clearInterval(ticker);
    ticker = setInterval(show, TICK_MS);
    const form = el("form", { id: "programme-timer-stop", class: "programme-form no-print" },
      el("p", { id: "programme-timer-running" }, `Timer running (${humanise(mine.reason)}) since `,
        formatTime(new Date(mine.started_at), zone), ": ", elapsed, "."),
      interactiveChoice("stop-interactive", "Did it include interactive communication with the patient?"),
      el("button", { type: "submit" }, "Stop timer"));
    const initial = form.querySelector(`input[value="${mine.interactive_communication ? "yes" : "no"}"]`);
    if (initial) initial.checked = true;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      rerender({ timer: "stop", interactive_communication: chosen(form, "stop-interactive") }, "Timer stopped.");
    });
    return el("div", {}, form, ...others);
  }
  clearInterval(ticker);
  const form = el("form", { id: "programme-timer-start", class: "programme-form no-print" },
    el("label", {}, "Timer for ", reasonSelect("programme-timer-reason")),
    interactiveChoice("start-interactive", "Interactive communication with the patient?"),
    el("button", { type: "submit" }, "Start timer"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    rerender({ timer: "start", reason: form.elements.reason.value,
      interactive_communication: chosen(form, "start-interactive") }, "Timer started.");
  });
  return el("div", {}, form, ...others);
}

function minutesForm(zone, rerender) {
  const today = formatDate(new Date(), zone);
  // Each label holds its control, so a pair never wraps apart on a narrow screen.
  const form = el("form", { id: "programme-add-minutes", class: "programme-form no-print" },
    el("label", {}, "Minutes ", el("input", { id: "programme-minutes-input", name: "minutes", type: "number", min: "1",
      max: "240", step: "1", required: true, inputmode: "numeric" })),
    el("label", {}, "Reason ", reasonSelect("programme-minutes-reason")),
    el("label", {}, "On ", el("input", { id: "programme-minutes-date", name: "performed_on", type: "date", max: today,
      value: today, required: true })),
    interactiveChoice("minutes-interactive", "Interactive communication with the patient?"),
    el("label", {}, "Note (optional) ", el("input", { id: "programme-minutes-note", name: "note", type: "text",
      maxlength: "500" })),
    el("button", { type: "submit" }, "Add minutes"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const note = form.elements.note.value.trim();
    rerender({ minutes: Number(form.elements.minutes.value), reason: form.elements.reason.value,
      performed_on: form.elements.performed_on.value, interactive_communication: chosen(form, "minutes-interactive"),
      ...(note ? { note } : {}) }, "Minutes added.");
  });
  return el("details", { class: "no-print", open: true }, el("summary", {}, "Add minutes spent"), form);
}

function activitiesTable(entries, zone) {
  const done = entries.filter((e) => e.minutes !== null);
  if (!done.length) return el("p", { class: "none", id: "programme-activities-empty" }, "No timed activity this month yet.");
  return el("table", { id: "programme-activities" },
    el("caption", {}, "Timed activities this month"),
    el("thead", {}, el("tr", {}, ...["Date", "Who", "Reason", "Minutes", "Interactive", "Note"]
      .map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...done.map((e) => el("tr", { dataset: { entryId: e.id } },
      el("td", { dataset: { label: "Date" } }, e.performed_on), el("td", { dataset: { label: "Who" } }, e.person),
      el("td", { dataset: { label: "Reason" } }, humanise(e.reason)),
      el("td", { class: "num", dataset: { label: "Minutes" } }, String(e.minutes)),
      el("td", { dataset: { label: "Interactive" } }, e.interactive_communication ? "yes" : "no"),
      el("td", { dataset: { label: "Note" } },
        e.note ?? (e.started_at ? `timer from ${formatTime(new Date(e.started_at), zone)}` : ""))))));
}

/** Draw the block for the patient on the page; ``isCurrent`` says whether that patient is still shown. */
export async function renderProgrammeTime(detail, zone, base, isCurrent) {
  section();
  const month = monthOf(zone);
  let data;
  try {
    data = await api(`${base}/reports/rpm?month=${month}`);
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    if (!isCurrent()) return;
    clearInterval(ticker);
    $("programme-time-body").replaceChildren(el("p", { class: "none" },
      error.status === 404 || error.status === 403 ? "This patient has not shared readings with your care team."
        : `Programme data unavailable: ${error.message}`));
    return;
  }
  if (!isCurrent()) return;
  const rerender = async (body, done) => {
    for (const button of $("programme-time").querySelectorAll("button")) button.disabled = true;
    try {
      await api(`${base}/time-entries`, { method: "POST", body });
      say(done);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      say(error.message, true);
    }
    if (isCurrent()) await renderProgrammeTime(detail, zone, base, isCurrent);
  };
  const entries = data.activities ?? [];
  $("programme-time-body").replaceChildren(
    monthSummary(data.report, entries, zone),
    timerBlock(base, entries, signedInSubject(), zone, rerender),
    minutesForm(zone, rerender),
    activitiesTable(entries, zone));
}
