/**
 * The AMI Auth API v1 client: openapi-fetch over the types openapi-typescript generates from the server's
 * OpenAPI document (src/schema.ts), with what every caller would otherwise write again:
 *
 * - {@link AmiApiError}: a failure with the taxonomy's code, hint and per-field messages;
 * - {@link unwrap}: the body of a 2xx answer, or that error thrown;
 * - {@link paginate}: every item of a keyset-paged list (`next_cursor` → `cursor`);
 * - CSRF for cookie calls: state-changing requests made with the browser's session carry `X-CSRFToken`
 *   (read once from `GET /api/auth/session`, read again when the server says it expired);
 * - 429 back-off: a rate-limited request is sent again after the `Retry-After` the server gave.
 */
import createClient, { type Client } from "openapi-fetch";

import type { components, operations, paths } from "./schema.js";

export type { components, operations, paths };
export type Schemas = components["schemas"];
export type ErrorBody = Schemas["Error"];
export type ErrorCode = ErrorBody["error"]["code"];

const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);
const CSRF_HEADER = "X-CSRFToken";

/** A failure in the taxonomy (`{"error": {code, message, hint, fields}}`), with the HTTP status. */
export class AmiApiError extends Error {
  readonly status: number;
  readonly code: ErrorCode;
  readonly hint: string;
  /** Per-field messages, keyed by the body field or parameter (`config.client_id`, `Idempotency-Key`). */
  readonly fields: Readonly<Record<string, string>>;
  /** Seconds to wait before trying again (429, 503, a 409 in progress). */
  readonly retryAfter: number | undefined;
  /** What to quote to an administrator (500). */
  readonly reference: string | undefined;

  constructor(status: number, body: ErrorBody) {
    super(body.error.message);
    this.name = "AmiApiError";
    this.status = status;
    this.code = body.error.code;
    this.hint = body.error.hint;
    this.fields = body.error.fields;
    this.retryAfter = body.error.retry_after;
    this.reference = body.error.reference;
  }

  /** The message for one field, if the server blamed it. */
  field(name: string): string | undefined {
    return this.fields[name];
  }
}

function isErrorBody(value: unknown): value is ErrorBody {
  if (typeof value !== "object" || value === null || !("error" in value)) return false;
  const error = (value as { error: unknown }).error;
  return typeof error === "object" && error !== null && "code" in error && "message" in error;
}

/** What openapi-fetch answers: the parsed body of a 2xx (`data`) or of an error (`error`), and the response. */
export interface FetchResult<T> {
  data?: T;
  error?: unknown;
  response: Response;
}

/**
 * The body of a successful answer, or an {@link AmiApiError} thrown for any other.
 *
 *     const config = await unwrap(ami.GET("/api/account-manager/provider-configs/{config_id}", {...}));
 */
export async function unwrap<T>(pending: Promise<FetchResult<T>>): Promise<T> {
  const { data, error, response } = await pending;
  if (response.ok) return data as T;
  if (isErrorBody(error)) throw new AmiApiError(response.status, error);
  throw new AmiApiError(response.status, {
    error: {
      code: response.status >= 500 ? "internal_error" : "validation_failed",
      message: `HTTP ${response.status} without an error body`,
      hint: "Check the base URL: this does not look like AMI Auth.",
      fields: {},
    },
  });
}

/**
 * Every item of a keyset-paged list, page after page, until `next_cursor` is null.
 *
 *     for await (const account of paginate(
 *       (cursor) => ami.GET("/api/account-manager/accounts", { params: { query: { cursor, limit: 100 } } }),
 *       (page) => page.accounts,
 *     )) { … }
 */
export async function* paginate<P extends { next_cursor: string | null }, T>(
  fetchPage: (cursor: string | undefined) => Promise<FetchResult<P>>,
  items: (page: P) => readonly T[],
): AsyncGenerator<T, void, undefined> {
  let cursor: string | undefined;
  do {
    const page = await unwrap(fetchPage(cursor));
    yield* items(page);
    cursor = page.next_cursor ?? undefined;
  } while (cursor !== undefined);
}

export interface AmiClientOptions {
  /** AMI Auth's base URL (AMI_AUTH_BASE_URL), e.g. `https://auth.example.com`. */
  baseUrl: string;
  /** A service token (`amis_…`) for server-side calls. Without it, calls use the browser's session cookie. */
  token?: string;
  /** The fetch to use (default: the global one); e.g. one that adds a cookie jar in tests. */
  fetch?: (request: Request) => Promise<Response>;
  /** How many times a 429 is retried (default 3); 0 turns back-off off. */
  maxRetries?: number;
  /** The longest `Retry-After` waited for, in seconds (default 60); a longer one is answered as the 429. */
  maxRetryAfter?: number;
  /** Called before each back-off wait (for logging). */
  onRetry?: (info: { request: Request; attempt: number; waitSeconds: number }) => void;
  /** How to wait (tests may pass a fake clock). */
  sleep?: (milliseconds: number) => Promise<void>;
}

export type AmiClient = Client<paths>;

const defaultSleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function retryAfterSeconds(response: Response): number | undefined {
  const raw = response.headers.get("Retry-After");
  if (raw === null) return undefined;
  const seconds = Number(raw);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const date = Date.parse(raw); // RFC 9110 section 10.2.3: delay-seconds or an HTTP-date
  return Number.isNaN(date) ? undefined : Math.max(0, (date - Date.now()) / 1000);
}

async function csrfRefused(response: Response): Promise<boolean> {
  if (response.status !== 403) return false;
  const body: unknown = await response.clone().json().catch(() => undefined);
  return isErrorBody(body) && CSRF_HEADER in body.error.fields;
}

/**
 * A typed client for AMI Auth. Methods are openapi-fetch's (`GET`, `POST`, `PATCH`, `DELETE`) on the
 * documented paths; combine them with {@link unwrap} to get the body or an {@link AmiApiError}.
 */
export function createAmiClient(options: AmiClientOptions): AmiClient {
  const baseFetch = options.fetch ?? ((request: Request) => globalThis.fetch(request));
  const maxRetries = options.maxRetries ?? 3;
  const maxRetryAfter = options.maxRetryAfter ?? 60;
  const sleep = options.sleep ?? defaultSleep;
  const baseUrl = options.baseUrl.replace(/\/+$/, "");
  const cookies = options.token === undefined;
  let csrfToken: string | undefined;

  async function readCsrfToken(): Promise<string> {
    const response = await baseFetch(new Request(`${baseUrl}/api/auth/session`, { credentials: "include" }));
    const body: unknown = await response.json().catch(() => undefined);
    if (!response.ok) {
      if (isErrorBody(body)) throw new AmiApiError(response.status, body);
      throw new AmiApiError(response.status, {
        error: { code: "not_authenticated", message: "No session.", hint: "Sign in to AMI Auth.", fields: {} },
      });
    }
    csrfToken = (body as Schemas["CurrentSession"]).csrf_token;
    return csrfToken;
  }

  async function send(request: Request): Promise<Response> {
    // A cookie call that changes something needs the session's CSRF token (docs/api.md, "Authentication").
    const withCsrf = async (fresh: boolean): Promise<Response> => {
      const attempt = request.clone();
      if (cookies && UNSAFE.has(attempt.method)) {
        attempt.headers.set(CSRF_HEADER, fresh || csrfToken === undefined ? await readCsrfToken() : csrfToken);
      }
      return baseFetch(attempt);
    };
    let response = await withCsrf(false);
    if (cookies && UNSAFE.has(request.method) && (await csrfRefused(response))) {
      response = await withCsrf(true); // the token expired with its session, or the session changed
    }
    return response;
  }

  async function fetchWithBackoff(request: Request): Promise<Response> {
    for (let attempt = 1; ; attempt += 1) {
      const response = await send(request);
      if (response.status !== 429 || attempt > maxRetries) return response;
      const wait = retryAfterSeconds(response) ?? 2 ** attempt;
      if (wait > maxRetryAfter) return response;
      options.onRetry?.({ request, attempt, waitSeconds: wait });
      await response.body?.cancel();
      await sleep(wait * 1000);
    }
  }

  const headers: Record<string, string> = {};
  if (options.token !== undefined) headers.Authorization = `Bearer ${options.token}`;
  return createClient<paths>({
    baseUrl,
    headers,
    credentials: cookies ? "include" : "omit",
    fetch: fetchWithBackoff,
  });
}
