// The printable month-end report: /ui/report?team=TEAM&month=YYYY-MM (sign in as on /ui; development:
// /ui/report?team=...#token=...). Data from GET /v1/care-teams/{team}/reports/rpm with the page's token.
import { ApiError, api, chooseAuth, takeTokenFromUrl, token } from "/ui/static/api.js";
import { $, el } from "/ui/static/format.js";

function say(message, isError = false) {
  const node = $("status");
  node.textContent = message;
  node.classList.toggle("error", isError);
}

function shortTime(iso, zone) {
  if (!iso) return "—";
  return new Date(iso).toLocaleString("en-GB", { timeZone: zone, day: "2-digit", month: "short",
    hour: "2-digit", minute: "2-digit" });
}

function periodCell(row) {
  const cell = el("td");
  for (const p of row.periods) {
    const note = p.ends_in_month ? (p.complete ? "" : " (running)") : " (reported next month)";
    cell.append(el("div", {}, `${p.start} – ${p.end}${note}`));
  }
  return cell;
}

function daysCell(row, target) {
  const cell = el("td", { class: "num" });
  for (const p of row.periods) {
    const devices = Object.entries(p.devices).map(([uid, n]) => `${uid}: ${n}`).join(", ");
    cell.append(el("div", { class: p.days_with_data < target ? "short" : "", title: devices },
      String(p.days_with_data)));
  }
  return cell;
}

function render(report) {
  const tbody = $("report-table").querySelector("tbody");
  tbody.replaceChildren();
  const target = 16;
  for (const row of report.patients) {
    const management = Object.entries(row.management_codes).map(([c, u]) => (u > 1 ? `${c} ×${u}` : c)).join(", ");
    const device = row.periods.map((p) => [p.setup_code, p.device_supply_code].filter(Boolean).join(" + ") || "—");
    tbody.append(el("tr", { "data-patient-id": row.patient_id },
      el("td", {}, el("div", {}, row.display_name || row.patient_id), el("div", { class: "muted" }, row.patient_id)),
      periodCell(row),
      daysCell(row, target),
      el("td", {}, ...device.map((d) => el("div", {}, d))),
      el("td", { class: "num" }, String(row.minutes)),
      el("td", {}, row.interactive_communication ? "yes" : "no"),
      el("td", {}, row.codes.join(", ") || "—", management || !row.management_note ? "" :
        el("div", { class: "muted" }, row.management_note)),
      el("td", {}, row.people.join(", ") || "—"),
      el("td", {}, el("div", {}, shortTime(row.first_reading_at, row.timezone)),
        el("div", {}, shortTime(row.last_reading_at, row.timezone)))));
  }
  const rules = $("report-rules").querySelector("ul");
  rules.replaceChildren();
  for (const [programme, list] of Object.entries(report.rules)) {
    for (const rule of list) {
      rules.append(el("li", {}, `${programme} ${rule.code} (${rule.kind}): ${rule.description}. Source: ${rule.source}`));
    }
  }
  $("report-title").textContent = report.month;
  $("report-team-name").textContent = report.care_team_id;
  $("report-count").textContent = `${report.patients.length} enrolled patients`;
  $("report-generated").textContent = new Date(report.generated_at).toISOString().slice(0, 16).replace("T", " ") + " UTC";
  for (const id of ["report-header", "report-table", "report-rules"]) $(id).hidden = false;
  document.body.dataset.state = "ready";
}

async function csv(team, month) {
  const response = await fetch(`/v1/care-teams/${encodeURIComponent(team)}/reports/rpm?month=${month}&format=csv`,
    { headers: { Authorization: `Bearer ${token()}` } });
  if (!response.ok) throw new ApiError(response.status, response.statusText);
  const url = URL.createObjectURL(await response.blob());
  const link = el("a", { href: url, download: `rpm-${team}-${month}.csv` });
  document.body.append(link);
  link.click();
  link.remove();
  URL.revokeObjectURL(url);
}

async function show(team, month) {
  say("Loading…");
  try {
    render(await api(`/v1/care-teams/${encodeURIComponent(team)}/reports/rpm?month=${encodeURIComponent(month)}`));
    say("");
  } catch (error) {
    say(error instanceof ApiError ? `Could not load the report: ${error.message}` : String(error), true);
    document.body.dataset.state = "error";
  }
}

async function start() {
  await chooseAuth();
  takeTokenFromUrl();
  const params = new URLSearchParams(location.search);
  const now = new Date();
  $("report-team").value = params.get("team") || "";
  $("report-month").value = params.get("month") || `${now.getFullYear()}-${String(now.getMonth() + 1).padStart(2, "0")}`;
  $("report-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const url = new URL(location.href);
    url.searchParams.set("team", $("report-team").value);
    url.searchParams.set("month", $("report-month").value);
    history.replaceState(null, "", `${url.pathname}${url.search}`);
    show($("report-team").value, $("report-month").value);
  });
  $("report-print").addEventListener("click", () => window.print());
  $("report-csv").addEventListener("click", (event) => {
    event.preventDefault();
    csv($("report-team").value, $("report-month").value).catch((error) => say(String(error), true));
  });
  if (!token()) {
    say("Sign in on the workspace (/ui) first, or open this page with #token=… in development.", true);
    return;
  }
  if ($("report-team").value) show($("report-team").value, $("report-month").value);
}

start();
