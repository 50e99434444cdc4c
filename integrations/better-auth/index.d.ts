import type { BetterAuthPlugin } from "better-auth";

/** The `events` member every logout token carries (OpenID Connect Back-Channel Logout 1.0 §2.4). */
export declare const BACKCHANNEL_LOGOUT_EVENT: "http://schemas.openid.net/event/backchannel-logout";
/** The JWS `typ` header of a logout token. */
export declare const LOGOUT_TOKEN_TYPE: "logout+jwt";
/** Where taskgate receives logout tokens, below its base URL. */
export declare const RECEIVER_PATH: "/api/v1/auth/backchannel-logout";

export interface TaskgateLogger {
  info(message: string, ...args: unknown[]): void;
  warn(message: string, ...args: unknown[]): void;
  error(message: string, ...args: unknown[]): void;
}

export interface TaskgateRetryOptions {
  /** Attempts in all, the first included. Default 12. */
  maxAttempts?: number;
  /** Delay before the second attempt, in ms; doubled each time (with jitter). Default 500. */
  initialDelay?: number;
  /** Longest delay between attempts, in ms. Default 30 000. */
  maxDelay?: number;
  /**
   * No attempt starts later than this many ms after the event. Default 240 000: keep it
   * below taskgate's bound on a logout token's age (5 minutes by default), since every
   * attempt carries the event's own `iat`.
   */
  maxElapsed?: number;
  /** Per-attempt timeout of the background retries, in ms. Default 10 000. */
  timeout?: number;
}

/** What could not be delivered, handed to `onUndelivered`. */
export interface UndeliveredLogout {
  sub: string;
  sid?: string;
  jti: string;
  iat: number;
  /** The Better Auth endpoint path (e.g. "/sign-out"), or what happened outside an endpoint. */
  action: string;
  attempts: number;
  /** The last failure, e.g. "HTTP 503" or "connect ECONNREFUSED". */
  reason: string;
  /** true: taskgate answered 4xx (not retried); false: retries ran out. */
  refused: boolean;
}

export interface TaskgateOptions {
  /** taskgate's base URL; logout tokens are POSTed to `${url}/api/v1/auth/backchannel-logout`. */
  url: string;
  /** How long Better Auth's call waits for the first attempt, in ms. Default 2000. */
  timeout?: number;
  /** Background retries after a network failure, a timeout or a 5xx; `false`: none. */
  retry?: TaskgateRetryOptions | false;
  /**
   * "auto" (default): the jwt() plugin's key when the plugin is present (taskgate verifies it
   * with the JWKS it already trusts), else HS256 with the shared secret.
   */
  signing?: "auto" | "jwks" | "hs256";
  /** HS256 key; default Better Auth's own secret (BETTER_AUTH_SECRET). */
  secret?: string;
  /** `iss`; default the same as in the jwt() plugin's access tokens (Better Auth's base URL). */
  issuer?: string;
  /** `aud`; default the same as in the jwt() plugin's access tokens (Better Auth's base URL). */
  audience?: string | string[];
  /** Lifetime of each signed logout token, in seconds. Default 120. */
  tokenLifetime?: number;
  /** Where delivery problems are logged; default Better Auth's logger. */
  logger?: TaskgateLogger;
  /** Called once for each logout taskgate refused or that retries could not deliver. */
  onUndelivered?: (logout: UndeliveredLogout) => void | Promise<void>;
}

export type TaskgatePlugin = BetterAuthPlugin & {
  id: "taskgate";
  /** "jwks" or "hs256" once Better Auth has initialised the plugin. */
  readonly signingMode: "jwks" | "hs256" | undefined;
  /** Deliveries still running (first attempt or retries). */
  readonly pending: number;
  /** Resolves when every running delivery has ended (delivered, refused or given up). */
  settle(): Promise<void>;
};

export declare function taskgate(options: TaskgateOptions): TaskgatePlugin;
