// The durable outbox: logouts written to Better Auth's database with the deletion, delivered by
// a background loop that survives restarts and shares the work between instances, retried until
// no token they cover can still be valid. Better Auth's memory adapter stands in for the
// database: a second (or restarted) instance is a second betterAuth() on the same `db` object.
// The Python interop test (tests/interop/test_outbox.py) does the same with SQLite, real
// processes and a real taskgate.

import assert from "node:assert/strict";
import { test } from "node:test";
import { Browser, emptyDatabase, makeAuth, newEmail, PASSWORD, signIn, signUp, startReceiver } from "./helpers.js";
import { GIVE_UP_MARGIN, OUTBOX_MODEL, taskgate } from "../index.js";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(check, timeoutMs, what) {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (await check()) return;
    await sleep(20);
  }
  assert.fail(`${what}: not within ${timeoutMs} ms`);
}

/** A receiver whose port refuses connections until `back()`. */
async function downReceiver() {
  const receiver = await startReceiver();
  await receiver.close();
  return receiver;
}

function cleanup(t, receiver, ...plugins) {
  t.after(async () => {
    for (const plugin of plugins) await plugin.close();
    await receiver.close();
  });
}

const verified = (receiver) => receiver.tokens.filter((r) => r.verified);

test("the plugin declares its outbox table; outbox: false or retry: false declare none", () => {
  const plugin = taskgate({ url: "http://127.0.0.1:9" });
  assert.deepEqual(Object.keys(plugin.schema), [OUTBOX_MODEL]);
  assert.deepEqual(Object.keys(plugin.schema[OUTBOX_MODEL].fields).sort(), [
    "action", "attempts", "clientId", "confirmed", "consentId", "lastError", "leaseOwner", "leaseUntil", "nextAttemptAt",
    "revokedAt", "sid", "sub",
  ]);
  assert.equal(taskgate({ url: "http://127.0.0.1:9", outbox: false }).schema, undefined);
  assert.equal(taskgate({ url: "http://127.0.0.1:9", retry: false }).schema, undefined);
});

test("restart: a new Better Auth instance on the same database delivers what the first left pending", async (t) => {
  const receiver = await downReceiver();
  const db = emptyDatabase();
  const first = makeAuth({ receiver, db });
  const alice = await signUp(first.auth, newEmail());
  const laptop = await signIn(first.auth, alice.user.email);
  const bob = await signUp(first.auth, newEmail());

  const signedOutAt = Math.floor(Date.now() / 1000);
  await alice.browser.post("/sign-out");
  await laptop.browser.post("/sign-out");
  const before = await first.plugin.outboxStatus();
  assert.equal(before.pending, 2, "both logouts wait in the outbox");
  assert.ok(before.oldestAgeSeconds >= 0 && before.oldestAgeSeconds < 5, JSON.stringify(before));
  assert.equal(before.durable, false, "the memory adapter is not durable, and says so");
  assert.match(first.logger.lines.warn.join("\n"), /memory adapter keeps the outbox in process memory/);
  await first.plugin.close(); // the first instance stops (its leases are handed back)

  await sleep(1100); // the next instance signs later: a later iat, the same revoked_before
  const second = makeAuth({ receiver, db });
  cleanup(t, receiver, second.plugin);
  receiver.trust(second.auth, true);
  await receiver.listen();
  assert.equal(await second.plugin.settle(5000), 0);

  const tokens = verified(receiver);
  assert.equal(tokens.length, 2, JSON.stringify(receiver.tokens.map((r) => r.verifyError)));
  assert.deepEqual(new Set(tokens.map((r) => r.claims.sid)), new Set([alice.session.id, laptop.session.id]));
  for (const { claims } of tokens) {
    assert.ok(Math.abs(claims.revoked_before - signedOutAt) <= 1, "revoked_before: when the sign-out happened");
    assert.ok(claims.iat > claims.revoked_before, "iat: when this token was signed, by the second instance");
  }
  assert.equal(db.taskgateOutbox.length, 0);
  assert.ok((await new Browser(second.auth).post("/sign-in/email", { email: bob.user.email, password: PASSWORD })),
    "the second instance is the same deployment");
});

test("a crash with the lease held: another instance takes the row once the lease has ended", async (t) => {
  const receiver = await startReceiver();
  const db = emptyDatabase();
  const options = { timeout: 300, retry: { initialDelay: 20, maxDelay: 100, timeout: 300 }, outbox: { lease: 1500, pollInterval: 100 } };
  const first = makeAuth({ receiver, db, taskgateOptions: options });
  const alice = await signUp(first.auth, newEmail());
  receiver.answer("hang"); // the first attempt never ends: the process "dies" in it
  await alice.browser.post("/sign-out");
  await first.plugin.close(); // what a crash leaves is a row still leased to the dead process:
  Object.assign(db.taskgateOutbox[0], { leaseOwner: "crashed", leaseUntil: new Date(Date.now() + 1000) });
  const hung = receiver.tokens.length;

  const second = makeAuth({ receiver, db, taskgateOptions: options });
  cleanup(t, receiver, second.plugin);
  receiver.trust(second.auth, true);
  await second.auth.$context;
  await sleep(500);
  assert.equal(receiver.tokens.length, hung, "not taken while the lease lasts");
  assert.equal(await second.plugin.settle(5000), 0);
  assert.deepEqual(receiver.tokens.slice(hung).map((r) => [r.verified, r.claims.sid]), [[true, alice.session.id]]);
});

test("a deletion that rolls back takes its outbox rows with it: nothing is sent", async (t) => {
  const receiver = await startReceiver();
  // Better Auth deletes the sessions and changes the password in one transaction; this
  // makes the password write fail after the sessions were deleted (and the rows written).
  const { auth, plugin, db } = makeAuth({
    receiver,
    databaseHooks: { account: { update: { before: async () => { throw new Error("disk full"); } } } },
  });
  cleanup(t, receiver, plugin);
  const alice = await signUp(auth, newEmail());
  const laptop = await signIn(auth, alice.user.email);

  await assert.rejects(alice.browser.post("/change-password", {
    currentPassword: PASSWORD, newPassword: `${PASSWORD}-2`, revokeOtherSessions: true,
  }));

  assert.equal(db.taskgateOutbox.length, 0, "rolled back with the deletion");
  assert.equal(db.session.length, 2, "the sessions are still there");
  assert.equal(await plugin.settle(2000), 0);
  assert.equal(receiver.tokens.length, 0);
  assert.ok((await laptop.browser.session()).id);
});

test("a vetoed deletion: the row written before it is checked, found live, and dropped", async (t) => {
  const receiver = await startReceiver();
  const { auth, plugin, db, logger } = makeAuth({
    receiver,
    // Another hook (running after the plugin's) refuses the deletion: no transaction to roll back.
    databaseHooks: { session: { delete: { before: async () => false } } },
    taskgateOptions: { timeout: 300, retry: { initialDelay: 20, maxDelay: 100, timeout: 300 }, outbox: { lease: 1500, pollInterval: 100 } },
  });
  cleanup(t, receiver, plugin);
  const alice = await signUp(auth, newEmail());

  await alice.browser.post("/sign-out");
  assert.equal(db.taskgateOutbox.length, 1, "written before the hooks that vetoed it ran");
  assert.equal(db.taskgateOutbox[0].confirmed, false);
  assert.equal(await plugin.settle(5000), 0);

  assert.equal(receiver.tokens.length, 0, "a session that still lives is not signed out at taskgate");
  assert.match(logger.lines.warn.join("\n"), /dropped: the deletion it was written for did not happen/);
  assert.equal(db.session.filter((s) => s.id === alice.session.id).length, 1, "the session lives on");
});

test("two instances on one database share the work: each logout delivered once", async (t) => {
  const receiver = await downReceiver();
  const db = emptyDatabase();
  const a = makeAuth({ receiver, db });
  const b = makeAuth({ receiver, db });
  cleanup(t, receiver, a.plugin, b.plugin);
  await b.auth.$context; // both loops run
  const sessions = [];
  for (let i = 0; i < 6; i += 1) sessions.push(await signUp(i % 2 ? a.auth : b.auth, newEmail()));
  for (const s of sessions) await s.browser.post("/sign-out");
  assert.equal((await a.plugin.outboxStatus()).pending, 6);
  assert.equal((await b.plugin.outboxStatus()).pending, 6, "one outbox, seen by both");

  receiver.trust(a.auth, true);
  await receiver.listen();
  await Promise.all([a.plugin.settle(10_000), b.plugin.settle(10_000)]);

  const sids = verified(receiver).map((r) => r.claims.sid).sort();
  assert.deepEqual(sids, sessions.map((s) => s.session.id).sort(), "each once: the claims are exclusive");
});

test("redelivery is a new token with the same cutoff (harmless at taskgate)", async (t) => {
  // A process that dies between taskgate's 200 and the row's removal sends the logout again.
  const receiver = await startReceiver();
  const db = emptyDatabase();
  const { auth, plugin } = makeAuth({ receiver, db });
  cleanup(t, receiver, plugin);
  const alice = await signUp(auth, newEmail());
  receiver.answer(503);
  await alice.browser.post("/sign-out");
  const row = { ...db.taskgateOutbox[0] };
  await plugin.settle(5000);
  db.taskgateOutbox.push({ ...row, leaseUntil: new Date(0), leaseOwner: null, nextAttemptAt: new Date(0) });
  await plugin.settle(5000);

  const tokens = verified(receiver).slice(1); // after the 503: the delivery, then the redelivery
  assert.equal(tokens.length, 2);
  assert.notEqual(tokens[0].claims.jti, tokens[1].claims.jti);
  assert.equal(tokens[0].claims.revoked_before, tokens[1].claims.revoked_before);
  assert.equal(tokens[0].claims.sid, tokens[1].claims.sid);
});

test("a logout is retried until every token it covers has expired, then given up (onUndelivered)", async (t) => {
  let offset = 0;
  const now = () => Date.now() + offset;
  const undelivered = [];
  const maxTokenAge = 3600;
  const receiver = await startReceiver();
  const { auth, plugin, db, logger } = makeAuth({
    receiver,
    taskgateOptions: { now, maxTokenAge, onUndelivered: (u) => undelivered.push(u), outbox: { pollInterval: 50 } },
  });
  cleanup(t, receiver, plugin);
  receiver.answer(...Array(10_000).fill(503));
  // The stub checks each token's iat and exp against the plugin's clock, as taskgate would on a
  // machine whose clock is that far ahead.
  Object.defineProperty(receiver.state.options, "currentDate", { get: () => new Date(now()), enumerable: true });
  const alice = await signUp(auth, newEmail());
  const signedOut = now();
  await alice.browser.post("/sign-out");

  // One second before the last token it covers could expire (for a one-hour maxTokenAge: far
  // past taskgate's 5-minute bound on a logout token's age), it is still retried, each time
  // with a new token.
  offset = signedOut + (maxTokenAge + GIVE_UP_MARGIN - 1) * 1000 - Date.now();
  const attempts = receiver.tokens.length;
  await sleep(300);
  assert.ok(receiver.tokens.length > attempts, "still retried");
  assert.equal(undelivered.length, 0);
  assert.equal(db.taskgateOutbox.length, 1);
  const last = receiver.tokens.at(-1).claims;
  assert.equal(last.revoked_before, Math.floor(signedOut / 1000));
  assert.ok(last.iat - last.revoked_before > maxTokenAge, "iat is the attempt's time");

  offset = signedOut + (maxTokenAge + GIVE_UP_MARGIN + 1) * 1000 - Date.now();
  await waitFor(() => undelivered.length === 1, 3000, "given up");
  assert.equal(db.taskgateOutbox.length, 0);
  assert.equal(undelivered[0].refused, false);
  assert.equal(undelivered[0].sid, alice.session.id);
  assert.equal(undelivered[0].revokedBefore, Math.floor(signedOut / 1000));
  assert.ok(undelivered[0].attempts >= 3, `${undelivered[0].attempts}`);
  assert.match(undelivered[0].reason, /HTTP 503/);
  assert.match(logger.lines.error.join("\n"), /given up: every token it covers has expired/);
  const sent = receiver.tokens.length;
  await sleep(300);
  assert.equal(receiver.tokens.length, sent, "nothing more is sent");
});

test("while taskgate is down one probe goes out per pass, not one per pending logout", async (t) => {
  const receiver = await startReceiver();
  const { auth, plugin } = makeAuth({
    receiver, taskgateOptions: { retry: { initialDelay: 100, maxDelay: 200 }, outbox: { pollInterval: 100 } },
  });
  cleanup(t, receiver, plugin);
  const users = [];
  for (let i = 0; i < 5; i += 1) users.push(await signUp(auth, newEmail()));
  receiver.answer(...Array(1000).fill(503));
  for (const u of users) await u.browser.post("/sign-out");
  const firstAttempts = receiver.tokens.length;
  // Each sign-out made its first attempt (on a loaded machine a probe of the loop, woken by the
  // first failure, may slip in between them).
  assert.deepEqual(new Set(receiver.tokens.map((r) => r.claims.sub)), new Set(users.map((u) => u.user.id)));
  assert.ok(firstAttempts >= 5 && firstAttempts <= 7, `${firstAttempts} requests for 5 sign-outs`);

  await sleep(1000);
  const probes = receiver.tokens.length - firstAttempts;
  assert.ok(probes >= 2 && probes <= 12, `${probes} requests in 1 s for 5 pending logouts`);
  receiver.state.script.length = 0; // taskgate is back: the next probe succeeds, the rest follow at once
  const back = Date.now();
  assert.equal(await plugin.settle(5000), 0);
  assert.ok(Date.now() - back < 1500, `${Date.now() - back} ms to empty the outbox`);
});

test("outbox: false keeps the 0.1 behaviour: no table, retries from memory only", async (t) => {
  const receiver = await startReceiver();
  const db = { user: [], session: [], account: [], verification: [], jwks: [] }; // no outbox table
  const { auth, plugin } = makeAuth({ receiver, db, taskgateOptions: { outbox: false } });
  cleanup(t, receiver, plugin);
  const alice = await signUp(auth, newEmail());
  receiver.answer(503);
  await alice.browser.post("/sign-out");
  assert.deepEqual(await plugin.outboxStatus().then(({ pending, inMemory }) => ({ pending, inMemory })),
    { pending: 1, inMemory: 1 });
  assert.equal(await plugin.settle(5000), 0);
  assert.equal(verified(receiver).length, 2, "the 503, then the retry");
});

test("a logout that cannot be written to the outbox is still delivered, from memory, and the failure logged", async (t) => {
  const receiver = await startReceiver();
  const { auth, plugin, logger } = makeAuth({
    receiver,
    wrapAdapter: (adapter) => ({
      ...adapter,
      create: (args) => (args.model === OUTBOX_MODEL ? Promise.reject(new Error("disk full")) : adapter.create(args)),
    }),
  });
  cleanup(t, receiver, plugin);
  const alice = await signUp(auth, newEmail());
  await alice.browser.post("/sign-out");
  await plugin.settle(5000);
  assert.deepEqual(verified(receiver).map((r) => r.claims.sid), [alice.session.id]);
  assert.match(logger.lines.error.join("\n"), /could not write .* to the outbox/);
});
