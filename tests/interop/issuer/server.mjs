// Test-only Better Auth issuer for the Python interop tests.
//
// Runs a REAL Better Auth server (in-memory database, or a SQLite file) on
// 127.0.0.1:$PORT so that tests can obtain genuine Better Auth JWTs and verify them
// against the genuine /api/auth/jwks endpoint. Driven by tests/interop/issuer.py.
//
// Configuration (environment only):
//   PORT                 port to listen on (127.0.0.1 only), required
//   BETTER_AUTH_URL      base URL, defaults to http://127.0.0.1:$PORT
//   BETTER_AUTH_SECRET   secret (>= 32 chars recommended), required
//   JWT_ALG              EdDSA (default, Ed25519) | ES256 | ES512 | PS256 | RS256
//   DEFINE_PAYLOAD=1     token payload = whole user + jti (random UUID) + sid
//   TRUSTED_ORIGINS      comma-separated extra origins (trustedOrigins + CORS)
//   JWT_PLUGIN=0         no jwt() plugin: a shared-secret (HS256) deployment
//   TASKGATE_URL         add the @taskgate/better-auth plugin (installed from the repo's
//                        integrations/better-auth), sending logout tokens to this taskgate
//   TASKGATE_TIMEOUT_MS, TASKGATE_RETRY_INITIAL_MS, TASKGATE_RETRY_MAX_MS,
//   TASKGATE_RETRY_TIMEOUT_MS, TASKGATE_POLL_MS,
//   TASKGATE_LEASE_MS, TASKGATE_MAX_TOKEN_AGE   its options (defaults: the plugin's own)
//   ISSUER_DATABASE      a SQLite file (better-sqlite3, through Better Auth's Kysely adapter),
//                        migrated at start: what the process leaves there (sessions, keys,
//                        the taskgate outbox) is there for the next one. Unset: in memory.
//   OAUTH_RESOURCE       add @better-auth/oauth-provider (an OAuth 2.1 / OpenID provider beside
//                        the jwt() plugin, which it needs) with this URL registered as a
//                        resource (RFC 8707): a token request naming it gets an RFC 9068 JWT
//                        access token with that `aud`. Scopes: openid offline_access
//                        tasks:read tasks:write; dynamic client registration open (RFC 7591,
//                        no session needed), every new client linked to the resource; login
//                        page /test/login, consent page /test/consent.
//   OAUTH_ACCESS_TOKEN_TTL  seconds an access token lives (default 300)
//
// Harness-only endpoints (outside /api/auth):
//   GET  /test/health        200 {"ok":true} once ready
//   POST /test/make-admin    {"userId": "..."} -> user.role = "admin"
//   POST /test/rotate-keys   publish a new signing key, keep the old one listed
//   GET  /test/hs256-token   a Next.js-style route: session -> HS256 token (shared secret);
//                            ?claims=issuer adds iss and aud (= BETTER_AUTH_URL)
//   GET  /test/taskgate      the taskgate plugin's state: {signingMode, pending, oldestAgeSeconds,
//                            durable, adapter, inFlight, failing, ...} (its outboxStatus())
//   POST /test/taskgate/settle  wait (at most {"timeoutMs"}) until nothing is pending; {pending}
//   GET  /.well-known/oauth-authorization-server/api/auth  (OAUTH_RESOURCE) RFC 8414 metadata
//   GET  /test/login, /test/consent  the OAuth provider's login and consent pages (OAUTH_RESOURCE):
//                        a form that says what to POST (the page's query string is the signed
//                        `oauth_query`): /api/auth/sign-in/email {email, password, oauth_query},
//                        /api/auth/oauth2/consent {accept, oauth_query}; both answer {redirect, url}
//
// Logs go to stderr; exactly one line "READY <port>" goes to stdout.

import http from "node:http";
import { randomUUID } from "node:crypto";
import { betterAuth } from "better-auth";
import { memoryAdapter } from "better-auth/adapters/memory";
import { getMigrations } from "better-auth/db/migration";
import { toNodeHandler } from "better-auth/node";
import { admin, jwt } from "better-auth/plugins";
import { createJwk } from "better-auth/plugins/jwt";
import { SignJWT } from "jose";

// Only when asked for: the interop tests that do not need it keep working without it.
const TASKGATE_URL = process.env.TASKGATE_URL || "";
const { taskgate } = TASKGATE_URL ? await import("@taskgate/better-auth") : {};

const OAUTH_RESOURCE = (process.env.OAUTH_RESOURCE || "").replace(/\/+$/, "");
const OAUTH_ACCESS_TOKEN_TTL = Number(process.env.OAUTH_ACCESS_TOKEN_TTL || 300);
const { oauthProvider } = OAUTH_RESOURCE ? await import("@better-auth/oauth-provider") : {};
// The models the provider uses (the memory adapter needs each one listed).
const OAUTH_MODELS = ["oauthClient", "oauthResource", "oauthClientResource", "oauthRefreshToken", "oauthAccessToken",
  "oauthConsent", "oauthClientAssertion"];
const OAUTH_SCOPES = ["openid", "offline_access", "tasks:read", "tasks:write"];

const log = (...args) => console.error("[issuer]", ...args);

const PORT = Number.parseInt(process.env.PORT ?? "", 10);
if (!Number.isInteger(PORT) || PORT <= 0 || PORT > 65535) {
  log("PORT must be set to a valid port number");
  process.exit(2);
}
const BASE_URL = process.env.BETTER_AUTH_URL || `http://127.0.0.1:${PORT}`;
const SECRET = process.env.BETTER_AUTH_SECRET;
if (!SECRET) {
  log("BETTER_AUTH_SECRET must be set");
  process.exit(2);
}

const KEY_PAIR_CONFIGS = {
  EdDSA: { alg: "EdDSA", crv: "Ed25519" },
  ES256: { alg: "ES256" },
  ES512: { alg: "ES512" },
  PS256: { alg: "PS256", modulusLength: 2048 },
  RS256: { alg: "RS256", modulusLength: 2048 },
};
const JWT_ALG = process.env.JWT_ALG || "EdDSA";
const keyPairConfig = KEY_PAIR_CONFIGS[JWT_ALG];
if (!keyPairConfig) {
  log(`unsupported JWT_ALG=${JWT_ALG}; expected one of ${Object.keys(KEY_PAIR_CONFIGS).join(", ")}`);
  process.exit(2);
}
const DEFINE_PAYLOAD = process.env.DEFINE_PAYLOAD === "1";
const JWT_PLUGIN = process.env.JWT_PLUGIN !== "0";
if (OAUTH_RESOURCE && !JWT_PLUGIN) {
  log("OAUTH_RESOURCE needs the jwt() plugin (the provider signs its JWT access tokens with its keys)");
  process.exit(2);
}
if (!Number.isInteger(OAUTH_ACCESS_TOKEN_TTL) || OAUTH_ACCESS_TOKEN_TTL <= 0) {
  log("OAUTH_ACCESS_TOKEN_TTL must be a positive number of seconds");
  process.exit(2);
}
const TRUSTED_ORIGINS = (process.env.TRUSTED_ORIGINS || "")
  .split(",")
  .map((s) => s.trim().replace(/\/+$/, ""))
  .filter(Boolean);

// The same options object is handed to the jwt() plugin and to createJwk()
// on rotation, so rotated keys use the same algorithm / encryption settings.
const jwtOptions = {
  jwks: { keyPairConfig },
  ...(DEFINE_PAYLOAD
    ? {
        jwt: {
          definePayload: ({ user, session }) => ({
            ...user,
            jti: randomUUID(),
            sid: session.id,
          }),
        },
      }
    : {}),
};

const numberFromEnv = (name) => (process.env[name] ? Number(process.env[name]) : undefined);
const taskgatePlugin = TASKGATE_URL
  ? taskgate({
      url: TASKGATE_URL,
      timeout: numberFromEnv("TASKGATE_TIMEOUT_MS"),
      retry: {
        initialDelay: numberFromEnv("TASKGATE_RETRY_INITIAL_MS"),
        maxDelay: numberFromEnv("TASKGATE_RETRY_MAX_MS"),
        timeout: numberFromEnv("TASKGATE_RETRY_TIMEOUT_MS"),
      },
      outbox: { pollInterval: numberFromEnv("TASKGATE_POLL_MS"), lease: numberFromEnv("TASKGATE_LEASE_MS") },
      maxTokenAge: numberFromEnv("TASKGATE_MAX_TOKEN_AGE"),
      logger: {
        info: (message) => log(`taskgate info: ${message}`),
        warn: (message) => log(`taskgate warn: ${message}`),
        error: (message) => log(`taskgate error: ${message}`),
      },
    })
  : null;

// In-memory database (every model the configured plugins touch must exist), or a SQLite file.
const DATABASE_FILE = process.env.ISSUER_DATABASE || "";
let database;
if (DATABASE_FILE) {
  const { default: Database } = await import("better-sqlite3");
  database = new Database(DATABASE_FILE, { timeout: 5000 });
  database.pragma("journal_mode = WAL"); // several processes on one file (multi-instance tests)
} else {
  database = memoryAdapter({
    user: [], session: [], account: [], verification: [], jwks: [], taskgateOutbox: [],
    ...(OAUTH_RESOURCE ? Object.fromEntries(OAUTH_MODELS.map((model) => [model, []])) : {}),
  });
}

// The OAuth provider: what the README's "Let third-party apps and agents in" configures.
const oauthPlugin = OAUTH_RESOURCE
  ? oauthProvider({
      loginPage: "/test/login",
      consentPage: "/test/consent",
      scopes: OAUTH_SCOPES,
      // RFC 7591 at /api/auth/oauth2/register, without a session (an agent registers itself).
      allowDynamicClientRegistration: true,
      allowUnauthenticatedClientRegistration: true,
      // The API as a resource (RFC 8707): `resource=<OAUTH_RESOURCE>` on the authorization and
      // token requests gives a JWT access token with `aud` naming it. Clients must be linked to
      // a resource (enforcePerClientResources, on by default): every new one is.
      resources: [{ identifier: OAUTH_RESOURCE, name: "taskgate", accessTokenTtl: OAUTH_ACCESS_TOKEN_TTL }],
      clientRegistrationDefaultResources: [OAUTH_RESOURCE],
      accessTokenExpiresIn: OAUTH_ACCESS_TOKEN_TTL,
    })
  : null;

const options = {
  baseURL: BASE_URL,
  secret: SECRET,
  database,
  trustedOrigins: TRUSTED_ORIGINS,
  emailAndPassword: { enabled: true, requireEmailVerification: false },
  rateLimit: { enabled: false },
  telemetry: { enabled: false },
  // Keep the real origin/CSRF checks even if NODE_ENV=test or TEST is set in
  // the environment (Better Auth skips origin checks in "test" mode), and keep
  // plain (non-__Secure-) cookies because we serve plain http on loopback.
  advanced: { disableOriginCheck: false, disableCSRFCheck: false, useSecureCookies: false },
  logger: {
    log: (level, message, ...args) => log(`${level}:`, message, ...args),
  },
  plugins: [
    ...(JWT_PLUGIN ? [jwt(jwtOptions)] : []),
    admin(),
    ...(oauthPlugin ? [oauthPlugin] : []),
    ...(taskgatePlugin ? [taskgatePlugin] : []),
  ],
};

if (DATABASE_FILE) {
  // What `npx auth migrate` does: create or complete the tables (the plugin's outbox too).
  const { toBeCreated, runMigrations } = await getMigrations(options);
  await runMigrations();
  log(`migrated ${DATABASE_FILE}; tables created: ${toBeCreated.map((t) => t.table).join(", ") || "none"}`);
}

const auth = betterAuth(options);

const authHandler = toNodeHandler(auth);

// --- CORS for trusted origins on /api/auth/* -------------------------------
function applyCors(req, res) {
  const origin = req.headers.origin;
  if (!origin || !TRUSTED_ORIGINS.includes(origin)) return false;
  res.setHeader("Access-Control-Allow-Origin", origin);
  res.setHeader("Access-Control-Allow-Credentials", "true");
  res.setHeader("Access-Control-Expose-Headers", "set-auth-jwt, set-auth-token");
  res.setHeader("Vary", "Origin");
  return true;
}

// --- helpers ----------------------------------------------------------------
function sendJson(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(data),
  });
  res.end(data);
}

function readJson(req, limit = 64 * 1024) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on("data", (c) => {
      size += c.length;
      if (size > limit) {
        reject(new Error("body too large"));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => {
      const text = Buffer.concat(chunks).toString("utf8");
      if (!text) return resolve({});
      try {
        resolve(JSON.parse(text));
      } catch (e) {
        reject(e);
      }
    });
    req.on("error", reject);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

// The provider's login and consent pages. A real app renders forms; a test (or curl) posts the
// page's query string, as `oauth_query`, to Better Auth's endpoints named here.
function oauthPage(res, pathname, query) {
  const params = new URLSearchParams(query);
  const login = pathname === "/test/login";
  const body = login
    ? `<h1>Sign in</h1><p>POST /api/auth/sign-in/email {"email", "password", "oauth_query"}</p>`
    : `<h1>Allow ${escapeHtml(params.get("client_id"))}?</h1><p>Scopes: ${escapeHtml(params.get("scope"))}; `
      + `resource: ${escapeHtml(params.getAll("resource").join(" "))}</p>`
      + `<p>POST /api/auth/oauth2/consent {"accept": true, "oauth_query"}</p>`;
  const html = `<!doctype html><meta charset="utf-8"><title>${login ? "Sign in" : "Consent"}</title>${body}`
    + `<pre id="oauth_query">${escapeHtml(query)}</pre>`;
  res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
  res.end(html);
}

async function handleTest(req, res, pathname) {
  if (pathname === "/test/health" && req.method === "GET") {
    return sendJson(res, 200, {
      ok: true, alg: JWT_PLUGIN ? JWT_ALG : null, definePayload: DEFINE_PAYLOAD, taskgate: TASKGATE_URL || null,
      oauth: OAUTH_RESOURCE ? { resource: OAUTH_RESOURCE, scopes: OAUTH_SCOPES, accessTokenTtl: OAUTH_ACCESS_TOKEN_TTL } : null,
    });
  }
  if ((pathname === "/test/login" || pathname === "/test/consent") && req.method === "GET") {
    if (!OAUTH_RESOURCE) return sendJson(res, 404, { error: "OAUTH_RESOURCE not set" });
    return oauthPage(res, pathname, new URL(req.url, BASE_URL).search.slice(1));
  }
  if (pathname === "/test/make-admin" && req.method === "POST") {
    const { userId } = await readJson(req);
    if (typeof userId !== "string" || !userId) return sendJson(res, 400, { error: "userId required" });
    const ctx = await auth.$context;
    const user = await ctx.internalAdapter.updateUser(userId, { role: "admin" });
    if (!user) return sendJson(res, 404, { error: "user not found" });
    log(`make-admin: ${userId} role=${user.role}`);
    return sendJson(res, 200, { ok: true, user });
  }
  if (pathname === "/test/rotate-keys" && req.method === "POST") {
    const ctx = await auth.$context;
    // Make sure a first key exists (it is otherwise created lazily by the
    // first /token or /jwks call) so that rotation always yields >= 2 keys.
    const before = await ctx.adapter.findMany({ model: "jwks" });
    if (before.length === 0) await createJwk({ context: ctx }, jwtOptions);
    // The plugin signs with the newest (by createdAt) non-expired key of the
    // configured alg and lists every key (minus long-expired ones) in the
    // JWKS; so adding a newer key = rotation with the old key kept listed.
    await sleep(5); // guarantee a strictly later createdAt
    const created = await createJwk({ context: ctx }, jwtOptions);
    const keys = await ctx.adapter.findMany({ model: "jwks" });
    log(`rotate-keys: new kid=${created.id}; ${keys.length} keys listed`);
    return sendJson(res, 200, { ok: true, kid: created.id, kids: keys.map((k) => k.id) });
  }
  if (pathname === "/test/hs256-token" && req.method === "GET") {
    // What a Next.js route handler does for frontends that mint their own tokens:
    // read the Better Auth session, sign HS256 with the shared BETTER_AUTH_SECRET.
    const session = await auth.api.getSession({ headers: new Headers(req.headers) });
    if (!session) return sendJson(res, 401, { error: "no session" });
    const { user } = session;
    const withIssuer = new URL(req.url, BASE_URL).searchParams.get("claims") === "issuer";
    const token = await new SignJWT({
      email: user.email, name: user.name, role: user.role ?? "user", sid: session.session.id, jti: randomUUID(),
      ...(withIssuer ? { iss: BASE_URL, aud: BASE_URL } : {}),
    })
      .setProtectedHeader({ alg: "HS256" })
      .setSubject(user.id)
      .setIssuedAt()
      .setExpirationTime("15m")
      .sign(new TextEncoder().encode(process.env.BETTER_AUTH_SECRET));
    return sendJson(res, 200, { token });
  }
  if (pathname === "/test/taskgate" && req.method === "GET") {
    if (!taskgatePlugin) return sendJson(res, 404, { error: "TASKGATE_URL not set" });
    return sendJson(res, 200, { signingMode: taskgatePlugin.signingMode, ...(await taskgatePlugin.outboxStatus()) });
  }
  if (pathname === "/test/taskgate/settle" && req.method === "POST") {
    if (!taskgatePlugin) return sendJson(res, 404, { error: "TASKGATE_URL not set" });
    const { timeoutMs = 10_000 } = await readJson(req);
    return sendJson(res, 200, { pending: await taskgatePlugin.settle(timeoutMs) });
  }
  return sendJson(res, 404, { error: "not found" });
}

const server = http.createServer(async (req, res) => {
  const started = Date.now();
  res.on("finish", () => log(`${req.method} ${req.url} -> ${res.statusCode} (${Date.now() - started} ms)`));
  try {
    const pathname = new URL(req.url, BASE_URL).pathname;
    if (pathname.startsWith("/test/")) return await handleTest(req, res, pathname);
    if (pathname === "/api/auth" || pathname.startsWith("/api/auth/")) {
      const cors = applyCors(req, res);
      if (req.method === "OPTIONS") {
        if (cors) {
          res.setHeader("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS");
          res.setHeader(
            "Access-Control-Allow-Headers",
            req.headers["access-control-request-headers"] || "content-type, authorization",
          );
          res.setHeader("Access-Control-Max-Age", "600");
        }
        res.writeHead(204);
        return res.end();
      }
      return await authHandler(req, res);
    }
    // RFC 8414: the authorization server's metadata for the issuer <BASE_URL>/api/auth is at
    // /.well-known/oauth-authorization-server/api/auth (the provider answers it).
    if (oauthPlugin && pathname.startsWith("/.well-known/")) return await authHandler(req, res);
    return sendJson(res, 404, { error: "not found" });
  } catch (err) {
    log("handler error:", err?.stack || err);
    if (!res.headersSent) sendJson(res, 500, { error: String(err?.message || err) });
    else res.end();
  }
});

// Fail fast (and visibly) if Better Auth cannot initialise.
await auth.$context;

server.listen(PORT, "127.0.0.1", () => {
  log(`Better Auth issuer listening on ${BASE_URL} (alg=${JWT_ALG}, definePayload=${DEFINE_PAYLOAD}, `
    + `trustedOrigins=${JSON.stringify(TRUSTED_ORIGINS)}, database=${DATABASE_FILE || "memory"}, `
    + `oauth=${OAUTH_RESOURCE ? `resource ${OAUTH_RESOURCE}, ttl ${OAUTH_ACCESS_TOKEN_TTL}s` : "off"})`);
  process.stdout.write(`READY ${PORT}\n`);
});

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    log(`${sig} received, shutting down`);
    setTimeout(() => process.exit(0), 4000).unref();
    server.closeAllConnections?.();
    // The plugin hands its claims on the outbox back, for the other instances to take at once.
    Promise.resolve(taskgatePlugin?.close())
      .catch((error) => log(`taskgate close: ${error}`))
      .finally(() => server.close(() => process.exit(0)));
  });
}
// Exit when the parent closes our stdin (e.g. the Python driver died).
if (process.env.EXIT_ON_STDIN_EOF === "1") {
  process.stdin.on("end", () => process.exit(0));
  process.stdin.resume();
}
