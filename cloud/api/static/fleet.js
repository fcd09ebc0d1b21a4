// The gateway fleet in the workspace (issue 19): the fleet view (#/gateways, filters and page in the address),
// one gateway (#/gateways/ID), and on a patient's page the gateways claimed for them with a claim-code form.
// Each gateway block shows its devices waiting to be confirmed (what each is, its signal in words, the user slot
// of a two-user cuff) with Confirm / Ignore, its confirmed devices with Unpair, and Release / Rotate credentials.
// Everything goes through /v1/gateways, so the API's authorisation and audit apply; this file only words it.

import { ApiError, api } from "./api.js";
import { $, el, formatTime, humanise, plural, status, timeElement } from "./format.js";

const PAGE = 50;
export const FILTERS = {
  offline_24h: { label: "Offline > 24 h", param: "offline_over_s", seconds: 86_400,
    empty: "No gateway has been offline for more than 24 hours." },
  backlog_1h: { label: "Backlog > 1 h", param: "backlog_over_s", seconds: 3_600,
    empty: "No gateway has readings waiting for more than an hour." },
};
const CROCKFORD = /^[0-9ABCDEFGHJKMNPQRSTVWXYZ]{12}$/;
// The gateway's local page uses the same thresholds (gateway/local_page/render.py), so both say the same thing.
const STRONG_DBM = -65;
const WEAK_DBM = -80;
const PROBLEM_WORDS = {
  not_online: "not online", never_connected: "never connected", uplink_error: "cannot reach the cloud",
  component_errors: "a part of the gateway failed", storage_full: "storage full", config_rejected: "settings refused",
  device_problems: "a device needs attention", battery_low: "battery low", device_error: "device error",
  quarantined_records: "records it could not read", clock_off: "clock off",
};

let shownFleet = 0; // which render is current: a slow answer for a view the user left is dropped
let formCount = 0; // unique ids for repeated forms (several gateways on one patient page)

// --- words ---------------------------------------------------------------------------------------------------

/** "less than a minute", "25 min", "3 h", "2 days": a span of time as people say it. */
export function duration(seconds) {
  const minutes = Math.floor(seconds / 60);
  if (minutes < 1) return "less than a minute";
  if (minutes < 60) return `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours} h`;
  return plural(Math.floor(hours / 24), "day");
}

function since(iso) {
  return iso ? Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000) : null;
}

/** "Online for 3 h", "Offline for 2 days", "Not reporting for 40 min", "Never connected". */
export function connectionWords(g) {
  const span = since(g.since);
  const lasting = span === null ? "" : ` for ${duration(span)}`;
  switch (g.state) {
    case "online": return `Online${lasting}`;
    case "offline": return `Offline${lasting}`;
    case "not_reporting": return `Not reporting${lasting}`;
    case "never_connected": return g.last_poll_at
      ? `Never connected; last checked in ${duration(since(g.last_poll_at))} ago` : "Never connected";
    default: return "State unknown";
  }
}

/** "12 readings waiting, oldest 3 h"; "Nothing waiting"; "Backlog unknown". */
export function backlogWords(g) {
  if (g.outbox_depth === null || g.outbox_depth === undefined) return "Backlog unknown";
  if (g.outbox_depth === 0) return "Nothing waiting";
  const oldest = typeof g.outbox_oldest_age_s === "number" ? `, oldest ${duration(g.outbox_oldest_age_s)}` : "";
  return `${plural(g.outbox_depth, "reading")} waiting${oldest}`;
}

/** Which settings the gateway runs against the newest set in the cloud, and a refusal with its reason. */
export function configWords(config) {
  const { running_version: running, latest_version: latest, rejected } = config ?? {};
  let words;
  if (latest === null || latest === undefined) words = running ? `Version ${running}` : "Its own settings only";
  else if (running === latest) words = `Version ${running} (the latest)`;
  else if (running === null || running === undefined) words = `Version ${latest} not applied yet`;
  else words = `Running version ${running}; version ${latest} not applied yet`;
  const refused = rejected ? `Version ${rejected.version} refused: ${rejected.reason}` : null;
  return { words, refused };
}

export function signalWords(candidate) {
  if (candidate.transport === "usb") return "Plugged in by USB";
  if (candidate.rssi === null || candidate.rssi === undefined) return "Bluetooth, signal strength not known";
  if (candidate.rssi < WEAK_DBM) return `Bluetooth, weak signal (${candidate.rssi} dBm): maybe a neighbour's`;
  return `Bluetooth, ${candidate.rssi >= STRONG_DBM ? "strong" : "medium"} signal (${candidate.rssi} dBm)`;
}

function kindOf(profile) {
  return humanise(String(profile ?? "device").split(".").pop()); // "ble.blood_pressure" -> "Blood pressure"
}

function candidateName(c) {
  return c.type || kindOf(c.profile);
}

function candidateLabel(c) {
  return [...new Set([c.make, c.model || c.name].filter(Boolean))].join(" ");
}

function problemWords(problems) {
  return (problems ?? []).map((p) => PROBLEM_WORDS[p] ?? humanise(p));
}

// --- a confirmation dialog -------------------------------------------------------------------------------------

/** A modal <dialog>: resolves true when the person presses ``confirm``; Escape or Cancel is false. */
export function askFirst(title, body, confirm) {
  return new Promise((resolve) => {
    const n = ++formCount;
    const cancelButton = el("button", { type: "button", class: "secondary", autofocus: true }, "Cancel");
    const confirmButton = el("button", { type: "button", class: "danger" }, confirm);
    const dialog = el("dialog", { class: "confirm-dialog", "aria-labelledby": `ask-title-${n}`,
      "aria-describedby": `ask-body-${n}` },
    el("h2", { id: `ask-title-${n}` }, title), el("p", { id: `ask-body-${n}` }, body),
    el("div", { class: "dialog-actions" }, cancelButton, confirmButton));
    cancelButton.addEventListener("click", () => dialog.close("cancel"));
    confirmButton.addEventListener("click", () => dialog.close("confirm"));
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "confirm");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

// --- claiming --------------------------------------------------------------------------------------------------

/** As the API reads a typed code (cloud/api/routes/gateways.py): no spaces or dashes, upper case, I/L→1, O→0. */
export function normaliseCode(code) {
  return code.replace(/[\s-]/g, "").toUpperCase().replace(/[IL]/g, "1").replace(/O/g, "0");
}

function claimError(error) {
  if (!(error instanceof ApiError)) return `The claim did not reach the server: ${error.message}`;
  if (error.status === 404) {
    return "No gateway is waiting to be claimed with this code. Check the code on the gateway's label; the gateway "
      + "must be switched on and connected to the internet for a minute first.";
  }
  if (error.status === 429) return "Too many wrong claim codes from you: wait a few minutes, then try again.";
  if (error.status === 403) return "You may look at this patient but not claim gateways for them.";
  if (error.status === 409) return `This gateway cannot be claimed: ${error.message}`;
  return `The claim was refused: ${error.message}`;
}

/** "Claim a gateway for this patient": the code from the label, clear errors, ``onClaimed(answer)`` after. */
export function claimForm(patientId, onClaimed, heading = "h3") {
  const n = ++formCount;
  const ids = { title: `claim-title-${n}`, input: `claim-code-${n}`, hint: `claim-hint-${n}`, error: `claim-error-${n}` };
  const input = el("input", { id: ids.input, name: "code", type: "text", autocomplete: "off", spellcheck: "false",
    autocapitalize: "characters", maxlength: "40", required: true, "aria-describedby": `${ids.hint} ${ids.error}` });
  const error = el("p", { id: ids.error, class: "error claim-error", role: "alert" });
  const button = el("button", { type: "submit" }, "Claim");
  const form = el("form", { class: "claim-form", "aria-labelledby": ids.title },
    el(heading, { id: ids.title }, "Claim a gateway for this patient"),
    el("p", { id: ids.hint, class: "hint" }, "Type the claim code printed on the gateway's label (12 letters and "
      + "digits; dashes and spaces do not matter). The gateway must be switched on and connected to the internet."),
    el("div", { class: "claim-row" }, el("label", { for: ids.input }, "Claim code"), input, button), error);
  const fail = (message) => {
    error.textContent = message;
    input.setAttribute("aria-invalid", "true");
    input.focus();
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    input.removeAttribute("aria-invalid");
    const typed = normaliseCode(input.value);
    if (!CROCKFORD.test(typed)) {
      // Caught here, not sent: a typo of the wrong length is not a wrong guess the server should count.
      fail(`A claim code has 12 letters and digits, as on the label (like 7KQ4-M2XD-9H3A); this one has ${typed.length}`
        + `${/[^0-9A-Z]/.test(typed) ? " and characters a code never has" : ""}.`);
      return;
    }
    button.disabled = true;
    try {
      const answer = await api("/v1/gateways/claim", { method: "POST", body: { code: input.value, patient_id: patientId } });
      input.value = "";
      await onClaimed(answer);
    } catch (err) {
      if (err.status === 401) throw err;
      fail(claimError(err));
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

// --- one gateway -----------------------------------------------------------------------------------------------

function fact(term, ...value) {
  return el("div", {}, el("dt", {}, term), el("dd", {}, ...value));
}

function gatewayFacts(g, zone, withPatient, patientLabel) {
  const { words, refused } = configWords(g.config);
  const problems = problemWords((g.problems ?? []).filter((p) => !["not_online", "never_connected",
    "device_problems", "config_rejected"].includes(p)));
  if (g.uplink_error) problems.push(g.uplink_error);
  for (const [part, message] of Object.entries(g.component_errors ?? {})) problems.push(`${part}: ${message}`);
  return el("dl", { class: "facts gateway-facts" },
    withPatient ? fact("Patient", g.patient_id ? el("a", { href: `#/patients/${encodeURIComponent(g.patient_id)}` },
      patientLabel ?? g.patient_id) : el("span", { class: "none" }, "Not claimed")) : null,
    fact("Connection", el("span", { class: `gateway-state ${g.online ? "online" : "offline"}`, dataset: { state: g.state } },
      el("span", { class: "icon", "aria-hidden": "true" }, g.online ? "●" : "○"), connectionWords(g)),
    g.last_contact_at ? el("small", { class: "when" }, "Last heard ", timeElement(g.last_contact_at, zone)) : null),
    fact("Software", g.software_version ?? el("span", { class: "none" }, "not reported")),
    fact("Settings", words, refused ? el("span", { class: "problem config-refused" }, refused) : null),
    fact("Waiting to upload", el("span", { class: "backlog" }, backlogWords(g))),
    fact("Credentials", g.credentials?.kind ? `${humanise(g.credentials.kind)}${g.credentials.delivered_at
      ? ", in use" : ", not collected yet"}` : el("span", { class: "none" }, "none issued")),
    problems.length ? fact("Problems", el("span", { class: "problem" }, problems.join("; "))) : null);
}

function candidateItem(c, patientLabel, act, level, zone) {
  const name = candidateName(c);
  const label = candidateLabel(c);
  const heard = c.first_heard ? formatTime(new Date(c.first_heard), zone) : null;
  const slots = c.user_slots && c.user_slots > 1 ? c.user_slots : 0;
  const n = ++formCount;
  const slotPicker = slots ? el("fieldset", { class: "slot-choice" },
    el("legend", {}, `Which user of this ${name.toLowerCase()} is ${patientLabel}?`),
    ...Array.from({ length: slots }, (_, i) => el("label", {}, el("input", { type: "radio", name: `slot-${n}`,
      value: String(i + 1), checked: c.user_index === i + 1 }), ` User ${i + 1}`))) : null;
  const error = el("p", { class: "error", role: "alert" });
  const pending = c.pending_decision === "confirm" ? "Confirmed: the gateway starts reading it at its next update."
    : c.pending_decision === "ignore" ? "Ignored: the gateway stops proposing it at its next update." : null;
  const confirm = el("button", { type: "button", class: "confirm" }, "Confirm", el("span", { class: "visually-hidden" },
    ` ${name}${label ? ` ${label}` : ""}`));
  const ignore = el("button", { type: "button", class: "secondary ignore" }, "Ignore (not this patient's)",
    el("span", { class: "visually-hidden" }, ` ${name}${label ? ` ${label}` : ""}`));
  confirm.addEventListener("click", () => {
    let userIndex = null;
    if (slotPicker) {
      const chosen = slotPicker.querySelector("input:checked");
      if (!chosen) {
        error.textContent = `Choose which user of the device ${patientLabel} is first.`;
        slotPicker.querySelector("input")?.focus();
        return;
      }
      userIndex = Number(chosen.value);
    }
    act(c, "confirm", userIndex, error);
  });
  ignore.addEventListener("click", () => act(c, "ignore", null, error));
  slotPicker?.addEventListener("change", () => { error.textContent = ""; });
  return el("li", { class: "candidate", dataset: { uid: c.uid, pending: c.pending_decision ?? "" } },
    el(`h${Math.min(level, 6)}`, {}, name, label ? el("span", { class: "make" }, ` ${label}`) : null),
    el("p", { class: "signal" }, signalWords(c)),
    el("p", { class: "when" }, `${c.uid}${heard ? ` · first heard ${heard}` : ""}`),
    pending ? el("p", { class: "pending" }, pending) : null,
    pending ? null : slotPicker,
    pending ? null : el("div", { class: "candidate-actions" }, confirm, ignore),
    error);
}

function deviceItem(uid, entry, reported, proposed, unpair, zone) {
  const problems = problemWords(reported?.problems);
  if (reported?.error) problems.push(reported.error);
  const battery = reported?.battery_percent;
  // Named by what the gateway reports of it, else by what it announced as a candidate (before its first status).
  const name = reported?.profile ? kindOf(reported.profile) : proposed ? candidateName(proposed) : "Device";
  const button = el("button", { type: "button", class: "secondary unpair" }, "Unpair",
    el("span", { class: "visually-hidden" }, ` ${name} ${uid}`));
  button.addEventListener("click", () => unpair(uid, name));
  return el("li", { class: "paired-device", dataset: { uid, problems: (reported?.problems ?? []).join(" ") } },
    el("div", {}, el("strong", {}, name), " ", el("span", { class: "when uid" }, uid),
      entry?.user_index ? el("span", { class: "slot" }, ` User ${entry.user_index} on the device`) : null),
    el("div", { class: "device-state" },
      battery === null || battery === undefined ? null : el("span", {}, `Battery ${battery} %`),
      reported?.last_seen ? el("span", { class: "when" }, "Last heard ", timeElement(reported.last_seen, zone)) : null,
      problems.length ? el("span", { class: "problem" }, problems.join("; "))
        : el("span", { class: "none" }, reported ? "no problems" : "not heard yet")),
    button);
}

/**
 * One gateway: its facts, devices waiting to be confirmed, confirmed devices, and actions. ``onChanged(kind)`` runs
 * after a change ("released", "decided", "rotated") so the caller can draw the block again.
 */
export async function gatewayBlock(g, { patientLabel, withPatient = false, onChanged, zone, level = 4 }) {
  const id = encodeURIComponent(g.gateway_id);
  const [candidates, config] = await Promise.all([api(`/v1/gateways/${id}/candidates`),
    api(`/v1/gateways/${id}/config`)]);
  const box = el("section", { class: "gateway-block", dataset: { gatewayId: g.gateway_id, state: g.state },
    "aria-labelledby": `gw-title-${++formCount}` });
  const titleId = box.getAttribute("aria-labelledby");
  const say = el("p", { class: "gateway-message", role: "status" });
  const tell = (message, isError = false) => {
    say.textContent = message;
    say.classList.toggle("error", isError);
  };
  const whose = patientLabel ?? g.patient_id ?? "this patient";

  const act = async (c, decision, userIndex, error) => {
    error.textContent = "";
    const path = `/v1/gateways/${id}/devices/${encodeURIComponent(c.uid)}/${decision}`;
    try {
      await api(path, { method: "POST", body: userIndex === null ? {} : { user_index: userIndex } });
    } catch (err) {
      if (err.status === 401) throw err;
      error.textContent = err.status === 403 ? "You may see this gateway but not decide for it."
        : `Not saved: ${err.message}`;
      return;
    }
    await onChanged?.("decided", decision === "confirm"
      ? `Confirmed: ${candidateName(c)}. Its readings go to ${whose}'s record.`
      : `Ignored: ${candidateName(c)}. The gateway will not read it.`);
  };
  const unpair = async (uid, name) => {
    const yes = await askFirst(`Unpair this ${name.toLowerCase()}?`, `The gateway stops reading ${uid} and it is no `
      + `longer assigned to ${whose}. Readings already received stay in the record.`, "Unpair");
    if (!yes) return;
    try {
      await api(`/v1/gateways/${id}/devices/${encodeURIComponent(uid)}/unpair`, { method: "POST", body: {} });
    } catch (err) {
      if (err.status === 401) throw err;
      tell(`Not unpaired: ${err.message}`, true);
      return;
    }
    await onChanged?.("decided", `Unpaired: ${name} ${uid}. Its readings so far stay in the record.`);
  };
  const release = async () => {
    const yes = await askFirst(`Release gateway ${g.gateway_id}?`, `It stops sending readings for ${whose} and its `
      + "confirmed devices are unpaired; everything already received stays in the record. It can then be claimed "
      + "again with its code.", "Release");
    if (!yes) return;
    try {
      const answer = await api(`/v1/gateways/${id}/claim`, { method: "DELETE" });
      await onChanged?.("released", `Gateway ${g.gateway_id} released from ${whose}`
        + `${answer.devices_unpaired.length ? `; ${plural(answer.devices_unpaired.length, "device")} unpaired` : ""}.`);
    } catch (err) {
      if (err.status === 401) throw err;
      tell(`Not released: ${err.message}`, true);
    }
  };
  const rotate = async () => {
    const yes = await askFirst(`New credentials for gateway ${g.gateway_id}?`, "The gateway collects them at its next "
      + "check-in (about a minute when it is online); its old ones stop working once it is back with the new ones.",
    "Issue new credentials");
    if (!yes) return;
    try {
      const answer = await api(`/v1/gateways/${id}/credentials/rotate`, { method: "POST", body: {} });
      await onChanged?.("rotated", answer.kind === "certificate"
        ? "A new certificate is signed at the gateway's next check-in."
        : "New credentials issued: the gateway collects them at its next check-in.");
    } catch (err) {
      if (err.status === 401) throw err;
      tell(`No new credentials: ${err.message}`, true);
    }
  };

  const waiting = candidates.candidates ?? [];
  const confirmed = (config.config?.devices?.confirmed ?? []).filter((c) => c && c.uid);
  const reported = new Map((g.devices ?? []).map((d) => [String(d.uid ?? "").toLowerCase(), d]));
  const proposed = new Map(waiting.map((c) => [String(c.uid).toLowerCase(), c]));
  const undecided = waiting.filter((c) => !c.pending_decision).length;
  const releaseButton = el("button", { type: "button", class: "secondary release" }, "Release the gateway");
  const rotateButton = el("button", { type: "button", class: "secondary rotate" }, "Rotate credentials");
  releaseButton.addEventListener("click", release);
  rotateButton.addEventListener("click", rotate);
  box.append(
    el(`h${level}`, { id: titleId }, `Gateway ${g.gateway_id}`),
    gatewayFacts(g, zone, withPatient, patientLabel),
    el(`h${level + 1}`, {}, "Devices waiting to be confirmed", el("span", { class: "count-words" },
      undecided ? ` (${undecided})` : "")),
    waiting.length ? el("ul", { class: "candidate-list" }, ...waiting.map((c) => candidateItem(c, whose, act, level + 2, zone)))
      : el("p", { class: "none" }, "None. Switch the device on near the gateway (or plug it in) and take a "
        + "measurement: it appears here within a minute."),
    el(`h${level + 1}`, {}, "Confirmed devices"),
    confirmed.length ? el("ul", { class: "paired-list" }, ...confirmed.map((c) => deviceItem(c.uid, c,
      reported.get(String(c.uid).toLowerCase()), proposed.get(String(c.uid).toLowerCase()), unpair, zone)))
      : el("p", { class: "none" }, "None confirmed from the workspace yet."),
    g.claimed ? el("div", { class: "gateway-actions" }, rotateButton, releaseButton) : null,
    say);
  return box;
}

// --- the fleet view ------------------------------------------------------------------------------------------

export function fleetState(search) {
  const params = new URLSearchParams(search);
  const filters = [...new Set(params.getAll("filter").filter((f) => f in FILTERS))];
  const page = Math.max(1, Math.min(1_000_000, Number.parseInt(params.get("page") ?? "1", 10) || 1));
  return { filters, page };
}

function fleetHash(state) {
  const params = new URLSearchParams();
  for (const f of state.filters) params.append("filter", f);
  if (state.page > 1) params.set("page", String(state.page));
  const query = params.toString();
  return `#/gateways${query ? `?${query}` : ""}`;
}

function fleetRow(g) {
  const { words, refused } = configWords(g.config);
  const devices = g.devices ?? [];
  const gatewayProblems = problemWords((g.problems ?? []).filter((p) => ["uplink_error", "component_errors",
    "storage_full"].includes(p)));
  return el("tr", { dataset: { gatewayId: g.gateway_id, state: g.state, problems: (g.problems ?? []).join(" ") } },
    el("th", { scope: "row" }, el("a", { href: `#/gateways/${encodeURIComponent(g.gateway_id)}` }, g.gateway_id),
      gatewayProblems.length ? el("small", { class: "problem" }, gatewayProblems.join("; ")) : null),
    el("td", { dataset: { label: "Patient" } }, g.patient_id ? el("a", { href: `#/patients/${encodeURIComponent(g.patient_id)}` },
      g.patient_id) : el("span", { class: "none" }, "Not claimed")),
    el("td", { dataset: { label: "Connection" }, class: "connection" },
      el("span", { class: `gateway-state ${g.online ? "online" : "offline"}` },
        el("span", { class: "icon", "aria-hidden": "true" }, g.online ? "●" : "○"), connectionWords(g))),
    el("td", { dataset: { label: "Software" } }, g.software_version ?? el("span", { class: "none" }, "—")),
    el("td", { dataset: { label: "Settings" }, class: "settings" }, words,
      refused ? el("small", { class: "problem config-refused" }, refused) : null),
    el("td", { dataset: { label: "Waiting to upload" }, class: "backlog" }, backlogWords(g)),
    el("td", { dataset: { label: "Devices" }, class: "devices" }, devices.length ? el("ul", { class: "plain" },
      ...devices.map((d) => {
        const problems = problemWords(d.problems);
        return el("li", { dataset: { uid: d.uid } }, kindOf(d.profile),
          ...(problems.length ? [": ", el("span", { class: "problem" }, problems.join(", "))] : []));
      })) : el("span", { class: "none" }, "none reported")),
    el("td", { dataset: { label: "To confirm" }, class: "candidates" }, g.candidates_count
      ? el("a", { href: `#/gateways/${encodeURIComponent(g.gateway_id)}` }, `${g.candidates_count} to confirm`)
      : el("span", { class: "none" }, "none")));
}

function pagingNav(state, answer, label) {
  const first = (state.page - 1) * PAGE + 1;
  const last = first + answer.gateways.length - 1;
  const go = (page) => { location.hash = fleetHash({ ...state, page }); };
  const previous = el("button", { type: "button", class: "secondary", disabled: state.page <= 1 }, "← Previous");
  const next = el("button", { type: "button", class: "secondary", disabled: answer.next_offset === null }, "Next →");
  previous.addEventListener("click", () => go(state.page - 1));
  next.addEventListener("click", () => go(state.page + 1));
  return el("nav", { class: "paging", "aria-label": label }, previous,
    el("span", { class: "range" }, answer.gateways.length ? `Gateways ${first}\u2013${last}` : "No gateways"), next);
}

export async function showFleet(search) {
  const mine = ++shownFleet;
  const state = fleetState(search);
  document.title = "Gateways — RPM";
  $("fleet-filters").replaceChildren(...Object.entries(FILTERS).map(([key, f]) => {
    const on = state.filters.includes(key);
    const chip = el("button", { type: "button", class: "chip", "aria-pressed": on ? "true" : "false",
      dataset: { filter: key } }, f.label);
    chip.addEventListener("click", () => {
      const filters = on ? state.filters.filter((x) => x !== key) : [...state.filters, key];
      location.hash = fleetHash({ filters, page: 1 });
    });
    return chip;
  }));
  status("Loading the gateways…");
  const query = new URLSearchParams({ limit: String(PAGE), offset: String((state.page - 1) * PAGE) });
  for (const key of state.filters) query.set(FILTERS[key].param, String(FILTERS[key].seconds));
  const answer = await api(`/v1/gateways?${query}`);
  if (mine !== shownFleet) return null;
  $("fleet-table").querySelector("tbody").replaceChildren(...answer.gateways.map(fleetRow));
  $("fleet-table").hidden = answer.gateways.length === 0;
  const empty = $("fleet-empty");
  empty.hidden = answer.gateways.length > 0;
  empty.textContent = state.page > 1 ? "No gateways on this page."
    : state.filters.length ? state.filters.map((f) => FILTERS[f].empty).join(" ")
      : "No gateway yet. Claim one from a patient's page with the code on its label.";
  const navs = $("fleet").querySelectorAll(".fleet-paging");
  navs[0].replaceChildren(pagingNav(state, answer, "Pages of gateways (top)"));
  navs[1].replaceChildren(pagingNav(state, answer, "Pages of gateways (bottom)"));
  status("");
  return answer;
}

// --- one gateway's page ----------------------------------------------------------------------------------------

export async function showGateway(gatewayId, notice = null) {
  const mine = ++shownFleet;
  status("Loading the gateway…");
  const g = await api(`/v1/gateways/${encodeURIComponent(gatewayId)}`);
  // The patient by name where the caller may read the record (the fleet answer carries only the id).
  const person = g.patient_id ? await api(`/v1/patients/${encodeURIComponent(g.patient_id)}`).catch((error) => {
    if (error.status === 401) throw error;
    return null;
  }) : null;
  const patientLabel = person?.display_name || g.patient_id;
  const onChanged = async (kind, message) => {
    if (kind === "released") {
      // A released gateway is no longer the care team's: it may not be visible any more, so its page ends here.
      $("gateway-title").textContent = `Gateway ${gatewayId}`;
      $("gateway-body").replaceChildren(el("p", { class: "gateway-message", role: "status" }, message),
        g.patient_id ? el("p", {}, el("a", { href: `#/patients/${encodeURIComponent(g.patient_id)}` },
          `Back to ${patientLabel}`)) : null, el("p", {}, el("a", { href: "#/gateways" }, "All gateways")));
      return;
    }
    await showGateway(gatewayId, message);
  };
  const block = await gatewayBlock(g, { withPatient: true, onChanged, level: 2, patientLabel });
  if (mine !== shownFleet) return null;
  document.title = `Gateway ${g.gateway_id} — RPM`;
  $("gateway-title").textContent = `Gateway ${g.gateway_id}`;
  // The page's own heading names the gateway: the block's title (and the region it names) would repeat it.
  block.querySelector("h2").remove();
  block.removeAttribute("aria-labelledby");
  if (notice) block.querySelector(".gateway-message").textContent = notice;
  const claim = g.patient_id ? claimForm(g.patient_id, (answer) => {
    location.hash = `#/gateways/${encodeURIComponent(answer.gateway_id)}`;
  }) : null;
  if (claim) claim.querySelector("h3").textContent = `Claim another gateway for ${patientLabel}`;
  $("gateway-body").replaceChildren(block, claim ?? "");
  status("");
  return g;
}

// --- on a patient's page ---------------------------------------------------------------------------------------

function patientSection() {
  let box = $("patient-gateways");
  if (box) return box;
  box = el("section", { id: "patient-gateways", class: "no-print", "aria-labelledby": "patient-gateways-title" },
    el("h3", { id: "patient-gateways-title" }, "Gateways and devices to confirm"),
    el("p", { id: "patient-gateways-status", class: "gateway-message", role: "status" }),
    el("div", { id: "patient-gateways-body" }));
  $("equipment").append(box);
  return box;
}

async function gatewaysOf(patientId) {
  // The patient's own route: only this patient's record is read (and audited), not the caller's whole fleet.
  return (await api(`/v1/patients/${encodeURIComponent(patientId)}/gateways`)).gateways;
}

/** The patient's claimed gateways with their candidates, and the claim-code form (needs the readings scope). */
export async function renderPatientGateways(detail, zone, isCurrent) {
  const box = patientSection();
  if (!detail.scopes?.includes("readings")) {
    box.hidden = true;
    return;
  }
  const label = detail.display_name || detail.id;
  const say = (message, isError = false) => {
    $("patient-gateways-status").textContent = message ?? "";
    $("patient-gateways-status").classList.toggle("error", isError);
  };
  const draw = async (message = null) => {
    let gateways;
    try {
      gateways = await gatewaysOf(detail.id);
    } catch (error) {
      if (!(error instanceof ApiError) || error.status === 401) throw error;
      box.hidden = error.status === 403 || error.status === 404; // an API without the route: nothing to offer
      say(`Gateways could not be loaded: ${error.message}`, true);
      return;
    }
    const blocks = await Promise.all(gateways.map((g) => gatewayBlock(g, { patientLabel: label, zone,
      onChanged: (kind, text) => draw(text) })));
    if (!isCurrent()) return;
    box.hidden = false;
    $("patient-gateways-body").replaceChildren(
      ...(blocks.length ? blocks : [el("p", { class: "none" }, "No gateway is claimed for this patient yet.")]),
      claimForm(detail.id, (answer) => draw(`Gateway ${answer.gateway_id} claimed for ${label}. It sets itself up `
        + "at its next check-in (within a minute); the devices it hears then wait here to be confirmed."), "h4"));
    say(message);
  };
  await draw();
}
