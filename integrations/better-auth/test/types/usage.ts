// Compiled by `npm run typecheck` (tsc --noEmit): the README's snippets type-check against
// better-auth's own types, and misuse of the options is a type error.
import { betterAuth } from "better-auth";
import { admin, jwt } from "better-auth/plugins";
import { taskgate, type TaskgatePlugin, type UndeliveredLogout } from "@taskgate/better-auth";

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
      retry: { maxAttempts: 8, maxElapsed: 120_000 },
      logger: console,
      onUndelivered: (logout: UndeliveredLogout) => {
        const id: string = logout.sub;
        const sid: string | undefined = logout.sid;
        void id, sid;
      },
    }),
  ],
});

export const disabledRetries = taskgate({ url: "https://taskgate.example.com", retry: false, signing: "hs256" });

export async function shutdown(): Promise<void> {
  const left: number = plugin.pending;
  void left;
  await plugin.settle();
}

// @ts-expect-error url is required
taskgate({});
// @ts-expect-error signing is one of three modes
taskgate({ url: "http://127.0.0.1", signing: "rsa" });
// @ts-expect-error timeout is in milliseconds, a number
taskgate({ url: "http://127.0.0.1", timeout: "2s" });
