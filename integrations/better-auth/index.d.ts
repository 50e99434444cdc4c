import type { BetterAuthPlugin } from "better-auth";

/** The `events` member every logout token carries (OpenID Connect Back-Channel Logout 1.0 §2.4). */
export declare const BACKCHANNEL_LOGOUT_EVENT: "http://schemas.openid.net/event/backchannel-logout";
/** The JWS `typ` header of a logout token. */
export declare const LOGOUT_TOKEN_TYPE: "logout+jwt";
/** Where taskgate receives logout tokens, below its base URL. */
export declare const RECEIVER_PATH: "/api/v1/auth/backchannel-logout";
/** The outbox's model (table) in Better Auth's database. */
export declare const OUTBOX_MODEL: "taskgateOutbox";
/**
 * @better-auth/oauth-provider's consent model. Deleting a row of it (a withdrawn consent, or a
 * deleted client) sends a `{sub, client_id}` logout: the user's grant to that client ended.
 */
export declare const CONSENT_MODEL: "oauthConsent";
/** Seconds added to `maxTokenAge` before a pending logout is given up (taskgate's leeway, clock skew). */
export declare const GIVE_UP_MARGIN: 600;

export interface TaskgateLogger {
  info(message: string, ...args: unknown[]): void;
  warn(message: string, ...args: unknown[]): void;
  error(message: string, ...args: unknown[]): void;
}

export interface TaskgateRetryOptions {
  /** Delay before the second attempt, in ms; doubled each time (with jitter). Default 500. */
  initialDelay?: number;
  /**
   * Longest delay between attempts of one logout, in ms. Default 30 000. Also the longest
   * time, after taskgate is back, before the outbox notices (then it sends everything at once).
   */
  maxDelay?: number;
  /** Per-attempt timeout of the background retries, in ms. Default 10 000. */
  timeout?: number;
  /**
   * @deprecated 0.1 only: ignored (with a warning). A logout is retried until every token it
   * covers has expired (`maxTokenAge`).
   */
  maxAttempts?: number;
  /** @deprecated 0.1 only: ignored (with a warning); see `maxAttempts`. */
  maxElapsed?: number;
}

export interface TaskgateOutboxOptions {
  /** How often each instance looks for pending logouts left by others (or by an earlier run), in ms. Default 5000. */
  pollInterval?: number;
  /**
   * How long a claimed logout is reserved for the instance that claimed it, in ms. Default
   * 60 000. Must exceed the longest attempt (`timeout`, `retry.timeout`) by more than 1 s. A
   * crashed instance's claims are taken over by the others when it ends.
   */
  lease?: number;
  /** Rows read per pass. Default 50. */
  batchSize?: number;
}

/** What could not be delivered, handed to `onUndelivered`. */
export interface UndeliveredLogout {
  sub: string;
  sid?: string;
  /** A withdrawn OAuth consent (or a deleted client): the client whose tokens of `sub` it ends. */
  client_id?: string;
  /** The jti of the last logout token sent for it (each attempt is a new token), if any was signed. */
  jti: string | undefined;
  /** When the sign-out happened (NumericDate): the `revoked_before` of its logout tokens. */
  revokedBefore: number;
  /** @deprecated the same as `revokedBefore` (0.1 sent the event's time as `iat`). */
  iat: number;
  /**
   * The Better Auth endpoint path (e.g. "/sign-out"), or what happened outside an endpoint
   * ("consent withdrawn", "client deleted", ...).
   */
  action: string;
  attempts: number;
  /** The last failure, e.g. "HTTP 503" or "connect ECONNREFUSED". */
  reason: string;
  /**
   * true: taskgate answered 4xx (not retried). false: given up because every token it covers
   * has expired (or, without the outbox, because retries are off or the process stopped).
   */
  refused: boolean;
}

/** `outboxStatus()`: what is waiting to be delivered. */
export interface TaskgateOutboxStatus {
  /** false with the memory adapter or `outbox: false`: pending logouts do not survive a restart. */
  durable: boolean;
  /** Better Auth's adapter id ("kysely", "prisma", "drizzle", "memory", ...). */
  adapter: string | undefined;
  /** Logouts not delivered yet: the outbox rows of every instance, plus those kept in this process's memory. */
  pending: number;
  /** Of `pending`, kept in this process's memory only (no outbox, or a row that could not be written). */
  inMemory: number;
  /** When the oldest pending sign-out happened, in ms since the epoch; null when none is pending. */
  oldestRevokedAt: number | null;
  /** Its age in seconds; null when none is pending. */
  oldestAgeSeconds: number | null;
  /** Deliveries running in this process now. */
  inFlight: number;
  /** The last attempt of this instance's background loop failed (taskgate unreachable or 5xx). */
  failing: boolean;
  /** This instance's background loop is running. */
  running: boolean;
}

export interface TaskgateOptions {
  /** taskgate's base URL; logout tokens are POSTed to `${url}/api/v1/auth/backchannel-logout`. */
  url: string;
  /** How long Better Auth's call waits for the first attempt, in ms. Default 2000. */
  timeout?: number;
  /**
   * Background retries after a network failure, a timeout or a 5xx. `false`: none (one attempt,
   * no outbox: nothing is written to the database).
   */
  retry?: TaskgateRetryOptions | false;
  /**
   * The durable outbox (the `taskgateOutbox` table). `false`: no table; retries are kept in
   * memory only and lost when the process stops.
   */
  outbox?: TaskgateOutboxOptions | false;
  /**
   * The longest lifetime of a token taskgate accepts, in seconds: taskgate's
   * `JWT_MAX_AGE_SECONDS`. Default 604 800 (7 days). A logout is retried until this long (plus
   * `GIVE_UP_MARGIN`) after the sign-out, when no token it covers can still be valid.
   */
  maxTokenAge?: number;
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
  /**
   * Called once for each logout taskgate refused (4xx), or given up because every token it
   * covers has expired.
   */
  onUndelivered?: (logout: UndeliveredLogout) => void | Promise<void>;
  /** The clock, in ms since the epoch (for tests). Default `Date.now`. */
  now?: () => number;
  /**
   * With @better-auth/oauth-provider: when a consent is withdrawn, also delete the user's refresh
   * tokens (and opaque access tokens) of that client in Better Auth, which the provider (1.7.29)
   * leaves, so that the app cannot mint new access tokens past the withdrawal. Default true.
   */
  revokeOAuthGrant?: boolean;
}

export type TaskgatePlugin = BetterAuthPlugin & {
  id: "taskgate";
  /** "jwks" or "hs256" once Better Auth has initialised the plugin. */
  readonly signingMode: "jwks" | "hs256" | undefined;
  /** Deliveries running in this process, plus logouts kept in its memory only (see `outboxStatus()`). */
  readonly pending: number;
  /** What is waiting to be delivered (reads the outbox table). */
  outboxStatus(): Promise<TaskgateOutboxStatus>;
  /**
   * Resolves when nothing is pending (the outbox is empty and no delivery runs), or after
   * `timeoutMs`; to the number still pending. Without a timeout it waits as long as taskgate
   * stays unreachable.
   */
  settle(timeoutMs?: number): Promise<number>;
  /**
   * Stops this instance's background loop, waits (at most `timeout`) for attempts under way, and
   * hands its claims back so that other instances take them at once. For a graceful shutdown.
   */
  close(): Promise<void>;
};

export declare function taskgate(options: TaskgateOptions): TaskgatePlugin;
