// Compiled by `npm run typecheck` (tsc --noEmit): the README's snippets type-check against
// better-auth's own types, and misuse of the options is a type error.
import { betterAuth } from "better-auth";
import { admin, jwt } from "better-auth/plugins";
import { oauthProvider } from "@better-auth/oauth-provider";
import { CONSENT_MODEL, taskgate, type TaskgateOutboxStatus, type TaskgatePlugin, type UndeliveredLogout } from "@taskgate/better-auth";

const plugin: TaskgatePlugin = taskgate({ url: "http://127.0.0.1:8000" });

export const auth = betterAuth({
  emailAndPassword: { enabled: true },
  plugins: [admin(), jwt(), plugin],
});

export const sharedSecret = betterAuth({
  secret: "x".repeat(32),
  plugins: [
    taskgate({
      url: "http://taskgate.internal:8000",
      timeout: 1500,
      retry: { initialDelay: 1000, maxDelay: 60_000 },
      outbox: { pollInterval: 10_000, lease: 120_000 },
      maxTokenAge: 3600,
      logger: console,
      onUndelivered: (logout: UndeliveredLogout) => {
        const id: string = logout.sub;
        const sid: string | undefined = logout.sid;
        const cutoff: number = logout.revokedBefore;
        const client: string | undefined = logout.client_id; // a withdrawn OAuth consent
        void id, sid, cutoff, client;
      },
    }),
  ],
});

// The README's OAuth set-up: the provider's consents are watched by the same plugin.
export const withOAuthProvider = betterAuth({
  emailAndPassword: { enabled: true },
  plugins: [
    jwt(),
    oauthProvider({
      loginPage: "/sign-in",
      consentPage: "/consent",
      scopes: ["openid", "offline_access", "tasks:read", "tasks:write"],
      allowDynamicClientRegistration: true,
      allowUnauthenticatedClientRegistration: true,
      resources: [{ identifier: "https://api.example.com", accessTokenTtl: 300 }],
      clientRegistrationDefaultResources: ["https://api.example.com"],
      accessTokenExpiresIn: 300,
    }),
    taskgate({ url: "http://taskgate.internal:8000", revokeOAuthGrant: true }),
  ],
});
export const consentModel: "oauthConsent" = CONSENT_MODEL;

export const disabledRetries = taskgate({ url: "https://taskgate.example.com", retry: false, signing: "hs256" });

export const volatileOutbox = taskgate({ url: "https://taskgate.example.com", outbox: false });

export async function shutdown(): Promise<void> {
  const left: number = plugin.pending;
  const status: TaskgateOutboxStatus = await plugin.outboxStatus();
  const oldest: number | null = status.oldestAgeSeconds;
  void left, oldest;
  const stillPending: number = await plugin.settle(5000);
  void stillPending;
  await plugin.close();
}

// @ts-expect-error url is required
taskgate({});
// @ts-expect-error signing is one of three modes
taskgate({ url: "http://127.0.0.1", signing: "rsa" });
// @ts-expect-error timeout is in milliseconds, a number
taskgate({ url: "http://127.0.0.1", timeout: "2s" });
// @ts-expect-error the clock returns ms
taskgate({ url: "http://127.0.0.1", now: () => new Date() });
