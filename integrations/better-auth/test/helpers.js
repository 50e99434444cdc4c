// Test helpers: a real Better Auth (in-memory database) driven through its HTTP handler
// like a browser would, and a stub taskgate receiver on 127.0.0.1 that verifies every
// logout token with jose against Better Auth's real JWKS (or the shared secret).

import http from "node:http";
import { once } from "node:events";
import { betterAuth } from "better-auth";
import { memoryAdapter } from "better-auth/adapters/memory";
import { admin, jwt } from "better-auth/plugins";
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify } from "jose";
import { taskgate } from "../index.js";

export const BASE_URL = "http://127.0.0.1:3999"; // never listened on: requests go through auth.handler
export const SECRET = "plugin-test-secret-0123456789abcdefghijklmnopqrstuvwxyz";
export const PASSWORD = "correct-horse-battery";

export function captureLogger() {
  const lines = { info: [], warn: [], error: [] };
  return {
    lines,
    info: (message) => lines.info.push(String(message)),
    warn: (message) => lines.warn.push(String(message)),
    error: (message) => lines.error.push(String(message)),
  };
}

/** An empty in-memory database with every model the test set-up touches (the outbox too). */
export const emptyDatabase = () => ({ user: [], session: [], account: [], verification: [], jwks: [], taskgateOutbox: [] });

/**
 * Better Auth with the admin plugin, the jwt() plugin unless `jwtPlugin: false`, and taskgate.
 * `db`: the memory adapter's database, to run a second instance (or a restarted one) on the same data.
 */
export function makeAuth({ receiver, jwtPlugin = true, taskgateOptions = {}, url, db = emptyDatabase(),
  databaseHooks, wrapAdapter = (adapter) => adapter, plugins = [] } = {}) {
  const logger = captureLogger();
  const plugin = taskgate({
    url: url ?? receiver.url,
    logger,
    retry: { initialDelay: 20, maxDelay: 100 },
    outbox: { pollInterval: 200 },
    ...taskgateOptions,
  });
  const auth = betterAuth({
    baseURL: BASE_URL,
    secret: SECRET,
    database: (options) => wrapAdapter(memoryAdapter(db)(options)),
    emailAndPassword: { enabled: true, requireEmailVerification: false },
    user: { deleteUser: { enabled: true } },
    rateLimit: { enabled: false },
    telemetry: { enabled: false },
    logger: { disabled: true },
    ...(databaseHooks ? { databaseHooks } : {}),
    plugins: [...(jwtPlugin ? [jwt()] : []), admin(), ...plugins, plugin],
  });
  if (receiver) receiver.trust(auth, jwtPlugin);
  return { auth, plugin, logger, db };
}

/** A cookie jar over auth.handler: one instance is one signed-in browser, i.e. one session. */
export class Browser {
  constructor(auth) {
    this.auth = auth;
    this.cookies = new Map();
  }

  async request(method, path, body) {
    const headers = new Headers({ origin: BASE_URL, accept: "application/json" });
    if (this.cookies.size) headers.set("cookie", [...this.cookies].map(([k, v]) => `${k}=${v}`).join("; "));
    if (body !== undefined) headers.set("content-type", "application/json");
    const response = await this.auth.handler(new Request(`${BASE_URL}/api/auth${path}`, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    }));
    for (const line of response.headers.getSetCookie()) {
      const [pair, ...attributes] = line.split(";");
      const [name, ...value] = pair.split("=");
      const expired = attributes.some((a) => /^\s*max-age=0\s*$/i.test(a));
      if (expired || value.join("=") === "") this.cookies.delete(name.trim());
      else this.cookies.set(name.trim(), value.join("="));
    }
    const text = await response.text();
    const json = text ? JSON.parse(text) : null;
    if (!response.ok) throw new Error(`${method} ${path}: HTTP ${response.status} ${text}`);
    return json;
  }

  post(path, body = {}) {
    return this.request("POST", path, body);
  }

  get(path) {
    return this.request("GET", path);
  }

  /** The session row this browser holds: { id, token, userId, ... }. */
  async session() {
    return (await this.get("/get-session")).session;
  }
}

export async function signUp(auth, email) {
  const browser = new Browser(auth);
  const { user } = await browser.post("/sign-up/email", { email, password: PASSWORD, name: "Test User" });
  return { browser, user, session: await browser.session() };
}

export async function signIn(auth, email, password = PASSWORD) {
  const browser = new Browser(auth);
  await browser.post("/sign-in/email", { email, password });
  return { browser, session: await browser.session() };
}

export async function makeAdmin(auth, email) {
  const { browser, user } = await signUp(auth, email);
  const ctx = await auth.$context;
  await ctx.internalAdapter.updateUser(user.id, { role: "admin" });
  return { browser, user };
}

let counter = 0;
export const newEmail = (label = "user") => `${label}-${process.pid}-${++counter}@example.com`;

/**
 * The stub receiver. `script` holds what to answer, in order (a status, or "hang" to never
 * answer that request); once it is used up every request gets 200. Each request is recorded
 * with its token's header, claims and verification result before it is answered.
 */
export async function startReceiver({ port = 0 } = {}) {
  const state = {
    received: [],
    script: [],
    verifyKey: null,
    options: null,
    hanging: new Set(),
  };

  const handler = async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = Buffer.concat(chunks).toString("utf8");
    const record = {
      at: performance.now(),
      receivedAt: Date.now() / 1000,
      method: req.method,
      path: req.url,
      contentType: req.headers["content-type"],
      body,
    };
    const token = new URLSearchParams(body).get("logout_token");
    record.token = token;
    if (token) {
      record.header = decodeProtectedHeader(token);
      record.claims = decodeJwt(token);
      try {
        const key = typeof state.verifyKey === "function" ? await state.verifyKey() : state.verifyKey;
        await jwtVerify(token, key, state.options);
        record.verified = true;
      } catch (error) {
        record.verified = false;
        record.verifyError = `${error.code ?? ""} ${error.message}`;
      }
    }
    state.received.push(record);
    const next = state.script.length ? state.script.shift() : 200;
    if (next === "hang") {
      state.hanging.add(res);
      return;
    }
    const status = record.verified === false ? 400 : next;
    const json = status === 200 ? {} : {
      error: status === 400 ? "invalid_request" : "temporarily_unavailable",
      error_description: record.verifyError ?? `scripted ${status}`,
    };
    res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" });
    res.end(JSON.stringify(json));
  };

  let server;
  const receiver = {
    state,
    get received() {
      return state.received;
    },
    get tokens() {
      return state.received.filter((r) => r.token);
    },
    port,
    get url() {
      return `http://127.0.0.1:${receiver.port}`;
    },
    /** Verify tokens as taskgate would: the JWKS it already trusts, or the shared secret. */
    trust(auth, jwks) {
      state.options = {
        issuer: BASE_URL,
        audience: BASE_URL,
        typ: "logout+jwt",
        algorithms: jwks ? ["EdDSA", "ES256", "ES512", "PS256", "RS256"] : ["HS256"],
        maxTokenAge: "5m",
      };
      state.verifyKey = jwks
        ? async () => createLocalJWKSet(await auth.api.getJwks())
        : new TextEncoder().encode(SECRET);
    },
    answer(...statuses) {
      state.script.push(...statuses);
    },
    async listen() {
      server = http.createServer((req, res) => {
        handler(req, res).catch((error) => {
          res.writeHead(500);
          res.end(String(error));
        });
      });
      server.listen(receiver.port, "127.0.0.1");
      await once(server, "listening");
      receiver.port = server.address().port;
      return receiver;
    },
    async close() {
      if (!server) return;
      for (const res of state.hanging) res.destroy();
      state.hanging.clear();
      server.closeAllConnections();
      server.close();
      await once(server, "close");
      server = undefined;
    },
  };
  return receiver.listen();
}

/** The logout tokens' claims, without the parts that differ per token. */
export const shapes = (records) => records.map(({ claims }) => {
  const { sub, sid, client_id: clientId } = claims;
  if (clientId !== undefined) return sid === undefined ? { sub, client_id: clientId } : { sub, sid, client_id: clientId };
  return sid === undefined ? { sub } : { sub, sid };
});

export const byShape = (a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b));
