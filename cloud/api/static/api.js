// The /v1 API as the page calls it, and who the page is signed in as.
// Sign-in is auth.js's (window.rpmAuth: OpenID Connect with PKCE, the token in memory). Where no issuer is
// configured (development), the page falls back to a pasted token kept in sessionStorage (this tab only).

const DEV_TOKEN_KEY = "rpm.token";
const REQUEST_TIMEOUT_MS = 20_000;
// A page needs few requests in flight; more would only queue for the server's database connections.
const MAX_IN_FLIGHT = 4;

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

const pasted = {
  configured: false,
  ready: Promise.resolve(),
  listeners: [],
  token() { return sessionStorage.getItem(DEV_TOKEN_KEY); },
  use(token) {
    sessionStorage.setItem(DEV_TOKEN_KEY, token.trim());
    for (const listener of this.listeners) listener();
  },
  signIn() { /* the paste form is the sign-in */ },
  signOut() {
    sessionStorage.removeItem(DEV_TOKEN_KEY);
    for (const listener of this.listeners) listener();
  },
  onChange(callback) { this.listeners.push(callback); },
};

/** The sign-in in force: auth.js's when it has an issuer, else the development paste form (see chooseAuth). */
export let auth = pasted;

/** Once auth.js knows its configuration (and has taken a sign-in callback), use it if an issuer is set. */
export async function chooseAuth() {
  const oidc = window.rpmAuth;
  if (!oidc) return auth;
  await oidc.ready;
  if (oidc.configured) auth = oidc;
  return auth;
}

export function token() {
  return auth.token();
}

/** ``#token=...`` (development): taken once into the tab and at once removed from the address bar. */
export function takeTokenFromUrl() {
  if (auth.configured) return;
  const given = new URLSearchParams(location.hash.slice(1)).get("token");
  if (!given) return;
  pasted.use(given);
  // Keep the token out of the history and of anything that copies the address.
  history.replaceState(null, "", `${location.pathname}${location.search}#/`);
}

export function usePastedToken(given) {
  pasted.use(given);
}

let onUnauthorised = () => {};

/** What to do when the API refuses the token (the page shows sign-in with the reason). */
export function whenUnauthorised(callback) {
  onUnauthorised = callback;
}

let inFlight = 0;
const waiting = [];

export async function api(path, options = {}) {
  // A finished request hands its slot straight to the next waiting one, so the count never overshoots.
  if (inFlight >= MAX_IN_FLIGHT) await new Promise((resolve) => waiting.push(resolve));
  else inFlight += 1;
  try {
    return await request(path, options);
  } finally {
    const next = waiting.shift();
    if (next) next();
    else inFlight -= 1;
  }
}

async function request(path, options = {}, renewed = false) {
  const { method = "GET", body, signal } = options;
  const headers = { Accept: "application/json", Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const timeout = AbortSignal.timeout(REQUEST_TIMEOUT_MS);
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    signal: signal ? AbortSignal.any([signal, timeout]) : timeout });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const problem = await response.json();
      detail = problem.detail || problem.title || detail;
    } catch { /* not problem+json: keep the status text */ }
    if (response.status === 401 && !renewed && auth.configured && auth.renew) {
      // An access token that expired between renewals (a laptop waking up): renew once and ask again.
      if (await auth.renew().catch(() => null)) return request(path, options, true);
    }
    if (response.status === 401) onUnauthorised(`Signed out: ${detail}`);
    throw new ApiError(response.status, detail);
  }
  return response.json();
}
