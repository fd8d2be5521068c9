/** The wrapper's own behaviour: CSRF for cookie calls, 429 back-off honouring Retry-After, the error class. */
import assert from "node:assert/strict";
import { test } from "node:test";

import { AmiApiError, createAmiClient, unwrap } from "../src/index.js";
import { cookieFetch, live } from "./live.js";

test("a cookie call that changes something carries the session's CSRF token, read once", async () => {
  const sent: Request[] = [];
  const browser = createAmiClient({ baseUrl: live.baseUrl, fetch: cookieFetch(sent) });
  const sessions = await unwrap(browser.GET("/api/auth/sessions"));
  assert.ok(sessions.sessions.some((s) => s.id === live.otherSessionId));
  const { response } = await browser.DELETE("/api/auth/sessions/{session_id}", {
    params: { path: { session_id: live.otherSessionId } },
  });
  assert.equal(response.status, 204);
  const deletes = sent.filter((r) => r.method === "DELETE");
  assert.equal(deletes.length, 1);
  assert.ok((deletes[0]?.headers.get("X-CSRFToken") ?? "").length > 20);
  assert.equal(sent.filter((r) => new URL(r.url).pathname === "/api/auth/session").length, 1);
  // Without the wrapper's token the same call is refused, naming the header, so a client can recover.
  const bare = await fetch(`${live.baseUrl}/api/auth/sessions/0123456789abcdef`, {
    method: "DELETE",
    headers: { Cookie: `ami_session=${live.sessionCookie}`, Origin: live.cmsOrigin },
  });
  assert.equal(bare.status, 403);
  const body = (await bare.json()) as { error: { fields: Record<string, string> } };
  assert.ok("X-CSRFToken" in body.error.fields);
});

test("a 429 is sent again after the Retry-After the server gave", async () => {
  const waits: number[] = [];
  let calls = 0;
  const stub = async (request: Request): Promise<Response> => {
    calls += 1;
    assert.equal(await request.text(), '{"name":"x"}'); // every attempt carries the whole body
    return calls === 1
      ? new Response('{"error":{"code":"rate_limited","message":"m","hint":"h","fields":{},"retry_after":7}}', {
          status: 429,
          headers: { "Retry-After": "7", "Content-Type": "application/json" },
        })
      : new Response('{"id":1}', { status: 200, headers: { "Content-Type": "application/json" } });
  };
  const ami = createAmiClient({
    baseUrl: "http://127.0.0.1:9",
    token: "amis_x",
    fetch: stub,
    sleep: async (ms) => {
      waits.push(ms);
    },
  });
  const { response } = await ami.PATCH("/api/users/{user_id}", { params: { path: { user_id: 1 } }, body: { name: "x" } });
  assert.equal(response.status, 200);
  assert.deepEqual(waits, [7000]);
});

test("against the real limiter: the wait is the server's Retry-After, and the last 429 is an AmiApiError", async () => {
  const waits: number[] = [];
  const ami = createAmiClient({
    baseUrl: live.tightBaseUrl,
    token: live.token,
    maxRetries: 1,
    sleep: async (ms) => {
      waits.push(ms);
    },
  });
  let last: unknown;
  for (let i = 0; i < 4 && last === undefined; i += 1) {
    last = await unwrap(ami.GET("/api/compliance/report")).then(
      () => undefined,
      (error: unknown) => error,
    );
  }
  assert.ok(last instanceof AmiApiError, String(last));
  assert.equal(last.status, 429);
  assert.equal(last.code, "rate_limited");
  assert.ok(last.retryAfter !== undefined && last.retryAfter >= 1 && last.retryAfter <= 60);
  assert.equal(waits.length, 1);
  assert.ok(waits[0] !== undefined && waits[0] >= 1000 && waits[0] <= 60000);
});

test("an answer that is not AMI Auth's still becomes an AmiApiError", async () => {
  const ami = createAmiClient({
    baseUrl: "http://127.0.0.1:9",
    token: "amis_x",
    fetch: async () => new Response("<html>Bad gateway</html>", { status: 502 }),
  });
  const error = await unwrap(ami.GET("/api/compliance/report")).catch((e: unknown) => e);
  assert.ok(error instanceof AmiApiError);
  assert.equal(error.status, 502);
  assert.equal(error.code, "internal_error");
});
