/** The API's semantics as a client meets them: taxonomy errors, 401 vs 403, 405, unknown parameters, headers. */
import assert from "node:assert/strict";
import { test } from "node:test";

import { AmiApiError, createAmiClient, unwrap } from "../src/index.js";
import { cookieFetch, live, tokenClient } from "./live.js";

async function failure(pending: Promise<unknown>): Promise<AmiApiError> {
  try {
    await pending;
  } catch (error) {
    if (error instanceof AmiApiError) return error;
    throw error;
  }
  assert.fail("expected an AmiApiError");
}

test("a missing credential is 401 with an RFC 6750 challenge; an invalid token says invalid_token", async () => {
  const anonymous = createAmiClient({ baseUrl: live.baseUrl, fetch: (r) => fetch(r) });
  const { response } = await anonymous.GET("/api/compliance/report");
  assert.equal(response.status, 401);
  assert.equal(response.headers.get("WWW-Authenticate"), 'Bearer realm="AMI Auth"');
  const bogus = createAmiClient({ baseUrl: live.baseUrl, token: "amis_" + "x".repeat(43) });
  const result = await bogus.GET("/api/compliance/report");
  assert.equal(result.response.status, 401);
  assert.match(result.response.headers.get("WWW-Authenticate") ?? "", /error="invalid_token"/);
  const error = await failure(unwrap(bogus.GET("/api/compliance/report")));
  assert.equal(error.code, "not_authenticated");
  assert.match(error.hint, /Service tokens/);
});

test("a valid credential of the wrong kind or scope is 403, never 401", async () => {
  const narrow = createAmiClient({ baseUrl: live.baseUrl, token: live.narrowToken });
  const scope = await failure(unwrap(narrow.GET("/api/compliance/report")));
  assert.equal(scope.status, 403);
  assert.equal(scope.code, "permission_denied");
  assert.match(scope.message, /compliance:read/);
  // A service token on the browser's own session endpoint.
  const kind = await failure(unwrap(tokenClient().GET("/api/auth/session")));
  assert.equal(kind.status, 403);
  assert.equal(kind.code, "permission_denied");
});

test("unknown and repeated query parameters are refused with 422 on their name", async () => {
  const ami = tokenClient();
  const response = await fetch(`${live.baseUrl}/api/account-manager/accounts?limt=5`, {
    headers: { Authorization: `Bearer ${live.token}` },
  });
  assert.equal(response.status, 422);
  const body = (await response.json()) as { error: { code: string; fields: Record<string, string> } };
  assert.equal(body.error.code, "validation_failed");
  assert.ok("limt" in body.error.fields);
  const repeated = await fetch(`${live.baseUrl}/api/account-manager/accounts?limit=1&limit=2`, {
    headers: { Authorization: `Bearer ${live.token}` },
  });
  assert.equal(repeated.status, 422);
  // The typed client cannot even send an unknown parameter: this would not compile.
  // @ts-expect-error — "limt" is not a query parameter of listAccounts
  await ami.GET("/api/account-manager/accounts", { params: { query: { limt: 5 } } });
});

test("a wrong method is 405 method_not_allowed with Allow", async () => {
  const response = await fetch(`${live.baseUrl}/api/compliance/report`, {
    method: "DELETE",
    headers: { Authorization: `Bearer ${live.token}` },
  });
  assert.equal(response.status, 405);
  assert.match(response.headers.get("Allow") ?? "", /GET/);
  const body = (await response.json()) as { error: { code: string } };
  assert.equal(body.error.code, "method_not_allowed");
});

test("every answer says where the caller stands against its rate limit", async () => {
  const { response } = await tokenClient().GET("/api/compliance/report");
  assert.equal(response.status, 200);
  assert.match(response.headers.get("RateLimit-Policy") ?? "", /^"token";q=\d+;w=60$/);
  assert.match(response.headers.get("RateLimit") ?? "", /^"token";r=\d+;t=\d+$/);
});

test("the session endpoint says when MFA enrolment is still required", async () => {
  const browser = createAmiClient({ baseUrl: live.baseUrl, fetch: cookieFetch() });
  const session = await unwrap(browser.GET("/api/auth/session"));
  assert.equal(session.user.id, live.adminId);
  assert.equal(typeof session.mfa.enrolment_required, "boolean");
  assert.equal(session.mfa.enrolment_required, false);
});

test("the compliance report speaks the accounts API's status vocabulary", async () => {
  const report = await unwrap(tokenClient().GET("/api/compliance/report"));
  const statuses = new Set(["active", "expiring", "consent_required", "error", "disabled"]);
  for (const failing of report.accounts_failing) assert.ok(statuses.has(failing.status), failing.status);
});
