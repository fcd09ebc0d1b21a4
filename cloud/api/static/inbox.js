// The alert inbox across the team's patients (GET /v1/inbox): what needs a human, most severe then newest
// first, including alerts that resolved before anyone reviewed them. Acting on one takes it out of the list.

import { alertCard, needsHuman } from "./alerts.js";
import { api } from "./api.js";
import { $, SEVERITY_LABEL, el, plural, status } from "./format.js";

const INBOX_PAGE = 100;
const VIEWS = { "": "All", mine: "Assigned to me", unassigned: "Unassigned" };

export function inboxState(search) {
  const params = new URLSearchParams(search);
  const assigned = params.get("assigned");
  return { assigned: assigned === "me" || assigned === "unassigned" ? assigned : "" };
}

/** The count in the navigation, kept current by the live stream. */
export function showInboxCount(total) {
  const badge = $("inbox-count");
  badge.textContent = total > 0 ? String(total) : "";
  badge.hidden = !(total > 0);
  // Words for screen readers after the visible count, not an aria-label: a name that hides the visible text
  // ("Inbox 2") fails WCAG 2.5.3 (label in name) for those who speak to their browser.
  $("inbox-count-words").textContent = total > 0 ? ` ${total === 1 ? "alert" : "alerts"} needing a person` : "";
}

export async function refreshInboxCount() {
  const answer = await api("/v1/inbox?limit=1");
  showInboxCount(answer.total);
}

function summaryLine(answer) {
  const counts = answer.counts ?? {};
  const parts = ["critical", "warning", "info"].filter((s) => counts[s] > 0).map((s) => `${counts[s]} ${SEVERITY_LABEL[s].toLowerCase()}`);
  if (counts.needs_review > 0) parts.push(`${counts.needs_review} resolved before review`);
  return `${plural(answer.total, "alert")} need${answer.total === 1 ? "s" : ""} a person${parts.length ? `: ${parts.join(", ")}` : ""}.`;
}

export async function showInbox(search) {
  const state = inboxState(search);
  $("inbox-views").replaceChildren(...Object.entries(VIEWS).map(([value, label]) => el("a", {
    href: value ? `#/inbox?assigned=${value === "mine" ? "me" : value}` : "#/inbox", class: "chip",
    "aria-current": (value === "mine" ? "me" : value) === state.assigned ? "page" : null }, label)));
  status("Loading the inbox…");
  const query = new URLSearchParams({ limit: String(INBOX_PAGE) });
  if (state.assigned) query.set("assigned", state.assigned);
  const answer = await api(`/v1/inbox?${query}`);
  const list = $("inbox-list");
  const card = (alert) => alertCard(alert, { showPatient: true, onChange: (updated) => changed(alert, updated) });
  const changed = (alert, updated) => {
    // Acknowledged or reviewed: done here. Assigned or commented: still waiting, shown with its change.
    const shown = list.querySelector(`li[data-alert-id="${updated.id}"]`);
    if (!needsHuman(updated)) {
      shown?.remove();
      answer.total = Math.max(0, answer.total - 1);
      showInboxCount(answer.total);
      $("inbox-summary").textContent = summaryLine(answer);
      $("inbox-empty").hidden = list.children.length > 0;
      list.querySelector("li button")?.focus(); // the keyboard user lands on the next alert
    } else {
      const fresh = card({ ...alert, ...updated });
      shown?.replaceWith(fresh);
      fresh.focus();
    }
  };
  const render = (alerts) => list.replaceChildren(...alerts.map(card));
  render(answer.alerts);
  $("inbox-summary").textContent = summaryLine(answer);
  $("inbox-empty").hidden = answer.alerts.length > 0;
  $("inbox-more").hidden = answer.total <= answer.alerts.length;
  $("inbox-more").textContent = `Showing the first ${answer.alerts.length}; act on these to see the rest.`;
  if (!state.assigned) showInboxCount(answer.total);
  status("");
  return answer;
}
