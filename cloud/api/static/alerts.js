// One alert as a card with what a person can do about it: acknowledge (or mark reviewed, for one that resolved
// before anyone looked), resolve, comment, assign to me; its history on demand. Shared by inbox and patient page.

import { api, token } from "./api.js";
import { SEVERITY_LABEL, ago, el, humanText, humanise, ruleTitle, status, timeElement } from "./format.js";

/** The signed-in subject, read from the token only to label "assigned to me" (the API decides who may act). */
export function mySubject() {
  try {
    const payload = token().split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).sub ?? null;
  } catch {
    return null;
  }
}

export function needsHuman(alert) {
  return alert.status === "open" || alert.review_state === "pending";
}

/** Icon and words, never colour alone: where the alert stands and who saw it. */
export function alertState(alert, zone) {
  if (alert.status === "open") {
    return el("p", { class: "alert-state state-unacknowledged" }, el("span", { class: "icon", "aria-hidden": "true" }, "!"),
      "Open, not acknowledged");
  }
  if (alert.status === "acknowledged") {
    return el("p", { class: "alert-state state-acknowledged" }, el("span", { class: "icon", "aria-hidden": "true" }, "✓"),
      `Acknowledged by ${alert.acknowledged_by ?? "someone"} `, timeElement(alert.acknowledged_at, zone));
  }
  if (alert.review_state === "pending") {
    return el("p", { class: "alert-state state-needs-review" }, el("span", { class: "icon", "aria-hidden": "true" }, "!"),
      "Resolved before anyone reviewed it: needs review");
  }
  const who = alert.reviewed_by ?? alert.resolved_by;
  return el("p", { class: "alert-state state-resolved" }, el("span", { class: "icon", "aria-hidden": "true" }, "✓"),
    `Resolved${who ? ` (${alert.reviewed_by ? "reviewed" : "closed"} by ${who})` : ""} `,
    alert.resolved_at ? timeElement(alert.resolved_at, zone) : null);
}

function actionButton(label, className, describedBy, handler) {
  const button = el("button", { type: "button", class: className, "aria-describedby": describedBy }, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await handler();
    } catch (error) {
      button.disabled = false;
      status(`Could not ${label.toLowerCase()}: ${error.message}`, true);
    }
  });
  return button;
}

function historyLine(event, zone) {
  const detail = event.detail ?? {};
  const words = event.event === "comment" && detail.text ? `: ${detail.text}`
    : "assigned_to" in detail ? (detail.assigned_to ? `: assigned to ${detail.assigned_to}` : ": unassigned")
      : detail.note ? `: ${detail.note}` : "";
  return el("li", {}, timeElement(event.at, zone), ` ${humanise(event.event)}${event.actor ? ` by ${event.actor}` : ""}`,
    humanText(words));
}

/**
 * The card. options: zone (patient's time zone, or undefined for the browser's), showPatient (cross-patient
 * lists), onChange(updated) after an action (the caller re-renders its list).
 */
export function alertCard(alert, { zone, showPatient = false, onChange = () => {} } = {}) {
  const messageId = `alert-${alert.id}-message`;
  const item = el("li", { class: `alert-card alert-${alert.severity}`, tabindex: "-1",
    dataset: { alertId: alert.id, patientId: alert.patient_id, status: alert.status, reviewState: alert.review_state ?? "", severity: alert.severity } });
  const who = showPatient ? el("a", { class: "alert-patient", href: `#/patients/${encodeURIComponent(alert.patient_id)}` },
    alert.patient_display_name || alert.patient_id) : null;
  const head = el("div", { class: "alert-head" },
    el("span", { class: `badge severity-${alert.severity}` }, SEVERITY_LABEL[alert.severity] ?? alert.severity),
    who, el("strong", {}, ruleTitle(alert)),
    alert.category === "technical" ? el("span", { class: "badge tag" }, "Device") : null);
  // The reading's own time matters more than when the cloud heard of it (a gateway syncs late).
  const opened = el("span", { class: "when" }, alert.measured_at ? "Reading " : "Opened ",
    timeElement(alert.measured_at ?? alert.opened_at, zone),
    showPatient ? ` (${ago(alert.measured_at ?? alert.opened_at)})` : "",
    alert.measured_at && Math.abs(new Date(alert.opened_at) - new Date(alert.measured_at)) > 600_000
      ? el("span", {}, ", alert opened ", timeElement(alert.opened_at, zone)) : null);
  const assigned = alert.assigned_to ? el("p", { class: "assigned" }, `Assigned to ${alert.assigned_to}`) : null;
  const body = el("div", { class: "alert-body" }, head, el("p", { class: "message", id: messageId }, humanText(alert.message)),
    opened, alertState(alert, zone), assigned);

  const act = async (path, payload) => {
    const updated = await api(`/v1/alerts/${alert.id}/${path}`, { method: "POST", body: payload });
    onChange(updated, alert);
    return updated;
  };
  const actions = el("div", { class: "alert-actions" });
  if (alert.status === "open") {
    actions.append(actionButton("Acknowledge", "acknowledge", messageId, async () => {
      const updated = await act("acknowledge", {});
      status(`Alert acknowledged: ${ruleTitle(updated)}${showPatient ? `, ${alert.patient_display_name || alert.patient_id}` : ""}.`);
    }));
  } else if (alert.review_state === "pending") {
    actions.append(actionButton("Mark reviewed", "acknowledge review", messageId, async () => {
      const updated = await act("acknowledge", {});
      status(`Alert reviewed: ${ruleTitle(updated)}.`);
    }));
  }
  if (alert.status !== "resolved") {
    actions.append(actionButton("Resolve", "secondary resolve", messageId, async () => {
      const updated = await act("resolve", {});
      status(`Alert resolved: ${ruleTitle(updated)}.`);
    }));
  }
  if (needsHuman(alert) || alert.status === "acknowledged") {
    const me = mySubject();
    const mine = me !== null && alert.assigned_to === me;
    actions.append(actionButton(mine ? "Unassign" : "Assign to me", "secondary assign", messageId, async () => {
      await act("assign", { to: mine ? null : "me" });
      status(mine ? "Alert unassigned." : "Alert assigned to you.");
    }));
  }
  item.append(body, actions, el("div", { class: "alert-more" }, commentForm(alert, act, zone), historyDetails(alert, zone)));
  return item;
}

function commentForm(alert, act, zone) {
  const details = el("details", { class: "alert-comment" }, el("summary", {}, "Comment"));
  const id = `alert-${alert.id}-comment`;
  const field = el("textarea", { id, rows: "2", maxlength: "4000", required: true });
  const form = el("form", {}, el("label", { for: id }, "Note for the alert's history"), field,
    el("button", { type: "submit", class: "secondary" }, "Add comment"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = field.value.trim();
    if (!text) return;
    try {
      await api(`/v1/alerts/${alert.id}/comments`, { method: "POST", body: { text } });
      field.value = "";
      details.open = false;
      status("Comment added.");
      const history = details.parentElement?.querySelector(".alert-history");
      if (history?.open) loadHistory(alert, history, zone);
    } catch (error) {
      status(`Could not add the comment: ${error.message}`, true);
    }
  });
  details.append(form);
  return details;
}

async function loadHistory(alert, details, zone) {
  const list = details.querySelector("ol");
  try {
    const full = await api(`/v1/alerts/${alert.id}`);
    list.replaceChildren(...full.history.map((event) => historyLine(event, zone)));
  } catch (error) {
    list.replaceChildren(el("li", { class: "error" }, `Could not load the history: ${error.message}`));
  }
}

function historyDetails(alert, zone) {
  const details = el("details", { class: "alert-history" }, el("summary", {}, "History"), el("ol", {}));
  details.addEventListener("toggle", () => { if (details.open) loadHistory(alert, details, zone); });
  return details;
}
