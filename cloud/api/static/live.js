// Live alert events from GET /v1/stream (server-sent events) read with fetch and a stream reader, so the token
// travels in the Authorization header as on every other call (EventSource cannot send one). A dropped stream
// reconnects with backoff and Last-Event-ID, so nothing in between is missed. Critical alerts can ring a short
// WebAudio beep and raise a desktop notification: both opt-in, nothing downloaded.

import { token } from "./api.js";
import { $ } from "./format.js";

const OPT_IN_KEY = "rpm.alert-me"; // a preference, not a secret: localStorage is fine
const RETRY_MS = [1_000, 2_000, 5_000, 10_000, 30_000];

let controller = null;
let lastEventId = null;
let listener = () => {};
let audio = null;

export function onAlertEvent(callback) {
  listener = callback;
}

/** Blocks of "field: value" lines separated by a blank line (the text/event-stream format, WHATWG HTML 9.2). */
export function parseEvents(buffer) {
  const events = [];
  const blocks = buffer.split(/\r?\n\r?\n/);
  const rest = blocks.pop();
  for (const block of blocks) {
    const event = { event: "message", data: [], id: null };
    for (const line of block.split(/\r?\n/)) {
      if (!line || line.startsWith(":")) continue; // a comment: the server's keep-alive
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "data") event.data.push(value);
      else if (field === "event") event.event = value;
      else if (field === "id") event.id = value;
    }
    if (event.data.length || event.id !== null) events.push({ ...event, data: event.data.join("\n") });
  }
  return { events, rest };
}

async function readStream(signal) {
  const headers = { Accept: "text/event-stream", Authorization: `Bearer ${token()}` };
  if (lastEventId) headers["Last-Event-ID"] = lastEventId;
  const response = await fetch("/v1/stream", { headers, signal, cache: "no-store" });
  if (!response.ok || !response.body) throw Object.assign(new Error(`stream: HTTP ${response.status}`), { status: response.status });
  setLive(true);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const { events, rest } = parseEvents(buffer + value);
    buffer = rest;
    for (const event of events) {
      if (event.id) lastEventId = event.id;
      if (event.event !== "alert") continue;
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        continue; // one bad event must not end the stream
      }
      if (data.severity === "critical" && data.event === "opened") ring(data);
      listener(data);
    }
  }
}

function setLive(on) {
  const mark = $("live-state");
  mark.dataset.live = on ? "on" : "off";
  mark.textContent = on ? "● Live" : "○ Reconnecting";
  mark.title = on ? "New alerts appear without reloading" : "The live connection dropped; reconnecting";
}

export function startLive() {
  if (controller) return;
  controller = new AbortController();
  const { signal } = controller;
  (async () => {
    let failures = 0;
    while (!signal.aborted) {
      try {
        await readStream(signal);
        failures = 0; // a stream that ended cleanly (server restart): reconnect at once
      } catch (error) {
        if (signal.aborted) return;
        if (error.status === 401) { stopLive(); return; } // the page's own calls handle signing out
        failures += 1;
      }
      setLive(false);
      const wait = RETRY_MS[Math.min(failures, RETRY_MS.length - 1)];
      await new Promise((resolve) => setTimeout(resolve, failures ? wait : 250));
    }
  })();
}

export function stopLive() {
  controller?.abort();
  controller = null;
  const mark = $("live-state");
  mark.dataset.live = "off";
  mark.textContent = "";
}

// --- opt-in sound and desktop notification ---------------------------------------------------------------

export function alertMeEnabled() {
  return localStorage.getItem(OPT_IN_KEY) === "1";
}

/** Called from the checkbox (a user gesture: browsers allow audio and the permission prompt only then). */
export async function setAlertMe(on) {
  localStorage.setItem(OPT_IN_KEY, on ? "1" : "0");
  if (!on) return;
  audio ??= new AudioContext();
  await audio.resume();
  if ("Notification" in window && Notification.permission === "default") await Notification.requestPermission();
}

function beep() {
  if (!audio) return;
  // Two short 880 Hz tones: enough to turn a head, short enough not to alarm a waiting room.
  const now = audio.currentTime;
  for (const start of [0, 0.25]) {
    const tone = audio.createOscillator();
    const gain = audio.createGain();
    tone.frequency.value = 880;
    gain.gain.setValueAtTime(0.0001, now + start);
    gain.gain.exponentialRampToValueAtTime(0.3, now + start + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, now + start + 0.18);
    tone.connect(gain).connect(audio.destination);
    tone.start(now + start);
    tone.stop(now + start + 0.2);
  }
}

function ring(data) {
  document.body.dataset.lastCritical = String(data.alert_id);
  if (!alertMeEnabled()) return;
  beep();
  if ("Notification" in window && Notification.permission === "granted") {
    // No patient data in the notification: it shows on a lock screen. The page names the patient.
    const note = new Notification("Critical alert", { body: "A new critical alert needs a person.", tag: `alert-${data.alert_id}` });
    note.onclick = () => { window.focus(); location.hash = `#/alerts/${data.alert_id}`; };
  }
}
