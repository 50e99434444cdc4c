// @taskgate/better-auth: tells taskgate when Better Auth ends a session, bans or deletes a
// user, with an OpenID Connect Back-Channel Logout 1.0 logout token, through a durable outbox.
//
// Hook points (better-auth 1.7.29). Every session deletion of the internal adapter
// (deleteSession, deleteSessions, deleteUserSessions, deleteUser) runs the database hooks
// `session.delete.before` per row, inside the caller's transaction when there is one (Better
// Auth runs them through getCurrentAdapter, i.e. on the transaction's connection), and
// `session.delete.after` per row once that transaction has committed. A user deletion runs
// `user.delete.before`/`after` the same way. A ban is an update of the user row with
// `banned: true`; `user.update.before` sees the new data but not which user it is, so a ban's
// own `{sub}` logout is written by `user.update.after`, right after the update.
//
// Consent withdrawals (@better-auth/oauth-provider 1.7.29). The provider deletes an
// `oauthConsent` row with `ctx.context.adapter.delete` (its /oauth2/delete-consent endpoint),
// i.e. on the raw adapter: no database hook runs for it (Better Auth runs them only through
// its internal adapter), and a plugin `hooks.after` on the path would miss a deletion made
// anywhere else. So, when the provider is installed, the plugin watches the adapter itself:
// its `delete`/`deleteMany` of `oauthConsent` (and of `oauthClient`, whose deletion takes the
// client's consents with it, ON DELETE CASCADE) read the rows about to go, write one outbox
// row per consent ({sub: user, client_id}, no sid: the user's grant to that client ended),
// delete, then make the first attempts, as for sessions.
//
// So: each logout is written to the `taskgateOutbox` table by the before hook, through the
// adapter of the current transaction (it commits or rolls back with the deletion). The after
// hook makes the first attempt at once (awaited, at most `timeout` per Better Auth call).
// Whatever is not delivered stays in the table, and a background loop in every Better Auth
// instance on that database delivers it, claiming each row with a lease, until it is
// delivered, refused (4xx), or can no longer matter (every token it covers has expired).

import { getCurrentAdapter } from "better-auth";
import { resolveSigningKey, signJWT } from "better-auth/plugins/jwt";
import { SignJWT } from "jose";

export const BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout";
export const LOGOUT_TOKEN_TYPE = "logout+jwt";
export const RECEIVER_PATH = "/api/v1/auth/backchannel-logout";
export const OUTBOX_MODEL = "taskgateOutbox";
/** The OAuth provider's consent model: deleting a row of it ends a user's grant to a client. */
export const CONSENT_MODEL = "oauthConsent";
const CLIENT_MODEL = "oauthClient";
const OAUTH_PROVIDER_ID = "oauth-provider";
const WATCHED = Symbol.for("taskgate.consentWatch");
const PAGE = 500; // rows read per query when a client's consents are listed
const FIRST_ATTEMPTS = 20; // logouts of one deletion attempted at once; the rest go to the outbox loop
/** Seconds added to `maxTokenAge` before a logout is given up: taskgate's leeway (at most 300 s) and clock skew. */
export const GIVE_UP_MARGIN = 600;

const DEFAULTS = {
  timeout: 2000,
  tokenLifetime: 120,
  maxTokenAge: 604_800, // taskgate's JWT_MAX_AGE_SECONDS default (7 days)
  retry: { initialDelay: 500, maxDelay: 30_000, timeout: 10_000 },
  outbox: { pollInterval: 5000, lease: 60_000, batchSize: 50 },
};

// A timer runs in the async context that scheduled it (a request's, in Better Auth's
// AsyncLocalStorage stores): the loop runs in the context the plugin started it in instead.
const { AsyncResource } = globalThis.process?.getBuiltinModule?.("node:async_hooks") ?? {};

/** @param {import("./index.d.ts").TaskgateOptions} options */
export function taskgate(options) {
  const config = resolveOptions(options);
  const endpoint = config.url + RECEIVER_PATH;
  const clock = config.now;
  const durable = config.outbox !== false && config.retry !== false;
  const model = OUTBOX_MODEL;
  const instance = crypto.randomUUID(); // this process's lease owner
  /** @type {import("better-auth").AuthContext | undefined} */
  let authContext;
  let mode = "hs256";
  let log = consoleLogger;
  const inflight = new Set(); // running deliveries: first attempts and volatile ones
  const volatile = new Set(); // logouts kept in memory only (no outbox, or it could not be written)
  // One awaited budget per Better Auth call: a call that deletes many sessions (revokeSessions,
  // banUser) waits at most `timeout` in total, not `timeout` per session.
  const deadlines = new WeakMap();
  // user.update.before sees the update, user.update.after the row: together they tell a ban
  // (banned set to true now) from any later update of an already banned user. Outside an
  // endpoint (no context to pair them by) any update that leaves banned: true counts.
  const banning = new WeakSet();
  // The outbox row a before hook wrote, by the row Better Auth deletes (the after hook gets the
  // same object).
  const written = new WeakMap();
  const loop = {
    scope: undefined, timer: undefined, timerAt: Infinity, running: undefined, again: false,
    stopped: false, started: false, failures: 0, lastError: "", loggedError: "",
  };

  // ---- the outbox table ----------------------------------------------------------------

  const db = () => authContext.adapter;
  const at = (ms) => new Date(ms);
  // The memory adapter makes a table on its first insert and throws "not found" on a read before.
  const noTableYet = (error) => authContext.adapter.id === "memory" && /not found/.test(String(error?.message));
  const rows = (query) => db().findMany(query).catch((error) => {
    if (noTableYet(error)) return [];
    throw error;
  });

  function toRecord(row) {
    return {
      id: row.id,
      claims: dropUndefined({ sub: row.sub, sid: row.sid ?? undefined, client_id: row.clientId ?? undefined }),
      consentId: row.consentId ?? undefined,
      action: row.action ?? "logout",
      revokedAt: time(row.revokedAt),
      attempts: Number(row.attempts ?? 0),
      confirmed: Boolean(row.confirmed),
      lastError: row.lastError ?? "",
    };
  }

  // Written before the deletion, through the adapter of the current transaction if any, so the
  // row commits (or rolls back) with it. Leased to this instance: its after hook makes the
  // first attempt; if that hook never runs (a crash, a rollback on an adapter without
  // transactions, a vetoed deletion), any instance takes the row when the lease ends and
  // first checks that the deletion really happened (`confirmed: false`).
  async function insert(claims, action, confirmed, adapter, consentId) {
    const now = clock();
    const row = await adapter.create({
      model,
      data: {
        sub: claims.sub,
        sid: claims.sid,
        ...(claims.client_id !== undefined ? { clientId: claims.client_id, consentId } : {}),
        action,
        revokedAt: at(now),
        confirmed,
        attempts: 0,
        nextAttemptAt: at(now),
        leaseUntil: at(now + config.outbox.lease),
        leaseOwner: instance,
      },
    });
    return toRecord(row);
  }

  async function record(entity, claims, action, adapter) {
    if (!authContext || !durable) return;
    try {
      const into = adapter ?? await getCurrentAdapter(db());
      written.set(entity, await insert(claims, action, false, into, entity.consentId));
    } catch (error) {
      // On PostgreSQL a failed statement also aborts the transaction around it, so the
      // deletion fails too; elsewhere the after hook writes the row or keeps it in memory.
      logOnce(`[taskgate] could not write ${describe({ claims, action })} to the outbox: ${errorText(error)}`);
    }
  }

  async function claim(row) {
    const now = clock();
    const claimed = await db().incrementOne({
      model,
      where: [
        { field: "id", value: row.id },
        { field: "leaseUntil", operator: "lte", value: at(now) },
      ],
      increment: { attempts: 1 },
      set: { leaseUntil: at(now + config.outbox.lease), leaseOwner: instance },
    });
    return claimed && claimed.leaseOwner === instance ? toRecord(claimed) : null;
  }

  async function remove(rec) {
    await db().delete({ model, where: [{ field: "id", value: rec.id }] });
  }

  async function release(rec, outcome) {
    const delay = backoff(Math.max(1, rec.attempts), outcome.retryAfter);
    await db().update({
      model,
      where: [{ field: "id", value: rec.id }, { field: "leaseOwner", value: instance }],
      update: {
        attempts: rec.attempts,
        confirmed: true,
        nextAttemptAt: at(clock() + delay),
        leaseUntil: at(0),
        leaseOwner: null,
        lastError: outcome.detail.slice(0, 500),
      },
    });
    return delay;
  }

  // A row whose after hook never ran: did the deletion it was written for happen?
  async function deletionHappened(rec) {
    if (rec.claims.client_id !== undefined) {
      // A withdrawn consent: that row is gone, or its client is (a client deletion).
      const consent = rec.consentId === undefined ? null
        : await db().findOne({ model: CONSENT_MODEL, where: [{ field: "id", value: rec.consentId }] });
      if (!consent) return true;
      return !(await db().findOne({ model: CLIENT_MODEL, where: [{ field: "clientId", value: rec.claims.client_id }] }));
    }
    if (rec.claims.sid) {
      const session = await db().findOne({ model: "session", where: [{ field: "id", value: rec.claims.sid }] });
      // preserveSessionInDatabase keeps the row with expiresAt set to the time it ended
      return !session || time(session.expiresAt) <= clock();
    }
    return !(await db().findOne({ model: "user", where: [{ field: "id", value: rec.claims.sub }] }));
  }

  const giveUpAt = (rec) => rec.revokedAt + (config.maxTokenAge + GIVE_UP_MARGIN) * 1000;

  // ---- one logout, from a hook --------------------------------------------------------

  async function logout(entity, claims, hookContext, why) {
    if (!authContext) return; // init has not run: Better Auth is not set up with us
    const ctx = hookContext ?? { context: authContext };
    const action = hookContext?.path ?? why;
    let rec = written.get(entity);
    written.delete(entity);
    if (!rec && durable) {
      try {
        rec = await insert(claims, action, true, db(), entity.consentId); // after the commit: confirmed
      } catch (error) {
        logOnce(`[taskgate] could not write ${describe({ claims, action })} to the outbox: ${errorText(error)}; `
          + "it is retried from memory only");
      }
    }
    rec ??= { claims, action, revokedAt: clock(), attempts: 0, confirmed: true, lastError: "", volatile: true };
    rec.action = action;

    let firstAttempt;
    const attempted = new Promise((resolve) => {
      firstAttempt = resolve;
    });
    const work = (rec.volatile ? deliverVolatile(ctx, rec, firstAttempt) : deliverFirst(ctx, rec, firstAttempt))
      .catch((error) => log.error(`[taskgate] back-channel logout ${describe(rec)} failed: ${errorText(error)}`))
      .finally(() => {
        inflight.delete(work);
        firstAttempt();
      });
    inflight.add(work);

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
    // What is left must outlive the request on serverless hosts too: Better Auth's
    // background-task handler (advanced.backgroundTasks, e.g. waitUntil).
    authContext.runInBackground(work);
  }

  // The first attempt of a logout that has its outbox row (leased to us by insert()).
  async function deliverFirst(ctx, rec, firstAttemptDone) {
    rec.attempts = 1;
    const outcome = await attempt(ctx, rec, config.timeout);
    firstAttemptDone();
    await settleOutcome(rec, outcome);
  }

  // What an attempt's outcome does to the row: gone when delivered or refused, else released
  // for a later attempt (by any instance).
  async function settleOutcome(rec, outcome) {
    if (outcome.kind === "delivered") {
      if (rec.attempts > 1) log.info(`[taskgate] back-channel logout ${describe(rec)} delivered on attempt ${rec.attempts}`);
      await remove(rec);
      return "delivered";
    }
    if (outcome.kind === "refused") {
      log.error(`[taskgate] back-channel logout ${describe(rec)} refused by ${endpoint}: ${outcome.detail}; not retried`);
      await remove(rec);
      await undelivered(rec, outcome.detail, true);
      return "refused";
    }
    rec.lastError = outcome.detail;
    const delay = await release(rec, outcome);
    if (rec.attempts === 1) {
      log.warn(`[taskgate] back-channel logout ${describe(rec)} attempt 1 failed: ${outcome.detail}; `
        + "kept in the outbox and retried in the background");
    }
    wakeIn(delay);
    return "retry";
  }

  // Without the outbox (`outbox: false`, `retry: false`, or a row that could not be written):
  // retried from memory, lost if the process stops.
  async function deliverVolatile(ctx, rec, firstAttemptDone) {
    volatile.add(rec);
    try {
      for (;;) {
        rec.attempts += 1;
        const outcome = await attempt(ctx, rec, rec.attempts === 1 ? config.timeout : config.retry.timeout);
        if (rec.attempts === 1) firstAttemptDone();
        if (outcome.kind === "delivered") {
          if (rec.attempts > 1) log.info(`[taskgate] back-channel logout ${describe(rec)} delivered on attempt ${rec.attempts}`);
          return;
        }
        if (outcome.kind === "refused") {
          log.error(`[taskgate] back-channel logout ${describe(rec)} refused by ${endpoint}: ${outcome.detail}; not retried`);
          return undelivered(rec, outcome.detail, true);
        }
        rec.lastError = outcome.detail;
        const delay = backoff(rec.attempts, outcome.retryAfter);
        const why = !config.retry ? "retries are off"
          : clock() + delay > giveUpAt(rec) ? "every token it covers has expired"
            : loop.stopped ? "the plugin was closed (this logout was in memory only)" : "";
        if (why) {
          log.error(`[taskgate] back-channel logout ${describe(rec)} not delivered to ${endpoint} after `
            + `${rec.attempts} attempt(s): ${outcome.detail}; given up: ${why}`);
          return undelivered(rec, outcome.detail, false);
        }
        if (rec.attempts === 1) {
          log.warn(`[taskgate] back-channel logout ${describe(rec)} attempt 1 failed: ${outcome.detail}; `
            + "retrying from memory (not durable)");
        }
        await sleep(delay);
      }
    } finally {
      volatile.delete(rec);
    }
  }

  // ---- the background loop ------------------------------------------------------------

  function wakeIn(delay) {
    if (loop.stopped || !loop.started) return;
    const due = Date.now() + Math.max(0, delay);
    if (loop.timer !== undefined && loop.timerAt <= due) return;
    clearTimeout(loop.timer);
    loop.timerAt = due;
    loop.timer = setTimeout(() => {
      loop.timer = undefined;
      loop.timerAt = Infinity;
      runTick();
    }, Math.max(0, delay));
    loop.timer.unref?.();
  }

  function runTick() {
    if (loop.stopped) return;
    if (loop.running) {
      loop.again = true;
      return;
    }
    const run = () => tick();
    loop.running = (loop.scope ? loop.scope.runInAsyncScope(run) : run())
      .then((more) => {
        loop.loggedError = "";
        return more ? 0 : loop.failures ? backoff(loop.failures) : config.outbox.pollInterval;
      }, (error) => {
        logOnce(`[taskgate] outbox loop: ${errorText(error)}`);
        return config.outbox.pollInterval;
      })
      .then((next) => {
        loop.running = undefined;
        if (loop.again) {
          loop.again = false;
          next = 0;
        }
        wakeIn(next);
      });
  }

  // One pass: give up what can no longer matter, then deliver what is due, oldest first. After a
  // failed attempt the pass stops (taskgate is down: one probe per pass, not one per row); after
  // a success that ends a run of failures, every row is made due at once (taskgate is back).
  async function tick() {
    const now = clock();
    const free = { field: "leaseUntil", operator: "lte", value: at(now) };
    const horizon = at(now - (config.maxTokenAge + GIVE_UP_MARGIN) * 1000);
    const stale = await rows({
      model, where: [{ field: "revokedAt", operator: "lt", value: horizon }, free], limit: config.outbox.batchSize,
    });
    for (const row of stale) {
      if (loop.stopped) return false;
      const rec = await claim(row);
      if (!rec) continue;
      const last = rec.lastError || "no attempt made";
      log.error(`[taskgate] back-channel logout ${describe(rec)} not delivered to ${endpoint} after `
        + `${rec.attempts - 1} attempt(s): ${last}; given up: every token it covers has expired`);
      await remove(rec);
      await undelivered({ ...rec, attempts: rec.attempts - 1 }, last, false);
    }
    const due = await rows({
      model,
      where: [{ field: "nextAttemptAt", operator: "lte", value: at(now) }, free],
      sortBy: { field: "nextAttemptAt", direction: "asc" },
      limit: config.outbox.batchSize,
    });
    for (const row of due) {
      if (loop.stopped) return false;
      const rec = await claim(row);
      if (!rec) continue; // another instance has it
      const result = await retryClaimed(rec);
      if (result === "retry") {
        if (!loop.failures) {
          log.warn(`[taskgate] outbox: ${endpoint} failing (${rec.lastError}); pending logouts are retried`);
        }
        loop.failures += 1;
        return false;
      }
      if (result === "delivered" && loop.failures) {
        log.info(`[taskgate] outbox: ${endpoint} is back after ${loop.failures} failed attempt(s); `
          + "sending every pending logout now");
        loop.failures = 0;
        await db().updateMany({
          model,
          where: [{ field: "nextAttemptAt", operator: "gt", value: at(clock()) }],
          update: { nextAttemptAt: at(clock()) },
        });
        return true;
      }
      if (result !== "dropped") loop.failures = 0;
    }
    return due.length === config.outbox.batchSize || stale.length === config.outbox.batchSize;
  }

  async function retryClaimed(rec) {
    if (!rec.confirmed && !(await deletionHappened(rec))) {
      log.warn(`[taskgate] back-channel logout ${describe(rec)} dropped: the deletion it was written for `
        + "did not happen (rolled back or vetoed)");
      await remove(rec);
      return "dropped";
    }
    const outcome = await attempt({ context: authContext }, rec, config.retry.timeout);
    return settleOutcome(rec, outcome);
  }

  function startLoop() {
    if (!durable || loop.started || loop.stopped) return;
    loop.started = true;
    loop.scope = AsyncResource ? new AsyncResource("taskgate-outbox") : undefined;
    wakeIn(0); // what earlier runs (or other instances) left pending
  }

  // ---- signing and sending --------------------------------------------------------------

  // Each attempt is a new logout token: its own jti, iat = now and a short exp, with
  // revoked_before = the time of the sign-out (the cutoff taskgate applies), so an old
  // sign-out never meets taskgate's bound on a logout token's age.
  async function attempt(ctx, rec, timeout) {
    let token;
    try {
      token = await sign(ctx, rec);
    } catch (error) {
      return { kind: "retry", detail: `signing failed: ${errorText(error)}` };
    }
    return post(token, timeout);
  }

  async function sign(ctx, rec) {
    // In jwks mode an unset iss/aud is filled in by signJWT exactly as in access tokens
    // (the jwt() plugin's jwt.issuer/jwt.audience, else Better Auth's base URL).
    const fallback = mode === "jwks" ? undefined : baseOrigin(ctx);
    const revokedBefore = Math.floor(rec.revokedAt / 1000);
    const iat = Math.max(Math.floor(clock() / 1000), revokedBefore);
    rec.jti = crypto.randomUUID();
    const payload = dropUndefined({
      iss: config.issuer ?? fallback,
      aud: config.audience ?? fallback,
      iat,
      exp: iat + config.tokenLifetime,
      jti: rec.jti,
      events: { [BACKCHANNEL_LOGOUT_EVENT]: {} },
      ...rec.claims,
      revoked_before: revokedBefore,
    });
    if (mode === "jwks") {
      const options = authContext.getPlugin("jwt")?.options;
      const resolvedKey = (await resolveSigningKey(ctx, options)) ?? undefined; // null: a custom jwt.sign
      return signJWT(ctx, { options, payload, header: { typ: LOGOUT_TOKEN_TYPE }, resolvedKey });
    }
    const secret = config.secret ?? ctx.context.secret;
    if (!secret) throw new Error("HS256 signing needs Better Auth's secret (or taskgate({ secret }))");
    return new SignJWT(payload)
      .setProtectedHeader({ alg: "HS256", typ: LOGOUT_TOKEN_TYPE })
      .sign(encoder.encode(secret));
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
    const retry = config.retry || DEFAULTS.retry;
    const exponential = Math.min(retry.maxDelay, retry.initialDelay * 2 ** Math.min(attempt - 1, 30));
    const jittered = exponential * (0.5 + Math.random() / 2); // senders that failed together spread out
    return Math.min(retry.maxDelay, Math.max(jittered, retryAfter ?? 0));
  }

  async function undelivered(rec, reason, refused) {
    if (!config.onUndelivered) return;
    try {
      const revokedBefore = Math.floor(rec.revokedAt / 1000);
      await config.onUndelivered({
        ...rec.claims, jti: rec.jti, iat: revokedBefore, revokedBefore, action: rec.action,
        attempts: rec.attempts, reason, refused,
      });
    } catch (error) {
      log.error(`[taskgate] onUndelivered threw: ${errorText(error)}`);
    }
  }

  function logOnce(message) {
    if (message === loop.loggedError) return;
    loop.loggedError = message;
    log.error(message);
  }

  // ---- observability ----------------------------------------------------------------

  async function outboxStatus() {
    const now = clock();
    let pending = 0;
    let oldest = null;
    if (durable && authContext) {
      const [first] = await rows({ model, sortBy: { field: "revokedAt", direction: "asc" }, limit: 1 });
      if (first) {
        oldest = time(first.revokedAt);
        pending = Number(await db().count({ model }));
      }
    }
    for (const rec of volatile) oldest = oldest === null ? rec.revokedAt : Math.min(oldest, rec.revokedAt);
    pending += volatile.size;
    return {
      durable: durable && Boolean(authContext) && authContext.adapter.id !== "memory",
      adapter: authContext?.adapter.id,
      pending,
      inMemory: volatile.size,
      oldestRevokedAt: oldest,
      oldestAgeSeconds: oldest === null ? null : Math.max(0, (now - oldest) / 1000),
      inFlight: inflight.size,
      failing: loop.failures > 0,
      running: loop.started && !loop.stopped,
    };
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

  // ---- consent withdrawals -------------------------------------------------------------

  // The OAuth provider deletes consents (and clients) on the raw adapter, where no database
  // hook runs: the plugin wraps that adapter's delete and deleteMany, in place (the object
  // keeps its identity: Better Auth keys its schema checks and transactions on it).
  function watchConsents(ctx) {
    const provider = ctx.getPlugin?.(OAUTH_PROVIDER_ID);
    const adapter = ctx.adapter;
    if (!provider || !adapter || adapter[WATCHED]) return false;
    const schema = provider.options?.schema ?? {};
    const consentModels = new Set([CONSENT_MODEL, schema.oauthConsent?.modelName].filter(Boolean));
    const clientModels = new Set([CLIENT_MODEL, schema.oauthClient?.modelName].filter(Boolean));
    const consentModel = schema.oauthConsent?.modelName ?? CONSENT_MODEL;
    const refreshTokenModel = schema.oauthRefreshToken?.modelName ?? "oauthRefreshToken";
    const accessTokenModel = schema.oauthAccessToken?.modelName ?? "oauthAccessToken";
    const original = { delete: adapter.delete, deleteMany: adapter.deleteMany };

    // The provider does not end the grant when a consent goes (1.7.29): the app's refresh
    // tokens keep minting access tokens, newer than the withdrawal, that taskgate would take.
    // So the user's refresh tokens (and opaque access tokens) of that client go too, as the
    // provider itself does when it sees a refresh token replayed (its invalidateRefreshFamily).
    async function endProviderGrants(grants) {
      const done = new Set();
      for (const { sub, clientId } of grants) {
        const key = JSON.stringify([sub, clientId]);
        if (done.has(key)) continue;
        done.add(key);
        const where = [{ field: "clientId", value: clientId }, { field: "userId", value: sub }];
        await original.deleteMany.call(adapter, { model: accessTokenModel, where });
        await original.deleteMany.call(adapter, { model: refreshTokenModel, where });
        await original.deleteMany.call(adapter, { model: accessTokenModel, where }); // minted meanwhile
      }
    }

    // Rows written before the deletion and confirmed now that it happened: due at once, for any instance.
    async function handOver(grants) {
      for (const grant of grants) {
        const rec = written.get(grant);
        written.delete(grant);
        await db().update({
          model,
          where: [{ field: "id", value: rec.id }],
          update: { confirmed: true, leaseUntil: at(0), leaseOwner: null, nextAttemptAt: at(clock()) },
        });
      }
      wakeIn(0);
    }

    const allRows = async (query) => {
      const found = [];
      for (let offset = 0; ; offset += PAGE) {
        const page = await adapter.findMany({ ...query, limit: PAGE, offset, sortBy: { field: "id", direction: "asc" } });
        found.push(...page);
        if (page.length < PAGE) return found;
      }
    };

    // The grants a deletion ends: one per consent about to be deleted (a client's deletion
    // deletes its consents too). A consent without a user (a reference-only one) has no sub.
    async function grantsEnding({ model: name, where }) {
      let consents = [];
      let why = "consent withdrawn";
      if (consentModels.has(name)) {
        consents = await allRows({ model: name, where });
      } else if (clientModels.has(name)) {
        why = "client deleted";
        for (const client of await allRows({ model: name, where })) {
          if (typeof client.clientId !== "string") continue;
          consents.push(...await allRows({ model: consentModel, where: [{ field: "clientId", value: client.clientId }] }));
        }
      } else {
        return { grants: [], why };
      }
      const grants = consents
        .filter((consent) => typeof consent.userId === "string" && consent.userId && typeof consent.clientId === "string")
        .map((consent) => ({ consentId: consent.id, sub: consent.userId, clientId: consent.clientId }));
      return { grants, why };
    }

    async function deleting(method, args) {
      const run = () => original[method].call(adapter, args);
      if (!authContext) return run();
      let ending = { grants: [] };
      try {
        ending = await grantsEnding(args ?? {});
      } catch (error) {
        // e.g. the memory adapter without the table: the deletion itself says what is wrong
        log.error(`[taskgate] could not read the consents a deletion ends: ${errorText(error)}`);
      }
      let { grants } = ending;
      const { why } = ending;
      if (!grants.length) return run();
      const claimsOf = (grant) => ({ sub: grant.sub, client_id: grant.clientId });
      // Before: in the outbox, unconfirmed (the loop checks that the consent is gone).
      await Promise.all(grants.map((grant) => quietly(() => record(grant, claimsOf(grant), why, adapter))()));
      const result = await run();
      if (consentModels.has(args.model)) {
        // Exactly the rows that went (a `delete` may take only one of several matches): the
        // others stay unconfirmed, and the loop drops them once it sees the consent is still there.
        const left = new Set((await allRows({ model: args.model, where: args.where }).catch(() => [])).map((c) => c.id));
        grants = grants.filter((grant) => !left.has(grant.consentId));
        if (config.revokeOAuthGrant) {
          await endProviderGrants(grants).catch((error) => log.error(
            `[taskgate] could not revoke the refresh tokens of a withdrawn consent: ${errorText(error)}`));
        }
      }
      // After: the first attempts, together at most `timeout`; past FIRST_ATTEMPTS (a client
      // with many users) the rest are handed to the loop at once, one request at a time.
      // (A logout that has no row, e.g. without the outbox, is attempted now whatever the count.)
      const now = [];
      const later = [];
      grants.forEach((grant, i) => (i < FIRST_ATTEMPTS || !written.has(grant) ? now : later).push(grant));
      await Promise.all(now.map((grant) => quietly(() => logout(grant, claimsOf(grant), undefined, why))()));
      if (later.length) await quietly(() => handOver(later))();
      return result;
    }

    adapter.delete = (args) => deleting("delete", args);
    adapter.deleteMany = (args) => deleting("deleteMany", args);
    Object.defineProperty(adapter, WATCHED, { value: true });
    return true;
  }

  return {
    id: "taskgate",
    version: "0.3.0",
    ...(durable ? { schema: outboxSchema() } : {}),
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
      for (const name of config.ignoredRetryOptions) {
        log.warn(`[taskgate] retry.${name} is no longer used: a logout is retried from the outbox until every `
          + "token it covers has expired (maxTokenAge)");
      }
      if (durable && ctx.adapter.id === "memory") {
        log.warn("[taskgate] the memory adapter keeps the outbox in process memory: logouts still pending "
          + "when the process stops are lost");
      }
      const sessionsInDatabase = !ctx.options.secondaryStorage || ctx.options.session?.storeSessionInDatabase;
      if (!sessionsInDatabase) {
        log.warn("[taskgate] sessions live in secondaryStorage only: Better Auth runs no database hook when "
          + "one ends, so sign-outs and session revocations do not reach taskgate (bans and deletions do). "
          + "Set session.storeSessionInDatabase: true.");
      }
      if (watchConsents(ctx)) {
        log.info("[taskgate] OAuth consents: a withdrawn consent (or a deleted client) reaches taskgate as a "
          + "{sub, client_id} logout");
      }
      // Deferred: Better Auth (or a migration) may still be setting the database up.
      setTimeout(startLoop, 0).unref?.();
      return {
        options: {
          databaseHooks: {
            session: {
              delete: {
                before: quietly((session, hookContext) =>
                  record(session, { sub: session.userId, sid: session.id }, hookContext?.path ?? "session deleted")),
                after: quietly((session, hookContext) =>
                  logout(session, { sub: session.userId, sid: session.id }, hookContext, "session deleted")),
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
                  await logout(user, { sub: user.id }, hookContext, "user banned");
                }),
              },
              delete: {
                before: quietly((user, hookContext) => record(user, { sub: user.id }, hookContext?.path ?? "user deleted")),
                after: quietly((user, hookContext) => logout(user, { sub: user.id }, hookContext, "user deleted")),
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
      return inflight.size + volatile.size;
    },
    outboxStatus,
    async settle(timeoutMs = Infinity) {
      const until = Date.now() + timeoutMs;
      for (;;) {
        await Promise.race([Promise.allSettled([...inflight]), sleep(Math.max(0, until - Date.now()))]);
        const { pending } = await outboxStatus();
        if (!pending && !inflight.size) return 0;
        if (Date.now() >= until || (loop.stopped && !inflight.size && !volatile.size)) return pending;
        await sleep(Math.min(25, Math.max(0, until - Date.now())));
      }
    },
    async close() {
      loop.stopped = true;
      clearTimeout(loop.timer);
      loop.timer = undefined;
      await loop.running;
      await Promise.race([Promise.allSettled([...inflight]), sleep(config.timeout)]);
      if (durable && authContext) {
        // Hand what this instance had claimed back at once, rather than when the lease ends.
        await db().updateMany({
          model, where: [{ field: "leaseOwner", value: instance }], update: { leaseUntil: at(0), leaseOwner: null },
        }).catch((error) => log.error(`[taskgate] could not release the outbox leases: ${errorText(error)}`));
      }
    },
  };
}

function outboxSchema() {
  return {
    [OUTBOX_MODEL]: {
      fields: {
        sub: { type: "string", required: true },
        sid: { type: "string", required: false },
        action: { type: "string", required: false },
        // When the sign-out happened: revoked_before of every logout token sent for it.
        revokedAt: { type: "date", required: true, index: true },
        // false: written before a deletion whose commit has not been seen yet.
        confirmed: { type: "boolean", required: true, defaultValue: false },
        attempts: { type: "number", required: true, defaultValue: 0 },
        nextAttemptAt: { type: "date", required: true, index: true },
        leaseUntil: { type: "date", required: true },
        leaseOwner: { type: "string", required: false },
        lastError: { type: "string", required: false },
        // A withdrawn OAuth consent: the client (client_id of the logout token) and the consent row.
        clientId: { type: "string", required: false },
        consentId: { type: "string", required: false },
      },
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
  const given = dropUndefined(options.retry ?? {});
  const ignoredRetryOptions = ["maxAttempts", "maxElapsed"].filter((name) => name in given);
  const retry = options.retry === false ? false : { ...DEFAULTS.retry, ...given };
  const outbox = options.outbox === false ? false : { ...DEFAULTS.outbox, ...dropUndefined(options.outbox ?? {}) };
  const now = options.now ?? Date.now;
  if (typeof now !== "function") throw new TypeError("taskgate({ now }) must be a function returning ms");
  if (options.revokeOAuthGrant !== undefined && typeof options.revokeOAuthGrant !== "boolean") {
    throw new TypeError("taskgate({ revokeOAuthGrant }) must be a boolean");
  }
  const config = {
    url: url.href.replace(/\/+$/, ""),
    timeout: positive(options.timeout ?? DEFAULTS.timeout, "timeout"),
    tokenLifetime: positive(options.tokenLifetime ?? DEFAULTS.tokenLifetime, "tokenLifetime"),
    maxTokenAge: positive(options.maxTokenAge ?? DEFAULTS.maxTokenAge, "maxTokenAge"),
    retry,
    outbox,
    signing,
    secret: options.secret,
    issuer: options.issuer,
    audience: options.audience,
    logger: options.logger,
    onUndelivered: options.onUndelivered,
    revokeOAuthGrant: options.revokeOAuthGrant ?? true,
    now,
    ignoredRetryOptions,
  };
  if (retry) {
    for (const name of ["initialDelay", "maxDelay", "timeout"]) positive(retry[name], `retry.${name}`);
  }
  if (outbox) {
    for (const name of ["pollInterval", "lease", "batchSize"]) positive(outbox[name], `outbox.${name}`);
    const longest = Math.max(config.timeout, retry ? retry.timeout : 0);
    if (outbox.lease <= longest + 1000) {
      throw new TypeError(`taskgate({ outbox.lease }) must exceed the longest attempt (${longest} ms) by more than 1 s`);
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

const time = (value) => (value instanceof Date ? value.getTime() : new Date(value).getTime());

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

function describe(rec) {
  const sid = (rec.claims.sid ? ` sid=${rec.claims.sid}` : "")
    + (rec.claims.client_id !== undefined ? ` client_id=${rec.claims.client_id}` : "");
  const id = rec.id !== undefined ? ` outbox=${rec.id}` : "";
  return `(${rec.action}: sub=${rec.claims.sub}${sid}${id})`;
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
