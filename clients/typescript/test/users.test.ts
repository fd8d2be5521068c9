/** People through the API: list and search with keyset paging, invite, edit, the console's guards. */
import assert from "node:assert/strict";
import { test } from "node:test";

import { AmiApiError, paginate, unwrap } from "../src/index.js";
import { live, tokenClient } from "./live.js";

test("users are listed page by page and searched", async () => {
  const ami = tokenClient();
  const emails: string[] = [];
  for await (const user of paginate(
    (cursor) => ami.GET("/api/users", { params: { query: { cursor, limit: 2 } } }),
    (page) => page.users,
  )) {
    emails.push(user.email);
  }
  assert.ok(emails.length >= live.userCount);
  assert.equal(new Set(emails).size, emails.length);
  const found = await unwrap(ami.GET("/api/users", { params: { query: { q: "MEMBER3" } } }));
  assert.deepEqual(
    found.users.map((u) => u.email),
    ["member3@example.com"],
  );
});

test("a user is created with an invitation, renamed, and the last admin is protected", async () => {
  const ami = tokenClient();
  const email = `invitee-${process.pid}-${Date.now()}@example.com`;
  const { data, response } = await ami.POST("/api/users", { body: { email, name: "Invitee", role: "member" } });
  assert.equal(response.status, 201);
  assert.ok(data !== undefined);
  assert.equal(response.headers.get("Location"), `/api/users/${data.user.id}`);
  assert.equal(data.user.password_set, false);
  assert.equal(data.invitation.sent, true);
  const renamed = await unwrap(
    ami.PATCH("/api/users/{user_id}", { params: { path: { user_id: data.user.id } }, body: { name: "Ivy" } }),
  );
  assert.equal(renamed.name, "Ivy");
  const refused = await unwrap(
    ami.PATCH("/api/users/{user_id}", { params: { path: { user_id: live.adminId } }, body: { role: "member" } }),
  ).catch((e: unknown) => e);
  assert.ok(refused instanceof AmiApiError);
  assert.equal(refused.status, 409);
  assert.match(refused.message, /last active admin/);
});

test("linked identities are listed, and the last way to sign in is never unlinked", async () => {
  const ami = tokenClient();
  const listed = await unwrap(
    ami.GET("/api/users/{user_id}/identities", { params: { path: { user_id: live.ssoUserId } } }),
  );
  assert.equal(listed.identities.length, 1);
  const only = listed.identities[0];
  assert.ok(only !== undefined);
  const refused = await unwrap(
    ami.DELETE("/api/users/{user_id}/identities/{identity_id}", {
      params: { path: { user_id: live.ssoUserId, identity_id: only.id } },
    }),
  ).catch((e: unknown) => e);
  assert.ok(refused instanceof AmiApiError);
  assert.equal(refused.code, "conflict");
  // The member also has a password: their identity can go.
  const member = await unwrap(
    ami.GET("/api/users/{user_id}/identities", { params: { path: { user_id: live.memberId } } }),
  );
  const identity = member.identities[0];
  assert.ok(identity !== undefined);
  const { response } = await ami.DELETE("/api/users/{user_id}/identities/{identity_id}", {
    params: { path: { user_id: live.memberId, identity_id: identity.id } },
  });
  assert.equal(response.status, 204);
});
