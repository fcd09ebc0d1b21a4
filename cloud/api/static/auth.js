// Workspace sign-in: OpenID Connect authorization code flow with PKCE (RFC 7636, S256), run by the page itself
// as a public client (no secret), against the issuer /ui/config.json names.
//
// - The tokens live in this script's memory only: nothing in localStorage or cookies of this origin. The PKCE
//   verifier, state and nonce sit in sessionStorage for the redirect round trip alone and are removed the moment
//   the answer comes back.
// - Tabs of this origin share one session over a BroadcastChannel (same origin only, by the browser's rules): a
//   new tab asks the open ones for it before sending anyone to the provider; a renewal or a sign-out in one tab
//   reaches them all.
// - Renewal: with a refresh token, shortly before the access token expires, by one tab for all (a Web Lock),
//   since a rotated refresh token works once; without one, a prompt=none round trip once it has expired.
// - The ID token comes straight from the token endpoint over TLS, so its claims are checked (issuer, audience,
//   nonce, expiry) without checking its signature (OpenID Connect Core 1.0 §3.1.3.7, item 6). The API checks
//   the access token's signature, issuer and audience on every request.
//
// API (loaded as a classic script before the page's module, so it exists when that runs):
//   window.rpmAuth.ready        Promise: the session is known (signed in, or not); read the rest after it
//   window.rpmAuth.configured   false when no issuer is configured: the page keeps its paste-a-token form
//   window.rpmAuth.token()      the access token, or null
//   window.rpmAuth.state()      { signedIn, token, user: {sub, name}, expiresAt, error }
//   window.rpmAuth.signIn()     to the provider and back (resolves never: the page navigates)
//   window.rpmAuth.signOut()    this tab and every other tab of the origin; ends the provider session if it can
//   window.rpmAuth.renew()      renew now (e.g. after a 401); resolves to the new token or null
//   window.rpmAuth.onChange(cb) cb(state) on every change (signed in, renewed, signed out); returns unsubscribe

(() => {
  "use strict";

  const CHANNEL = "rpm-auth";
  const PENDING_KEY = "rpm.auth.pending";
  const SIGNED_OUT_KEY = "rpm.auth.signed-out"; // a flag, no secret: do not send this tab straight back
  const RENEW_BEFORE_MS = 60_000;
  const ASK_WAIT_MS = 400;
  const RETRY_MS = 10_000;
  const CLOCK_SKEW_S = 60;
  const REQUEST_TIMEOUT_MS = 15_000;
  const CALLBACK_PARAMS = ["code", "state", "error", "error_description", "error_uri", "session_state", "iss"];

  class AuthError extends Error {
    constructor(message, code = "") {
      super(message);
      this.code = code;
    }
  }

  const listeners = new Set();
  const channel = "BroadcastChannel" in window ? new BroadcastChannel(CHANNEL) : null;
  let config = null;
  let metadata = null;
  let session = null; // { accessToken, refreshToken, idToken, claims, expiresAt }
  let lastError = null;
  let renewTimer = null;

  // --- encoding --------------------------------------------------------------------------------------------

  function base64url(bytes) {
    let text = "";
    for (const byte of bytes) text += String.fromCharCode(byte);
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function randomString(bytes = 32) {
    return base64url(crypto.getRandomValues(new Uint8Array(bytes)));
  }

  async function s256(text) {
    return base64url(new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text))));
  }

  function jwtClaims(token) {
    const part = String(token).split(".")[1];
    if (!part) throw new AuthError("the provider's token is not a JWT");
    const padded = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  }

  // --- state and listeners ---------------------------------------------------------------------------------

  function state() {
    return {
      signedIn: session !== null,
      token: session ? session.accessToken : null,
      user: session ? { sub: session.claims.sub, name: session.claims.name || session.claims.sub } : null,
      expiresAt: session ? session.expiresAt : null,
      error: lastError,
    };
  }

  function emit() {
    const snapshot = state();
    for (const listener of listeners) {
      try {
        listener(snapshot);
      } catch (error) {
        console.error("rpmAuth listener failed", error);
      }
    }
  }

  function adopt(next, { broadcast }) {
    session = next;
    lastError = null;
    sessionStorage.removeItem(SIGNED_OUT_KEY);
    scheduleRenewal();
    if (broadcast && channel) channel.postMessage({ type: "session", session });
    emit();
  }

  function clear(error, { broadcast }) {
    session = null;
    lastError = error;
    clearTimeout(renewTimer);
    if (broadcast && channel) channel.postMessage({ type: "signed-out" });
    emit();
  }

  // --- the provider ----------------------------------------------------------------------------------------

  async function fetchJson(url, options = {}) {
    const response = await fetch(url, { ...options, credentials: "omit", signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
    let body = null;
    try {
      body = await response.json();
    } catch { /* not JSON: the status says what happened */ }
    if (!response.ok) {
      const code = (body && body.error) || String(response.status);
      throw new AuthError((body && body.error_description) || `${url}: ${response.status} ${code}`, code);
    }
    return body;
  }

  async function discover() {
    const issuer = config.issuer.replace(/\/+$/, "");
    const document = await fetchJson(`${issuer}/.well-known/openid-configuration`);
    // OpenID Connect Discovery §4.3: the document must name the very issuer asked for.
    if (!document || document.issuer !== config.issuer) {
      throw new AuthError(`the discovery document is not for issuer ${config.issuer}`);
    }
    return document;
  }

  // The page signs in back to itself: /ui (the workspace) unless its <script> tag names another page of /ui
  // (data-return-path="/ui/me": the patient's page). Read from the page's own markup, never from the address.
  const RETURN_PATH = (() => {
    const named = document.currentScript && document.currentScript.dataset.returnPath;
    return named && /^\/ui\/[a-z]+$/.test(named) ? named : "/ui";
  })();

  function redirectUri() {
    return `${location.origin}${RETURN_PATH}`;
  }

  async function tokenRequest(form) {
    return fetchJson(metadata.token_endpoint, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded", Accept: "application/json" },
      body: new URLSearchParams(form),
    });
  }

  function checkIdToken(idToken, nonce) {
    const claims = jwtClaims(idToken);
    const audiences = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
    const now = Date.now() / 1000;
    if (claims.iss !== config.issuer) throw new AuthError("the ID token is from another issuer");
    if (!audiences.includes(config.client_id)) throw new AuthError("the ID token is for another client");
    if (audiences.length > 1 && claims.azp !== config.client_id) throw new AuthError("the ID token's azp is wrong");
    if (!(claims.exp > now - CLOCK_SKEW_S)) throw new AuthError("the ID token has expired");
    if (nonce !== undefined && claims.nonce !== nonce) {
      throw new AuthError("sign-in refused: the ID token's nonce is not the one this tab sent (a replayed token?)");
    }
    return claims;
  }

  function sessionFrom(answer, previous, nonce) {
    if (!answer || typeof answer.access_token !== "string") throw new AuthError("the provider sent no access token");
    const claims = answer.id_token ? checkIdToken(answer.id_token, nonce) : previous && previous.claims;
    if (!claims) throw new AuthError("the provider sent no ID token");
    if (previous && claims.sub !== previous.claims.sub) throw new AuthError("the renewed session is another user's");
    let expiresAt = Date.now() + Number(answer.expires_in) * 1000;
    if (!Number.isFinite(expiresAt)) {
      try {
        expiresAt = jwtClaims(answer.access_token).exp * 1000;
      } catch {
        expiresAt = Date.now() + 5 * 60_000; // an opaque token without a lifetime: renew soon
      }
    }
    return {
      accessToken: answer.access_token,
      refreshToken: answer.refresh_token || (previous && previous.refreshToken) || null,
      idToken: answer.id_token || (previous && previous.idToken) || null,
      claims,
      expiresAt,
    };
  }

  // --- sign-in ---------------------------------------------------------------------------------------------

  async function signIn({ prompt } = {}) {
    if (!config || !config.issuer) throw new AuthError("no OpenID provider is configured (RPM_OIDC_ISSUER)");
    const pending = { state: randomString(), nonce: randomString(), verifier: randomString(48),
      returnTo: `${location.search}${location.hash}`, at: Date.now() };
    sessionStorage.setItem(PENDING_KEY, JSON.stringify(pending));
    sessionStorage.removeItem(SIGNED_OUT_KEY);
    const url = new URL(metadata.authorization_endpoint);
    const params = { response_type: "code", client_id: config.client_id, redirect_uri: redirectUri(),
      scope: config.scopes, state: pending.state, nonce: pending.nonce,
      code_challenge: await s256(pending.verifier), code_challenge_method: "S256" };
    if (prompt) params.prompt = prompt;
    for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
    location.assign(url.toString());
    return new Promise(() => {}); // the page is leaving
  }

  // The provider's answer, read once and taken out of the address bar before anything else runs.
  function takeCallback() {
    const params = new URLSearchParams(location.search);
    if (!params.has("state") || !(params.has("code") || params.has("error"))) return null;
    const raw = sessionStorage.getItem(PENDING_KEY);
    sessionStorage.removeItem(PENDING_KEY);
    let pending = null;
    try {
      pending = raw ? JSON.parse(raw) : null;
    } catch { /* damaged: treated as no sign-in started */ }
    let rest = `${location.search}`;
    if (pending && typeof pending.returnTo === "string") {
      rest = pending.returnTo;
    } else {
      const kept = new URLSearchParams(location.search);
      for (const name of CALLBACK_PARAMS) kept.delete(name);
      rest = `${kept.toString() ? `?${kept}` : ""}${location.hash}`;
    }
    history.replaceState(null, "", `${location.pathname}${rest}`);
    return { params, pending };
  }

  async function completeSignIn({ params, pending }) {
    if (!pending || typeof pending.state !== "string" || params.get("state") !== pending.state) {
      throw new AuthError("sign-in refused: the provider's answer does not match a sign-in started in this tab", "state");
    }
    if (params.get("error")) {
      throw new AuthError(params.get("error_description") || params.get("error"), params.get("error"));
    }
    const answer = await tokenRequest({ grant_type: "authorization_code", code: params.get("code"),
      redirect_uri: redirectUri(), client_id: config.client_id, code_verifier: pending.verifier });
    adopt(sessionFrom(answer, null, pending.nonce), { broadcast: true });
  }

  // --- renewal ---------------------------------------------------------------------------------------------

  // One tab renews for all (a rotated refresh token works once): the one holding the "leader" Web Lock. The
  // others adopt what it broadcasts; when it closes, the lock, and the duty, pass to another open tab.
  let leader = !navigator.locks;
  if (navigator.locks) {
    navigator.locks.request("rpm-auth-leader", () => {
      leader = true;
      scheduleRenewal();
      return new Promise(() => {}); // held while this tab lives
    });
  }

  function scheduleRenewal() {
    clearTimeout(renewTimer);
    if (!session || !leader) return;
    const delay = Math.max(0, session.expiresAt - Date.now() - RENEW_BEFORE_MS);
    renewTimer = setTimeout(() => renew().catch((error) => console.error("rpmAuth renewal failed", error)),
      Math.min(delay, 2 ** 31 - 1));
  }

  // A renewal asked for outside the schedule (after a 401) may come from any tab: still one at a time.
  function oneTabAtATime(task) {
    return navigator.locks ? navigator.locks.request("rpm-auth-renew", task) : task();
  }

  async function renew({ force = false } = {}) {
    await ready;
    return oneTabAtATime(async () => {
      if (!session) return null;
      // Another tab may have renewed while this one waited for the lock.
      if (!force && session.expiresAt - Date.now() > RENEW_BEFORE_MS) return session.accessToken;
      if (!session.refreshToken) {
        if (session.expiresAt > Date.now()) {
          renewTimer = setTimeout(() => renew(), session.expiresAt - Date.now());
          return session.accessToken;
        }
        return signIn({ prompt: "none" });
      }
      const used = session;
      try {
        adopt(sessionFrom(await tokenRequest({ grant_type: "refresh_token", refresh_token: used.refreshToken,
          client_id: config.client_id }), used), { broadcast: true });
        return session.accessToken;
      } catch (error) {
        if (error.code === "invalid_grant") {
          // Spent or revoked: another tab may hold the rotated one; else the provider ended the session.
          const shared = await askOtherTabs();
          if (shared && shared.refreshToken !== used.refreshToken) return shared.accessToken;
          clear("the session ended at the provider; sign in again", { broadcast: true });
          return null;
        }
        if (session && session.expiresAt <= Date.now()) clear(`renewal failed: ${error.message}`, { broadcast: false });
        else renewTimer = setTimeout(() => renew(), RETRY_MS);
        throw error;
      }
    });
  }

  // --- other tabs ------------------------------------------------------------------------------------------

  function fresher(candidate) {
    return candidate && typeof candidate.accessToken === "string" && candidate.expiresAt > Date.now() &&
      (!session || candidate.expiresAt > session.expiresAt);
  }

  // Resolves to the session another tab handed over (adopted by the channel's listener below), or null.
  function askOtherTabs() {
    if (!channel) return Promise.resolve(null);
    const before = session;
    return new Promise((resolve) => {
      const handedOver = () => session !== null && session !== before;
      const check = () => handedOver() && finish();
      const finish = () => {
        channel.removeEventListener("message", check);
        clearTimeout(timer);
        resolve(handedOver() ? session : null);
      };
      const timer = setTimeout(finish, ASK_WAIT_MS);
      channel.addEventListener("message", check);
      channel.postMessage({ type: "ask" });
    });
  }

  if (channel) {
    channel.addEventListener("message", (event) => {
      const message = event.data || {};
      if (message.type === "ask" && session) channel.postMessage({ type: "session", session });
      else if (message.type === "session" && fresher(message.session)) adopt(message.session, { broadcast: false });
      else if (message.type === "signed-out" && session) {
        sessionStorage.setItem(SIGNED_OUT_KEY, "1");
        clear("signed out in another tab", { broadcast: false });
      }
    });
  }

  // --- sign-out --------------------------------------------------------------------------------------------

  async function signOut() {
    await ready;
    const ended = session;
    sessionStorage.setItem(SIGNED_OUT_KEY, "1");
    clear(null, { broadcast: true });
    // RP-initiated logout 1.0: end the provider's session too, or "sign in" would be silent.
    if (ended && metadata && metadata.end_session_endpoint) {
      const url = new URL(metadata.end_session_endpoint);
      url.searchParams.set("client_id", config.client_id);
      url.searchParams.set("post_logout_redirect_uri", redirectUri());
      if (ended.idToken) url.searchParams.set("id_token_hint", ended.idToken);
      location.assign(url.toString());
    }
  }

  // --- start -----------------------------------------------------------------------------------------------

  const callback = takeCallback();

  async function start() {
    config = await fetchJson("/ui/config.json");
    if (!config || !config.issuer) return;
    metadata = await discover();
    if (callback) {
      await completeSignIn(callback);
      return;
    }
    if (await askOtherTabs()) return;
    if (!sessionStorage.getItem(SIGNED_OUT_KEY)) await signIn();
  }

  const ready = start().catch((error) => {
    lastError = error.message;
    console.warn("rpmAuth:", error.message);
  }).then(() => emit());

  window.rpmAuth = Object.freeze({
    ready,
    get configured() {
      return Boolean(config && config.issuer);
    },
    token: () => (session && session.expiresAt > Date.now() ? session.accessToken : null),
    state,
    signIn: () => ready.then(() => signIn()),
    signOut,
    renew: () => renew({ force: true }),
    onChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  });
})();
