// The care-team workspace over the /v1 API: routing between the triage panel, the inbox and a patient, the
// sign-in view, live updates. Every view lives in the address (#/?filter=critical, #/inbox, #/patients/ID?days=14,
// #/alerts/ID?link=TOKEN), so back and forward work and a link opens the same view.

import { ApiError, api, auth, chooseAuth, takeTokenFromUrl, token, usePastedToken, whenUnauthorised } from "./api.js";
import { showFleet, showGateway } from "./fleet.js";
import { $, status } from "./format.js";
import { refreshInboxCount, showInbox } from "./inbox.js";
import { alertMeEnabled, onAlertEvent, setAlertMe, startLive, stopLive } from "./live.js";
import { showPanel, useCatalogue } from "./panel.js";
import { refreshPatientAlerts, showPatient } from "./patient.js";

const RETURN_KEY = "rpm.return-to"; // where a deep link pointed before the sign-in round trip
const VIEWS = ["sign-in", "panel", "inbox", "patient", "fleet", "gateway"];
const scrolls = new Map(); // panel address -> scroll position, so going back lands where the user was
let shownPanel = null;

function show(view) {
  for (const id of VIEWS) $(id).hidden = id !== view;
  $("sign-out").hidden = view === "sign-in";
  $("alert-me-label").hidden = view === "sign-in";
  $("nav-panel").toggleAttribute("aria-current", view === "panel");
  $("nav-inbox").toggleAttribute("aria-current", view === "inbox");
  if (view === "panel") $("nav-panel").setAttribute("aria-current", "page");
  if (view === "inbox") $("nav-inbox").setAttribute("aria-current", "page");
  $("nav-gateways").toggleAttribute("aria-current", view === "fleet" || view === "gateway");
  if (view === "fleet") $("nav-gateways").setAttribute("aria-current", "page");
}

function showSignIn(message = "") {
  show("sign-in");
  document.body.dataset.view = "sign-in";
  status("");
  $("sign-in-oidc").hidden = !auth.configured;
  $("sign-in-paste").hidden = auth.configured;
  const error = $("sign-in-error");
  error.textContent = message;
  error.hidden = !message;
}

function parseHash() {
  const hash = location.hash.replace(/^#/, "");
  const [path, search = ""] = hash.split(/\?(.*)/s);
  return { path: path || "/", search };
}

async function openAlertLink(alertId, search) {
  const link = new URLSearchParams(search).get("link");
  let target = null;
  if (link) {
    try {
      target = await api(`/v1/alert-links/${encodeURIComponent(link)}/open`, { method: "POST", body: {} });
    } catch (error) {
      if (!(error instanceof ApiError) || error.status === 401) throw error;
      status("The link was already used or has expired; showing the alert if you may see it.", true);
    }
  }
  const alertNumber = target?.alert_id ?? alertId;
  const patientId = target?.patient_id ?? (await api(`/v1/alerts/${alertNumber}`)).patient_id;
  // The link's token leaves the address (and the history) once used.
  history.replaceState(null, "", `${location.pathname}#/patients/${encodeURIComponent(patientId)}?alert=${alertNumber}`);
  return route();
}

async function route() {
  takeTokenFromUrl();
  if (!token()) {
    if (location.hash.startsWith("#/alerts/")) sessionStorage.setItem(RETURN_KEY, location.hash);
    showSignIn();
    return;
  }
  const { path, search } = parseHash();
  const patient = path.match(/^\/patients\/(.+)$/);
  const alert = path.match(/^\/alerts\/(\d+)$/);
  const gateway = path.match(/^\/gateways\/(.+)$/);
  document.body.dataset.view = "loading";
  try {
    if (alert) {
      await openAlertLink(Number(alert[1]), search);
      return;
    }
    if (patient) {
      show("patient");
      window.scrollTo(0, 0);
      await showPatient(decodeURIComponent(patient[1]), search);
      document.body.dataset.view = "patient";
    } else if (gateway) {
      show("gateway");
      window.scrollTo(0, 0);
      await showGateway(decodeURIComponent(gateway[1]));
      document.body.dataset.view = "gateway";
    } else if (path === "/gateways") {
      show("fleet");
      window.scrollTo(0, 0);
      await showFleet(search);
      document.body.dataset.view = "fleet";
    } else if (path === "/inbox") {
      show("inbox");
      window.scrollTo(0, 0);
      await showInbox(search);
      document.body.dataset.view = "inbox";
    } else {
      show("panel");
      await showPanel(search);
      shownPanel = location.hash || "#/";
      window.scrollTo(0, scrolls.get(shownPanel) ?? 0);
      document.body.dataset.view = "panel";
      refreshInboxCount().catch(() => {});
    }
  } catch (error) {
    if (error.status === 401) return; // already back at sign-in, with the reason
    document.body.dataset.view = "error";
    status(error.status === 404 ? "No such patient, alert or gateway, or not shared with your care team." : `Error: ${error.message}`,
      true);
  }
}

// Live events: whatever view is on screen is refreshed once per burst, not once per event.
let refreshTimer = null;
function onLive(event) {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => {
    const view = document.body.dataset.view;
    const { path, search } = parseHash();
    if (view === "panel") {
      const y = window.scrollY;
      showPanel(search).then(() => window.scrollTo(0, y)).catch(() => {});
    } else if (view === "inbox") showInbox(search).catch(() => {});
    else if (view === "patient" && path === `/patients/${encodeURIComponent(event.patient_id)}`) refreshPatientAlerts();
    if (view !== "inbox") refreshInboxCount().catch(() => {});
  }, 300);
}

function signedIn() {
  const back = sessionStorage.getItem(RETURN_KEY);
  if (back) {
    sessionStorage.removeItem(RETURN_KEY);
    history.replaceState(null, "", `${location.pathname}${back}`);
  }
  startLive();
}

async function start() {
  history.scrollRestoration = "manual"; // the panel's position is restored by hand, once its rows are there
  whenUnauthorised((message) => {
    stopLive();
    if (!auth.configured) auth.signOut();
    showSignIn(message);
  });
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const given = $("token-input").value.trim();
    if (!given) return;
    $("token-input").value = "";
    if (!location.hash.startsWith("#/alerts/")) history.replaceState(null, "", `${location.pathname}#/`);
    usePastedToken(given); // auth.onChange routes
  });
  $("sign-in-button").addEventListener("click", () => {
    if (location.hash.startsWith("#/alerts/")) sessionStorage.setItem(RETURN_KEY, location.hash);
    auth.signIn();
  });
  $("sign-out").addEventListener("click", () => {
    stopLive();
    auth.signOut();
    showSignIn();
  });
  $("alert-me").checked = alertMeEnabled();
  $("alert-me").addEventListener("change", (event) => setAlertMe(event.target.checked).catch(() => {}));
  window.addEventListener("scroll", () => {
    if (document.body.dataset.view === "panel" && shownPanel) scrolls.set(shownPanel, window.scrollY);
  }, { passive: true });
  onAlertEvent(onLive);
  try {
    useCatalogue(await (await fetch("/ui/metrics.json")).json());
  } catch {
    useCatalogue({});
  }
  await chooseAuth();
  window.addEventListener("hashchange", route);
  auth.onChange(() => {
    if (token()) {
      signedIn();
      if (document.body.dataset.view === "sign-in") route();
    } else {
      stopLive();
      showSignIn();
    }
  });
  takeTokenFromUrl();
  if (token()) signedIn();
  await route();
}

start();
