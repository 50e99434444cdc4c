// @taskgate/better-auth: tells taskgate at once when Better Auth ends a session, bans or
// deletes a user, with an OpenID Connect Back-Channel Logout 1.0 logout token.
//
// Hook points (better-auth 1.7.25): every session deletion of the internal adapter
// (deleteSession, deleteSessions, deleteUserSessions, deleteUser) runs the database hooks
// `session.delete.after` once per deleted row, after the transaction commits and before
// the endpoint answers; a ban is an update of the user row with `banned: true`
// (`user.update.*`); a deletion runs `user.delete.after`. So the plugin hooks the database,
// not endpoint paths, and covers server-side `auth.api.*` calls and other plugins too.

import { resolveSigningKey, signJWT } from "better-auth/plugins/jwt";

export const BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout";
export const LOGOUT_TOKEN_TYPE = "logout+jwt";
export const RECEIVER_PATH = "/api/v1/auth/backchannel-logout";

const DEFAULTS = {
  timeout: 2000,
  tokenLifetime: 120,
  retry: {
    maxAttempts: 12,
    initialDelay: 500,
    maxDelay: 30_000,
    // Every attempt carries the event's own iat, and taskgate refuses a logout token whose
    // iat is older than its bound (5 minutes by default): retrying past it is pointless.
    maxElapsed: 240_000,
    timeout: 10_000,
  },
};

/** @param {import("./index.d.ts").TaskgateOptions} options */
export function taskgate(options) {
  const config = resolveOptions(options);
  const endpoint = config.url + RECEIVER_PATH;
  /** @type {import("better-auth").AuthContext | undefined} */
  let authContext;
  let mode = "hs256";
  let log = consoleLogger;
  const inflight = new Set();
  // One awaited budget per Better Auth call: a call that deletes many sessions (revokeSessions,
  // banUser) waits at most `timeout` in total, not `timeout` per session.
  const deadlines = new WeakMap();
  // user.update.before sees the update, user.update.after the row: together they tell a ban
  // (banned set to true now) from any later update of an already banned user. Outside an
  // endpoint (no context to pair them by) any update that leaves banned: true counts.
  const banning = new WeakSet();

  async function logout(claims, hookContext, why) {
    if (!authContext) return; // init has not run: Better Auth is not set up with us
    const ctx = hookContext ?? { context: authContext };
    const event = {
      claims,
      jti: crypto.randomUUID(),
      iat: Math.floor(Date.now() / 1000),
      action: hookContext?.path ?? why,
    };
    let firstAttempt;
    const attempted = new Promise((resolve) => {
      firstAttempt = resolve;
    });
    const delivery = deliver(ctx, event, firstAttempt).catch((error) => {
      log.error(`[taskgate] back-channel logout ${describe(event)} failed: ${errorText(error)}`);
    }).finally(() => {
      inflight.delete(delivery);
      firstAttempt();
    });
    inflight.add(delivery);

    const now = Date.now();
    let deadline = now + config.timeout;
    if (hookContext) {
      deadline = deadlines.get(hookContext) ?? deadline;
      deadlines.set(hookContext, deadline);
    }
    let timer;
    await Promise.race([attempted, new Promise((resolve) => {
      timer = setTimeout(resolve, Math.max(0, deadline - now));
    })]);
    clearTimeout(timer);
    // What is left (retries) must outlive the request on serverless hosts too:
    // Better Auth's background-task handler (advanced.backgroundTasks, e.g. waitUntil).
    authContext.runInBackground(delivery);
  }

  async function deliver(ctx, event, firstAttemptDone) {
    const sign = await signer(ctx);
    const started = Date.now();
    let attempt = 0;
    let last = "";
    for (;;) {
      attempt += 1;
      const outcome = await post(await sign(event), attempt === 1 ? config.timeout : config.retry.timeout);
      if (attempt === 1) firstAttemptDone();
      if (outcome.kind === "delivered") {
        if (attempt > 1) log.info(`[taskgate] back-channel logout ${describe(event)} delivered on attempt ${attempt}`);
        return;
      }
      last = outcome.detail;
      if (outcome.kind === "refused") {
        log.error(`[taskgate] back-channel logout ${describe(event)} refused by ${endpoint}: ${last}; not retried`);
        return undelivered(event, attempt, last, true);
      }
      const delay = backoff(attempt, outcome.retryAfter);
      const elapsed = Date.now() - started;
      if (!config.retry || attempt >= config.retry.maxAttempts || elapsed + delay > config.retry.maxElapsed) {
        log.error(`[taskgate] back-channel logout ${describe(event)} not delivered to ${endpoint} after ${attempt} `
          + `attempt(s) in ${Math.round(elapsed / 1000)} s: ${last}`);
        return undelivered(event, attempt, last, false);
      }
      if (attempt === 1) {
        log.warn(`[taskgate] back-channel logout ${describe(event)} attempt 1 failed: ${last}; retrying in the background`);
      }
      await sleep(delay);
    }
  }

  // A signing function for one event: the key is looked up once, and each attempt is signed
  // afresh with the event's iat and jti but its own short exp.
  async function signer(ctx) {
    // In jwks mode an unset iss/aud is filled in by signJWT exactly as in access tokens
    // (the jwt() plugin's jwt.issuer/jwt.audience, else Better Auth's base URL).
    const fallback = mode === "jwks" ? undefined : baseOrigin(ctx);
    const iss = config.issuer ?? fallback;
    const aud = config.audience ?? fallback;
    const payload = (event) => dropUndefined({
      iss,
      aud,
      iat: event.iat,
      exp: Math.floor(Date.now() / 1000) + config.tokenLifetime,
      jti: event.jti,
      events: { [BACKCHANNEL_LOGOUT_EVENT]: {} },
      ...event.claims,
    });
    if (mode === "jwks") {
      const options = authContext.getPlugin("jwt")?.options;
      const resolvedKey = (await resolveSigningKey(ctx, options)) ?? undefined; // null: a custom jwt.sign
      return (event) => signJWT(ctx, { options, payload: payload(event), header: { typ: LOGOUT_TOKEN_TYPE }, resolvedKey });
    }
    const key = await hmacKey(config.secret ?? ctx.context.secret);
    return (event) => signHS256(key, payload(event));
  }

  async function post(token, timeout) {
    let response;
    try {
      response = await fetch(endpoint, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", accept: "application/json" },
        body: new URLSearchParams({ logout_token: token }).toString(),
        redirect: "manual", // a redirect is a misconfigured url: refused, not followed
        cache: "no-store", // Next.js patches fetch with a cache
        signal: AbortSignal.timeout(timeout),
      });
    } catch (error) {
      const detail = error?.name === "TimeoutError" ? `no answer within ${timeout} ms` : errorText(error);
      return { kind: "retry", detail };
    }
    const status = response.status;
    if (status >= 200 && status < 300) {
      await response.body?.cancel();
      return { kind: "delivered" };
    }
    const text = await response.text().catch(() => "");
    const retryable = status >= 500 || status === 408 || status === 425 || status === 429;
    return {
      kind: retryable ? "retry" : "refused",
      detail: `HTTP ${status}${errorDescription(text)}`,
      retryAfter: retryAfterMs(response.headers.get("retry-after")),
    };
  }

  function backoff(attempt, retryAfter) {
    if (!config.retry) return 0;
    const exponential = Math.min(config.retry.maxDelay, config.retry.initialDelay * 2 ** (attempt - 1));
    const jittered = exponential * (0.5 + Math.random() / 2); // senders that failed together spread out
    return Math.min(config.retry.maxDelay, Math.max(jittered, retryAfter ?? 0));
  }

  async function undelivered(event, attempts, reason, refused) {
    if (!config.onUndelivered) return;
    try {
      await config.onUndelivered({
        ...event.claims, jti: event.jti, iat: event.iat, action: event.action, attempts, reason, refused,
      });
    } catch (error) {
      log.error(`[taskgate] onUndelivered threw: ${errorText(error)}`);
    }
  }

  // Hooks never throw and never return false: a failed notice must not undo or block the
  // deletion in Better Auth (it is logged and retried instead).
  const quietly = (fn) => async (...args) => {
    try {
      await fn(...args);
    } catch (error) {
      log.error(`[taskgate] back-channel logout hook failed: ${errorText(error)}`);
    }
  };

  return {
    id: "taskgate",
    version: "0.1.0",
    init(ctx) {
      authContext = ctx;
      log = config.logger ?? ctx.logger ?? consoleLogger;
      const hasJwt = ctx.hasPlugin("jwt");
      if (config.signing === "jwks" && !hasJwt) {
        throw new Error("taskgate({ signing: \"jwks\" }) needs Better Auth's jwt() plugin");
      }
      mode = config.signing === "auto" ? (hasJwt ? "jwks" : "hs256") : config.signing;
      log.info(`[taskgate] back-channel logout to ${endpoint}, signed with `
        + (mode === "jwks" ? "the jwt() plugin's key" : "HS256 and the shared secret"));
      const sessionsInDatabase = !ctx.options.secondaryStorage || ctx.options.session?.storeSessionInDatabase;
      if (!sessionsInDatabase) {
        log.warn("[taskgate] sessions live in secondaryStorage only: Better Auth runs no database hook when "
          + "one ends, so sign-outs and session revocations do not reach taskgate (bans and deletions do). "
          + "Set session.storeSessionInDatabase: true.");
      }
      return {
        options: {
          databaseHooks: {
            session: {
              delete: {
                after: quietly((session, hookContext) =>
                  logout({ sub: session.userId, sid: session.id }, hookContext, "session deleted")),
              },
            },
            user: {
              update: {
                before: quietly(async (data, hookContext) => {
                  if (data?.banned === true && hookContext) banning.add(hookContext);
                }),
                after: quietly(async (user, hookContext) => {
                  if (user?.banned !== true || (hookContext && !banning.has(hookContext))) return;
                  if (hookContext) banning.delete(hookContext);
                  await logout({ sub: user.id }, hookContext, "user banned");
                }),
              },
              delete: {
                after: quietly((user, hookContext) => logout({ sub: user.id }, hookContext, "user deleted")),
              },
            },
          },
        },
      };
    },
    get signingMode() {
      return authContext ? mode : undefined;
    },
    get pending() {
      return inflight.size;
    },
    async settle() {
      while (inflight.size) await Promise.allSettled([...inflight]);
    },
  };
}

function resolveOptions(options) {
  if (!options || typeof options.url !== "string") throw new TypeError("taskgate({ url }) needs taskgate's base URL");
  let url;
  try {
    url = new URL(options.url);
  } catch {
    throw new TypeError(`taskgate({ url }): not a URL: ${options.url}`);
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") throw new TypeError("taskgate({ url }) must be http(s)");
  if (url.search || url.hash) throw new TypeError("taskgate({ url }) is a base URL: no query or fragment");
  const signing = options.signing ?? "auto";
  if (!["auto", "jwks", "hs256"].includes(signing)) throw new TypeError(`taskgate({ signing }): ${signing}`);
  const retry = options.retry === false ? false : { ...DEFAULTS.retry, ...dropUndefined(options.retry ?? {}) };
  const config = {
    url: url.href.replace(/\/+$/, ""),
    timeout: positive(options.timeout ?? DEFAULTS.timeout, "timeout"),
    tokenLifetime: positive(options.tokenLifetime ?? DEFAULTS.tokenLifetime, "tokenLifetime"),
    retry,
    signing,
    secret: options.secret,
    issuer: options.issuer,
    audience: options.audience,
    logger: options.logger,
    onUndelivered: options.onUndelivered,
  };
  if (retry) {
    for (const name of ["maxAttempts", "initialDelay", "maxDelay", "maxElapsed", "timeout"]) {
      positive(retry[name], `retry.${name}`);
    }
  }
  return config;
}

function positive(value, name) {
  if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
    throw new TypeError(`taskgate({ ${name} }) must be a positive number`);
  }
  return value;
}

// What the jwt() plugin puts in `iss`/`aud` by default: Better Auth's base URL (its origin).
function baseOrigin(ctx) {
  const configured = ctx.context.options.baseURL;
  if (typeof configured === "string" && configured) return configured;
  return ctx.context.baseURL ? new URL(ctx.context.baseURL).origin : "";
}

const encoder = new TextEncoder();

function base64url(bytes) {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function hmacKey(secret) {
  if (!secret) throw new Error("HS256 signing needs Better Auth's secret (or taskgate({ secret }))");
  return crypto.subtle.importKey("raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
}

async function signHS256(key, payload) {
  const header = base64url(encoder.encode(JSON.stringify({ alg: "HS256", typ: LOGOUT_TOKEN_TYPE })));
  const body = base64url(encoder.encode(JSON.stringify(payload)));
  const signature = await crypto.subtle.sign("HMAC", key, encoder.encode(`${header}.${body}`));
  return `${header}.${body}.${base64url(new Uint8Array(signature))}`;
}

function dropUndefined(object) {
  return Object.fromEntries(Object.entries(object).filter(([, value]) => value !== undefined));
}

function errorDescription(text) {
  try {
    const body = JSON.parse(text);
    const parts = [body.error, body.error_description].filter((v) => typeof v === "string");
    return parts.length ? ` ${parts.join(": ").slice(0, 300)}` : "";
  } catch {
    return "";
  }
}

function retryAfterMs(header) {
  const seconds = Number(header);
  return header && Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : undefined;
}

function describe(event) {
  const sid = event.claims.sid ? ` sid=${event.claims.sid}` : "";
  return `(${event.action}: sub=${event.claims.sub}${sid} jti=${event.jti})`;
}

function errorText(error) {
  const cause = error?.cause?.code ?? error?.cause?.message;
  return `${error?.message ?? error}${cause ? ` (${cause})` : ""}`;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const consoleLogger = {
  info: (...args) => console.info(...args),
  warn: (...args) => console.warn(...args),
  error: (...args) => console.error(...args),
};
