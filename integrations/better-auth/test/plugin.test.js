// The plugin against the real better-auth package (pinned in package.json) and a stub
// receiver that verifies each logout token as taskgate does. Each test checks what reached
// the receiver by the time the Better Auth call returned (the awaited first attempt), and
// what arrived after plugin.settle() (the background retries).

import assert from "node:assert/strict";
import { test } from "node:test";
import { BASE_URL, Browser, byShape, makeAdmin, makeAuth, newEmail, PASSWORD, SECRET, shapes, signIn, signUp,
  startReceiver } from "./helpers.js";
import { BACKCHANNEL_LOGOUT_EVENT, taskgate } from "../index.js";

async function setup(t, options = {}) {
  const receiver = await startReceiver();
  const harness = makeAuth({ receiver, ...options });
  t.after(async () => {
    await harness.plugin.settle();
    await harness.plugin.close();
    await receiver.close();
  });
  return { receiver, ...harness };
}

const sorted = (list) => [...list].sort(byShape);

function assertLogoutToken(record, { alg = "EdDSA" } = {}) {
  assert.equal(record.method, "POST");
  assert.equal(record.path, "/api/v1/auth/backchannel-logout");
  assert.equal(record.contentType, "application/x-www-form-urlencoded");
  assert.equal(record.verified, true, record.verifyError);
  assert.equal(record.header.typ, "logout+jwt");
  assert.equal(record.header.alg, alg);
  const { claims } = record;
  assert.equal(claims.iss, BASE_URL);
  assert.equal(claims.aud, BASE_URL);
  assert.deepEqual(claims.events, { [BACKCHANNEL_LOGOUT_EVENT]: {} });
  assert.equal(typeof claims.jti, "string");
  assert.ok(claims.jti.length >= 16);
  assert.equal(typeof claims.iat, "number");
  assert.ok(claims.iat <= record.receivedAt && record.receivedAt - claims.iat < 60, "iat is when it was sent");
  // Each attempt is signed afresh: its exp is two minutes after it was sent.
  assert.ok(claims.exp > record.receivedAt && claims.exp <= record.receivedAt + 120, "exp is short");
  // The time of the sign-out: the cutoff taskgate applies, whenever the token is sent.
  assert.equal(Number.isInteger(claims.revoked_before), true);
  assert.ok(claims.revoked_before <= claims.iat, "revoked_before is no later than iat");
  assert.equal("nonce" in claims, false);
  assert.equal(typeof claims.sub, "string");
}

test("sign-out sends {sub, sid} of that session, signed with the jwt() plugin's key, before it returns", async (t) => {
  const { auth, receiver, plugin } = await setup(t);
  const alice = await signUp(auth, newEmail());
  const other = await signIn(auth, alice.user.email);
  assert.equal(plugin.signingMode, "jwks");
  assert.equal(receiver.tokens.length, 0, "signing up and in sends nothing");

  await alice.browser.post("/sign-out");

  assert.equal(receiver.tokens.length, 1, "the token arrived before sign-out returned");
  assertLogoutToken(receiver.tokens[0]);
  assert.deepEqual(shapes(receiver.tokens), [{ sub: alice.user.id, sid: alice.session.id }]);
  const jwks = await auth.api.getJwks();
  assert.ok(jwks.keys.some((k) => k.kid === receiver.tokens[0].header.kid), "kid is in Better Auth's JWKS");
  assert.ok((await other.browser.session()).id, "the user's other session lives on");
});

test("HS256 with Better Auth's secret when there is no jwt() plugin", async (t) => {
  const { auth, receiver, plugin } = await setup(t, { jwtPlugin: false });
  const alice = await signUp(auth, newEmail());

  await alice.browser.post("/sign-out");

  assert.equal(plugin.signingMode, "hs256");
  assert.equal(receiver.tokens.length, 1);
  assertLogoutToken(receiver.tokens[0], { alg: "HS256" });
  assert.equal(receiver.tokens[0].header.kid, undefined);
  assert.deepEqual(shapes(receiver.tokens), [{ sub: alice.user.id, sid: alice.session.id }]);
});

test("a receiver that trusts another secret refuses the HS256 token (the signature is checked)", async (t) => {
  const { auth, receiver } = await setup(t, { jwtPlugin: false, taskgateOptions: { secret: `${SECRET}-other` } });
  const alice = await signUp(auth, newEmail());
  await alice.browser.post("/sign-out");
  assert.equal(receiver.tokens.length, 1);
  assert.equal(receiver.tokens[0].verified, false);
  assert.match(receiver.tokens[0].verifyError, /signature/);
});

test("revokeSession sends that session's {sub, sid}; the caller's session stays", async (t) => {
  const { auth, receiver } = await setup(t);
  const alice = await signUp(auth, newEmail());
  const laptop = await signIn(auth, alice.user.email);

  await alice.browser.post("/revoke-session", { token: laptop.session.token });

  assert.deepEqual(shapes(receiver.tokens), [{ sub: alice.user.id, sid: laptop.session.id }]);
  assertLogoutToken(receiver.tokens[0]);
  assert.equal((await alice.browser.session()).id, alice.session.id);
});

test("revokeSessions sends {sub, sid} for every session of the user", async (t) => {
  const { auth, receiver } = await setup(t);
  const alice = await signUp(auth, newEmail());
  const laptop = await signIn(auth, alice.user.email);
  const bob = await signUp(auth, newEmail());

  await alice.browser.post("/revoke-sessions");

  assert.deepEqual(sorted(shapes(receiver.tokens)), sorted([
    { sub: alice.user.id, sid: alice.session.id },
    { sub: alice.user.id, sid: laptop.session.id },
  ]));
  receiver.tokens.forEach((r) => assertLogoutToken(r));
  assert.equal(new Set(receiver.tokens.map((r) => r.claims.jti)).size, 2, "a jti each");
  assert.ok((await bob.browser.session()).id, "another user is untouched");
});

test("revokeOtherSessions sends the other sessions only", async (t) => {
  const { auth, receiver } = await setup(t);
  const alice = await signUp(auth, newEmail());
  const laptop = await signIn(auth, alice.user.email);
  const phone = await signIn(auth, alice.user.email);

  await alice.browser.post("/revoke-other-sessions");

  assert.deepEqual(sorted(shapes(receiver.tokens)), sorted([
    { sub: alice.user.id, sid: laptop.session.id },
    { sub: alice.user.id, sid: phone.session.id },
  ]));
});

test("a password change that revokes other sessions sends them; one that does not sends nothing", async (t) => {
  const { auth, receiver } = await setup(t);
  const alice = await signUp(auth, newEmail());
  const laptop = await signIn(auth, alice.user.email);

  await alice.browser.post("/change-password", { currentPassword: PASSWORD, newPassword: `${PASSWORD}-2` });
  assert.equal(receiver.tokens.length, 0);

  await alice.browser.post("/change-password", {
    currentPassword: `${PASSWORD}-2`, newPassword: `${PASSWORD}-3`, revokeOtherSessions: true,
  });

  // Better Auth deletes every session of the user, then opens a new one for the caller.
  assert.deepEqual(sorted(shapes(receiver.tokens)), sorted([
    { sub: alice.user.id, sid: alice.session.id },
    { sub: alice.user.id, sid: laptop.session.id },
  ]));
  const fresh = await alice.browser.session();
  assert.ok(fresh.id && fresh.id !== alice.session.id, "the caller goes on in a new session");
  assert.ok(!receiver.tokens.some((r) => r.claims.sid === fresh.id));
});

test("deleteUser sends {sub, sid} for each session and {sub}", async (t) => {
  const { auth, receiver } = await setup(t);
  const alice = await signUp(auth, newEmail());
  const laptop = await signIn(auth, alice.user.email);

  await alice.browser.post("/delete-user", { password: PASSWORD });

  assert.deepEqual(sorted(shapes(receiver.tokens)), sorted([
    { sub: alice.user.id, sid: alice.session.id },
    { sub: alice.user.id, sid: laptop.session.id },
    { sub: alice.user.id },
  ]));
  receiver.tokens.forEach((r) => assertLogoutToken(r));
  assert.equal(receiver.tokens.at(-1).claims.sid, undefined, "{sub} comes last, after the sessions are gone");
});

test("admin revokeUserSession sends that session only", async (t) => {
  const { auth, receiver } = await setup(t);
  const ops = await makeAdmin(auth, newEmail("admin"));
  const alice = await signUp(auth, newEmail());
  const laptop = await signIn(auth, alice.user.email);

  await ops.browser.post("/admin/revoke-user-session", { sessionToken: alice.session.token });

  assert.deepEqual(shapes(receiver.tokens), [{ sub: alice.user.id, sid: alice.session.id }]);
  assertLogoutToken(receiver.tokens[0]);
  assert.ok((await laptop.browser.session()).id, "session B lives on");
});

test("admin revokeUserSessions sends every session of the user", async (t) => {
  const { auth, receiver } = await setup(t);
  const ops = await makeAdmin(auth, newEmail("admin"));
  const alice = await signUp(auth, newEmail());
  const laptop = await signIn(auth, alice.user.email);

  await ops.browser.post("/admin/revoke-user-sessions", { userId: alice.user.id });

  assert.deepEqual(sorted(shapes(receiver.tokens)), sorted([
    { sub: alice.user.id, sid: alice.session.id },
    { sub: alice.user.id, sid: laptop.session.id },
  ]));
});

test("admin banUser sends {sub} (and each session); unban and later updates of a banned user send nothing", async (t) => {
  const { auth, receiver } = await setup(t);
  const ops = await makeAdmin(auth, newEmail("admin"));
  const alice = await signUp(auth, newEmail());

  await ops.browser.post("/admin/ban-user", { userId: alice.user.id, banReason: "spam" });

  assert.deepEqual(sorted(shapes(receiver.tokens)), sorted([
    { sub: alice.user.id },
    { sub: alice.user.id, sid: alice.session.id },
  ]));
  receiver.tokens.forEach((r) => assertLogoutToken(r));

  await ops.browser.post("/admin/set-role", { userId: alice.user.id, role: "user" }); // still banned
  await ops.browser.post("/admin/unban-user", { userId: alice.user.id });
  assert.equal(receiver.tokens.length, 2);
});

test("admin update-user with banned: true is a ban too", async (t) => {
  const { auth, receiver } = await setup(t);
  const ops = await makeAdmin(auth, newEmail("admin"));
  const alice = await signUp(auth, newEmail());

  await ops.browser.post("/admin/update-user", { userId: alice.user.id, data: { banned: true } });

  assert.deepEqual(sorted(shapes(receiver.tokens)), sorted([
    { sub: alice.user.id },
    { sub: alice.user.id, sid: alice.session.id },
  ]));
});

test("admin removeUser sends {sub} and each session", async (t) => {
  const { auth, receiver } = await setup(t);
  const ops = await makeAdmin(auth, newEmail("admin"));
  const alice = await signUp(auth, newEmail());
  const laptop = await signIn(auth, alice.user.email);

  await ops.browser.post("/admin/remove-user", { userId: alice.user.id });

  assert.deepEqual(sorted(shapes(receiver.tokens)), sorted([
    { sub: alice.user.id },
    { sub: alice.user.id, sid: alice.session.id },
    { sub: alice.user.id, sid: laptop.session.id },
  ]));
});

test("a session deleted by server code outside any endpoint is sent too", async (t) => {
  const { auth, receiver } = await setup(t);
  const alice = await signUp(auth, newEmail());
  const ctx = await auth.$context;

  await ctx.internalAdapter.deleteSession(alice.session.token);

  assert.deepEqual(shapes(receiver.tokens), [{ sub: alice.user.id, sid: alice.session.id }]);
  assertLogoutToken(receiver.tokens[0]);
});

test("the server-side API (auth.api.signOut) goes through the same hooks", async (t) => {
  const { auth, receiver } = await setup(t);
  const alice = await signUp(auth, newEmail());
  const cookie = [...alice.browser.cookies].map(([k, v]) => `${k}=${v}`).join("; ");

  await auth.api.signOut({ headers: new Headers({ cookie, origin: BASE_URL }) });

  assert.deepEqual(shapes(receiver.tokens), [{ sub: alice.user.id, sid: alice.session.id }]);
});

test("503 twice: the call returns after the first attempt, the outbox retries with the sign-out's cutoff", async (t) => {
  const { auth, receiver, plugin, logger, db } = await setup(t);
  const alice = await signUp(auth, newEmail());
  receiver.answer(503, 503);

  await alice.browser.post("/sign-out");
  assert.equal(receiver.tokens.length, 1, "one attempt awaited");
  const status = await plugin.outboxStatus();
  assert.equal(status.pending, 1, "kept in the outbox, retried in the background");
  assert.equal(db.taskgateOutbox.length, 1);
  assert.equal(db.taskgateOutbox[0].sid, alice.session.id);

  await plugin.settle();
  assert.equal(receiver.tokens.length, 3);
  receiver.tokens.forEach((r) => assertLogoutToken(r));
  assert.equal(new Set(receiver.tokens.map((r) => r.claims.jti)).size, 3, "each attempt is a new logout token");
  assert.equal(new Set(receiver.tokens.map((r) => r.claims.revoked_before)).size, 1, "one cutoff: the sign-out's");
  assert.equal(db.taskgateOutbox.length, 0, "delivered: gone from the outbox");
  assert.match(logger.lines.warn.join("\n"), /attempt 1 failed: HTTP 503/);
  assert.match(logger.lines.info.join("\n"), /delivered on attempt 3/);
  assert.equal(logger.lines.error.length, 0);
});

test("taskgate down: sign-out is not held up, and the logout arrives once taskgate is back", async (t) => {
  const receiver = await startReceiver();
  await receiver.close(); // its port is now refusing connections
  const undelivered = [];
  const { auth, plugin, logger } = makeAuth({
    receiver,
    taskgateOptions: {
      retry: { initialDelay: 100, maxDelay: 200, maxAttempts: 40 },
      onUndelivered: (u) => undelivered.push(u),
    },
  });
  t.after(async () => {
    await plugin.settle();
    await plugin.close();
    await receiver.close();
  });
  const alice = await signUp(auth, newEmail());

  const started = performance.now();
  await alice.browser.post("/sign-out");
  const took = performance.now() - started;
  assert.ok(took < 1000, `sign-out took ${took} ms with taskgate down`);
  assert.match(logger.lines.warn.join("\n"), /attempt 1 failed: .*ECONNREFUSED/);

  await new Promise((resolve) => setTimeout(resolve, 300));
  receiver.trust(auth, true);
  await receiver.listen(); // the same port
  await plugin.settle();

  assert.deepEqual(shapes(receiver.tokens), [{ sub: alice.user.id, sid: alice.session.id }]);
  assertLogoutToken(receiver.tokens[0]);
  assert.deepEqual(undelivered, []);
});

test("a 400 is final: logged with taskgate's error_description, not retried", async (t) => {
  const undelivered = [];
  const { auth, receiver, plugin, logger } = await setup(t, {
    taskgateOptions: { onUndelivered: (u) => undelivered.push(u) },
  });
  const alice = await signUp(auth, newEmail());
  receiver.answer(400);

  await alice.browser.post("/sign-out");
  await plugin.settle();

  assert.equal(receiver.tokens.length, 1);
  assert.match(logger.lines.error.join("\n"), /refused .*HTTP 400 invalid_request: scripted 400; not retried/);
  assert.equal(undelivered.length, 1);
  const { jti, iat, revokedBefore, ...rest } = undelivered[0];
  assert.equal(jti, receiver.tokens[0].claims.jti);
  assert.equal(revokedBefore, receiver.tokens[0].claims.revoked_before);
  assert.equal(iat, revokedBefore, "iat: kept for 0.1 callers, the sign-out's time");
  assert.deepEqual(rest, {
    sub: alice.user.id, sid: alice.session.id, action: "/sign-out",
    attempts: 1, reason: "HTTP 400 invalid_request: scripted 400", refused: true,
  });
  assert.equal((await plugin.outboxStatus()).pending, 0, "a refused logout leaves the outbox");
});

test("0.1's retry.maxAttempts and retry.maxElapsed are ignored, with a warning", async (t) => {
  const { auth, receiver, plugin, logger } = await setup(t, {
    taskgateOptions: { retry: { initialDelay: 10, maxDelay: 20, maxAttempts: 1, maxElapsed: 1 } },
  });
  await auth.$context;
  assert.match(logger.lines.warn.join("\n"), /retry\.maxAttempts is no longer used/);
  assert.match(logger.lines.warn.join("\n"), /retry\.maxElapsed is no longer used/);
  const alice = await signUp(auth, newEmail());
  receiver.answer(503, 503, 503);

  await alice.browser.post("/sign-out");
  await plugin.settle();

  assert.equal(receiver.tokens.length, 4, "retried past maxAttempts: 1 until delivered");
});

test("a hanging taskgate holds a call for the timeout once, however many sessions it ends", async (t) => {
  const { auth, receiver, plugin } = await setup(t, { taskgateOptions: { timeout: 400 } });
  const alice = await signUp(auth, newEmail());
  for (let i = 0; i < 3; i += 1) await signIn(auth, alice.user.email);
  receiver.answer("hang", "hang", "hang", "hang");

  const started = performance.now();
  await alice.browser.post("/revoke-sessions");
  const took = performance.now() - started;

  // One timeout (400 ms), where waiting per session would be four (1600 ms).
  assert.ok(took >= 390 && took < 1200, `revoke-sessions took ${took} ms`);
  await plugin.settle();
  const delivered = receiver.tokens.filter((r) => r.verified);
  assert.equal(new Set(delivered.map((r) => r.claims.sid)).size, 4, "each session's logout got through on retry");
});

test("a hanging first attempt holds the call for the timeout only; the retry gets through", async (t) => {
  const { auth, receiver, plugin, logger } = await setup(t, { taskgateOptions: { timeout: 200 } });
  const alice = await signUp(auth, newEmail());
  receiver.answer("hang");

  const started = performance.now();
  await alice.browser.post("/sign-out");
  assert.ok(performance.now() - started < 1500, "held for the 200 ms timeout, not until taskgate answers");
  await plugin.settle();

  assert.equal(receiver.tokens.length, 2);
  assert.match(logger.lines.warn.join("\n"), /no answer within 200 ms/);
  assert.notEqual(receiver.tokens[0].claims.jti, receiver.tokens[1].claims.jti, "a new token for the retry");
  assert.equal(receiver.tokens[0].claims.revoked_before, receiver.tokens[1].claims.revoked_before);
});

test("retry: false makes the awaited attempt the only one", async (t) => {
  const { auth, receiver, plugin, logger } = await setup(t, { taskgateOptions: { retry: false } });
  const alice = await signUp(auth, newEmail());
  receiver.answer(503);

  await alice.browser.post("/sign-out");
  await plugin.settle();

  assert.equal(receiver.tokens.length, 1);
  assert.match(logger.lines.error.join("\n"), /after 1 attempt/);
});

test("a taskgate without the receiver (404) is a refusal, logged once", async (t) => {
  const { auth, receiver, plugin, logger } = await setup(t);
  const alice = await signUp(auth, newEmail());
  receiver.answer(404);

  await alice.browser.post("/sign-out");
  await plugin.settle();

  assert.equal(receiver.tokens.length, 1);
  assert.match(logger.lines.error.join("\n"), /HTTP 404/);
});

test("issuer and audience follow the jwt() plugin, or the options", async (t) => {
  const receiver = await startReceiver();
  const { auth, plugin } = makeAuth({
    receiver, taskgateOptions: { audience: ["taskgate", BASE_URL], issuer: BASE_URL },
  });
  t.after(async () => {
    await plugin.settle();
    await plugin.close();
    await receiver.close();
  });
  const alice = await signUp(auth, newEmail());
  await alice.browser.post("/sign-out");
  assert.deepEqual(receiver.tokens[0].claims.aud, ["taskgate", BASE_URL]);
  assert.equal(receiver.tokens[0].verified, true, receiver.tokens[0].verifyError);
});

test("options are checked when the plugin is made", () => {
  assert.throws(() => taskgate({}), /needs taskgate's base URL/);
  assert.throws(() => taskgate({ url: "not a url" }), /not a URL/);
  assert.throws(() => taskgate({ url: "ftp://127.0.0.1" }), /http\(s\)/);
  assert.throws(() => taskgate({ url: "http://127.0.0.1?x=1" }), /no query/);
  assert.throws(() => taskgate({ url: "http://127.0.0.1", timeout: 0 }), /timeout/);
  assert.throws(() => taskgate({ url: "http://127.0.0.1", retry: { maxDelay: -1 } }), /retry.maxDelay/);
  assert.throws(() => taskgate({ url: "http://127.0.0.1", maxTokenAge: 0 }), /maxTokenAge/);
  assert.throws(() => taskgate({ url: "http://127.0.0.1", outbox: { pollInterval: 0 } }), /outbox.pollInterval/);
  assert.throws(() => taskgate({ url: "http://127.0.0.1", outbox: { lease: 5000 } }), /outbox.lease/);
  assert.throws(() => taskgate({ url: "http://127.0.0.1", now: 5 }), /now/);
  assert.throws(() => taskgate({ url: "http://127.0.0.1", signing: "rsa" }), /signing/);
  assert.doesNotThrow(() => taskgate({ url: "http://10.0.0.7:8000/" }), "private addresses are fine");
  assert.doesNotThrow(() => taskgate({ url: "http://127.0.0.1", timeout: undefined, retry: { maxDelay: undefined } }),
    "an option given as undefined takes its default");
});

test("signing: \"jwks\" without the jwt() plugin fails at start, not at the first sign-out", async () => {
  const { auth } = makeAuth({ receiver: await startReceiverClosed(), jwtPlugin: false,
    taskgateOptions: { signing: "jwks" } });
  await assert.rejects(auth.$context, /needs Better Auth's jwt\(\) plugin/);
});

test("the url is a base: a path prefix is kept, a trailing slash dropped", async (t) => {
  const receiver = await startReceiver();
  const { auth, plugin } = makeAuth({ receiver, url: `${receiver.url}/taskgate/` });
  t.after(async () => {
    await plugin.settle();
    await plugin.close();
    await receiver.close();
  });
  const alice = await signUp(auth, newEmail());
  await alice.browser.post("/sign-out");
  assert.equal(receiver.tokens[0].path, "/taskgate/api/v1/auth/backchannel-logout");
});

test("a sign-out without a session (no cookie) sends nothing", async (t) => {
  const { auth, receiver } = await setup(t);
  await new Browser(auth).post("/sign-out");
  assert.equal(receiver.received.length, 0);
});

async function startReceiverClosed() {
  const receiver = await startReceiver();
  await receiver.close();
  return receiver;
}
