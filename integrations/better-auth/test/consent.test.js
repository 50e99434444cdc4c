// Consent withdrawals: @better-auth/oauth-provider (pinned in package.json) deletes an
// `oauthConsent` row on the raw adapter, where no database hook runs; the plugin watches the
// adapter, so a withdrawal (its /oauth2/delete-consent endpoint, the adapter called directly,
// a client deleted with its consents) reaches the stub receiver as a {sub, client_id} logout
// token through the same outbox as sign-outs. The consents are made by the provider's real
// authorization flow (registration, /oauth2/authorize, /oauth2/consent) through auth.handler.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { test } from "node:test";
import { oauthProvider } from "@better-auth/oauth-provider";
import { BASE_URL, Browser, emptyDatabase, makeAuth, newEmail, shapes, signUp, startReceiver } from "./helpers.js";
import { BACKCHANNEL_LOGOUT_EVENT, CONSENT_MODEL } from "../index.js";

const RESOURCE = "http://127.0.0.1:8000";
const REDIRECT_URI = "http://127.0.0.1:9/callback";
const SCOPES = ["openid", "offline_access", "tasks:read", "tasks:write"];
const WATCHED = Symbol.for("taskgate.consentWatch");

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Every model the provider touches, for the memory adapter. */
const oauthDatabase = () => ({
  ...emptyDatabase(),
  oauthClient: [], oauthResource: [], oauthClientResource: [], oauthRefreshToken: [], oauthAccessToken: [],
  oauthConsent: [], oauthClientAssertion: [],
});

const provider = () => oauthProvider({
  loginPage: "/login",
  consentPage: "/consent",
  scopes: SCOPES,
  allowDynamicClientRegistration: true,
  resources: [RESOURCE],
  clientRegistrationDefaultResources: [RESOURCE],
  accessTokenExpiresIn: 300,
});

async function setup(t, { db = oauthDatabase(), receiver, taskgateOptions, wrapAdapter, plugins = [provider()] } = {}) {
  receiver ??= await startReceiver();
  const harness = makeAuth({ receiver, db, plugins, taskgateOptions, wrapAdapter });
  t.after(async () => {
    await harness.plugin.settle(5000);
    await harness.plugin.close();
    await receiver.close();
  });
  return { receiver, ...harness };
}

/** A developer registers a public client (RFC 7591, session-backed) and owns it. */
async function registerClient(browser, name = "app") {
  const client = await browser.post("/oauth2/register", {
    client_name: name,
    redirect_uris: [REDIRECT_URI],
    token_endpoint_auth_method: "none",
    application_type: "native",
    grant_types: ["authorization_code", "refresh_token"],
    response_types: ["code"],
  });
  assert.equal(typeof client.client_id, "string");
  return client.client_id;
}

/** The authorization code flow with PKCE and consent, as a browser on the consent page would do it. */
async function consent(browser, clientId, scope = "tasks:read") {
  const verifier = randomBytes(32).toString("base64url");
  const query = new URLSearchParams({
    response_type: "code", client_id: clientId, redirect_uri: REDIRECT_URI, scope, state: "s",
    code_challenge: createHash("sha256").update(verifier).digest("base64url"), code_challenge_method: "S256",
    resource: RESOURCE,
  });
  const toConsent = await browser.get(`/oauth2/authorize?${query}`);
  assert.match(toConsent.url, /^\/consent\?/, JSON.stringify(toConsent));
  const granted = await browser.post("/oauth2/consent", { accept: true, oauth_query: toConsent.url.split("?")[1] });
  const code = new URL(granted.url).searchParams.get("code");
  assert.ok(code, JSON.stringify(granted));
  const consents = await browser.get("/oauth2/get-consents");
  const found = consents.find((c) => c.clientId === clientId);
  return Object.assign(found, { code, verifier });
}

/** A token request, as the app sends it: form-encoded, no cookie, no Origin. */
async function tokenRequest(auth, form) {
  const response = await auth.handler(new Request(`${BASE_URL}/api/auth/oauth2/token`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded", accept: "application/json" },
    body: new URLSearchParams({ resource: RESOURCE, ...form }).toString(),
  }));
  return { status: response.status, body: await response.json() };
}

function assertGrantLogout(record, { sub, clientId, after, before }) {
  assert.equal(record.verified, true, record.verifyError);
  assert.equal(record.header.typ, "logout+jwt");
  const { claims } = record;
  assert.equal(claims.iss, BASE_URL);
  assert.equal(claims.aud, BASE_URL);
  assert.deepEqual(claims.events, { [BACKCHANNEL_LOGOUT_EVENT]: {} });
  assert.equal(claims.sub, sub);
  assert.equal(claims.client_id, clientId);
  assert.equal("sid" in claims, false, "a grant, not a session");
  assert.ok(claims.revoked_before >= Math.floor(after / 1000) && claims.revoked_before <= Math.ceil(before / 1000),
    "revoked_before is the time of the withdrawal");
  assert.ok(claims.revoked_before <= claims.iat);
}

test("withdrawing a consent (/oauth2/delete-consent) sends {sub, client_id}, no sid, before it returns", async (t) => {
  const { auth, receiver, plugin, db } = await setup(t);
  const developer = await signUp(auth, newEmail("dev"));
  const [first, second] = [await registerClient(developer.browser, "first"), await registerClient(developer.browser, "second")];
  const alice = await signUp(auth, newEmail());
  const grant = await consent(alice.browser, first);
  await consent(alice.browser, second, "tasks:read tasks:write");
  assert.equal(db.oauthConsent.length, 2);
  assert.equal(receiver.tokens.length, 0, "consenting sends nothing");

  const started = Date.now();
  await alice.browser.post("/oauth2/delete-consent", { id: grant.id });
  const returned = Date.now();

  assert.equal(receiver.tokens.length, 1, "the token arrived before the endpoint returned");
  assertGrantLogout(receiver.tokens[0], { sub: alice.user.id, clientId: first, after: started, before: returned });
  assert.deepEqual(db.oauthConsent.map((c) => c.clientId), [second], "the other client's consent stays");
  assert.equal(await plugin.settle(2000), 0);
  assert.equal(db.taskgateOutbox.length, 0, "delivered: the row is gone");
  assert.equal(receiver.tokens.length, 1);
});

test("a consent deleted through the adapter itself (delete, deleteMany) is sent too, one logout per consent", async (t) => {
  const { auth, receiver, plugin } = await setup(t);
  const developer = await signUp(auth, newEmail("dev"));
  const clients = [await registerClient(developer.browser), await registerClient(developer.browser)];
  const alice = await signUp(auth, newEmail());
  const bob = await signUp(auth, newEmail());
  const aliceFirst = await consent(alice.browser, clients[0]);
  await consent(alice.browser, clients[1]);
  await consent(bob.browser, clients[0]);
  const ctx = await auth.$context;
  assert.equal(ctx.adapter[WATCHED], true);

  await ctx.adapter.delete({ model: CONSENT_MODEL, where: [{ field: "id", value: aliceFirst.id }] });
  assert.deepEqual(shapes(receiver.tokens), [{ sub: alice.user.id, client_id: clients[0] }]);

  await ctx.adapter.deleteMany({ model: CONSENT_MODEL, where: [{ field: "userId", value: alice.user.id }] });
  assert.deepEqual(shapes(receiver.tokens.slice(1)), [{ sub: alice.user.id, client_id: clients[1] }]);

  // A deletion that matches nothing sends nothing; other models are left alone.
  await ctx.adapter.delete({ model: CONSENT_MODEL, where: [{ field: "id", value: "no-such-consent" }] });
  await ctx.adapter.deleteMany({ model: "verification", where: [{ field: "identifier", value: "nothing" }] });
  assert.equal(await plugin.settle(2000), 0);
  assert.equal(receiver.tokens.length, 2);
  assert.equal((await ctx.adapter.findMany({ model: CONSENT_MODEL })).length, 1, "bob's consent lives on");
});

test("deleting a client sends a {sub, client_id} logout for every user who had consented to it", async (t) => {
  const { auth, receiver, plugin, db } = await setup(t);
  const developer = await signUp(auth, newEmail("dev"));
  const [doomed, kept] = [await registerClient(developer.browser), await registerClient(developer.browser)];
  const users = [await signUp(auth, newEmail()), await signUp(auth, newEmail())];
  for (const user of users) await consent(user.browser, doomed);
  await consent(users[0].browser, kept);

  await developer.browser.post("/oauth2/delete-client", { client_id: doomed });

  const expected = users.map((user) => ({ sub: user.user.id, client_id: doomed }));
  const bySub = (a, b) => a.sub.localeCompare(b.sub);
  assert.deepEqual(shapes(receiver.tokens).sort(bySub), expected.sort(bySub));
  assert.ok(receiver.tokens.every((r) => r.verified && r.claims.revoked_before <= r.claims.iat));
  assert.equal(await plugin.settle(2000), 0);
  assert.equal(receiver.tokens.length, 2);
  assert.ok(db.oauthClient.some((c) => c.clientId === kept));
});

test("taskgate down: the withdrawal waits in the outbox and is delivered later with its original cutoff", async (t) => {
  const receiver = await startReceiver();
  await receiver.close(); // refuses connections until it listens again, on the same port
  const { auth, plugin, db, logger } = await setup(t, { receiver });
  const developer = await signUp(auth, newEmail("dev"));
  const client = await registerClient(developer.browser);
  const alice = await signUp(auth, newEmail());
  const grant = await consent(alice.browser, client);

  const withdrawn = Date.now();
  await alice.browser.post("/oauth2/delete-consent", { id: grant.id });
  assert.equal(db.taskgateOutbox.length, 1);
  const [row] = db.taskgateOutbox;
  assert.equal(row.sub, alice.user.id);
  assert.equal(row.clientId, client);
  assert.equal(row.consentId, grant.id);
  assert.ok(row.sid == null, "no session: a grant");
  assert.equal(row.action, "consent withdrawn");
  assert.equal((await plugin.outboxStatus()).pending, 1);
  assert.match(logger.lines.warn.join("\n"), /consent withdrawn: sub=\S+ client_id=\S+ outbox=/);

  await sleep(1100); // the delivery is seconds later; the cutoff stays at the withdrawal
  await receiver.listen();
  assert.equal(await plugin.settle(5000), 0);
  assert.equal(receiver.tokens.length, 1);
  assertGrantLogout(receiver.tokens[0], { sub: alice.user.id, clientId: client, after: withdrawn, before: withdrawn + 1000 });
  assert.ok(receiver.tokens[0].claims.iat > receiver.tokens[0].claims.revoked_before, "a fresh token, the old cutoff");
});

test("a consent deletion that fails: the row written before it is found live and dropped, nothing sent", async (t) => {
  const failing = (adapter) => ({
    ...adapter,
    delete: async (args) => {
      if (args.model === CONSENT_MODEL) throw new Error("database unavailable");
      return adapter.delete(args);
    },
  });
  const { auth, receiver, plugin, db, logger } = await setup(t, {
    wrapAdapter: failing,
    taskgateOptions: { timeout: 300, retry: { initialDelay: 20, maxDelay: 100, timeout: 300 }, outbox: { lease: 1500, pollInterval: 100 } },
  });
  const developer = await signUp(auth, newEmail("dev"));
  const client = await registerClient(developer.browser);
  const alice = await signUp(auth, newEmail());
  const grant = await consent(alice.browser, client);

  await assert.rejects(alice.browser.post("/oauth2/delete-consent", { id: grant.id }), /HTTP 500/);
  assert.equal(db.taskgateOutbox.length, 1, "written before the deletion was tried");
  assert.equal(db.taskgateOutbox[0].confirmed, false);
  assert.equal(await plugin.settle(5000), 0);

  assert.equal(receiver.tokens.length, 0, "a consent that still stands is not withdrawn at taskgate");
  assert.match(logger.lines.warn.join("\n"), /dropped: the deletion it was written for did not happen/);
  assert.equal(db.oauthConsent.length, 1);
});

/** The app holds a refresh token (offline_access); the user withdraws its consent; the app refreshes. */
async function refreshAfterWithdrawal(t, revokeOAuthGrant) {
  const { auth, receiver, db } = await setup(t, { taskgateOptions: { revokeOAuthGrant } });
  const developer = await signUp(auth, newEmail("dev"));
  const client = await registerClient(developer.browser);
  const alice = await signUp(auth, newEmail());
  const grant = await consent(alice.browser, client, "offline_access tasks:read");
  const issued = await tokenRequest(auth, {
    grant_type: "authorization_code", code: grant.code, code_verifier: grant.verifier, redirect_uri: REDIRECT_URI,
    client_id: client,
  });
  assert.equal(issued.status, 200, JSON.stringify(issued.body));
  assert.equal(typeof issued.body.refresh_token, "string");
  assert.equal(db.oauthRefreshToken.length, 1);

  await alice.browser.post("/oauth2/delete-consent", { id: grant.id });
  assert.deepEqual(shapes(receiver.tokens), [{ sub: alice.user.id, client_id: client }]);
  await sleep(1000); // a token refreshed now would be newer than the withdrawal's cutoff
  const refreshed = await tokenRequest(auth, {
    grant_type: "refresh_token", refresh_token: issued.body.refresh_token, client_id: client,
  });

  if (revokeOAuthGrant) {
    assert.equal(db.oauthRefreshToken.length, 0, "the grant's refresh tokens are gone");
    assert.equal(refreshed.status, 400, JSON.stringify(refreshed.body));
    assert.equal(refreshed.body.error, "invalid_grant");
  } else {
    // What @better-auth/oauth-provider 1.7.29 does by itself: the consent is gone, yet the
    // refresh token still mints access tokens, issued after the withdrawal.
    assert.equal(refreshed.status, 200, JSON.stringify(refreshed.body));
    const [, payload] = refreshed.body.access_token.split(".");
    const { iat } = JSON.parse(Buffer.from(payload, "base64url"));
    assert.ok(iat > receiver.tokens[0].claims.revoked_before, "past the cutoff taskgate applies");
  }
}

test("a withdrawn consent ends the grant in Better Auth too: the app's refresh token is refused", async (t) => {
  await refreshAfterWithdrawal(t, true);
});

test("revokeOAuthGrant: false leaves the provider as it is: its refresh token still mints access tokens", async (t) => {
  await refreshAfterWithdrawal(t, false);
});

test("without the OAuth provider the adapter is left as it is", async (t) => {
  const { auth } = await setup(t, { db: emptyDatabase(), plugins: [] });
  const ctx = await auth.$context;
  assert.equal(ctx.adapter[WATCHED], undefined);
  const alice = await signUp(auth, newEmail());
  assert.ok((await new Browser(auth).get("/ok")).ok);
  assert.ok(alice.user.id);
});
