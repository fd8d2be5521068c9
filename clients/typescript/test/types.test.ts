/** Exact types: per-type config values and account identifiers, Location, Idempotency-Key, keyset paging. */
import assert from "node:assert/strict";
import { test } from "node:test";

import { AmiApiError, paginate, unwrap, type Schemas } from "../src/index.js";
import { live, tokenClient, unique } from "./live.js";

test("a config's values are typed per provider type: rotation_days is a number, without a cast", async () => {
  const ami = tokenClient();
  const { data, response } = await ami.POST("/api/account-manager/provider-configs", {
    body: { provider_type: "openai", name: unique("OpenAI"), config: { rotation_days: 30 } },
  });
  assert.equal(response.status, 201);
  assert.ok(data !== undefined);
  assert.equal(response.headers.get("Location"), `/api/account-manager/provider-configs/${data.id}`);
  assert.equal(data.provider_type, "openai");
  if (data.provider_type === "openai") {
    const days: number | null | undefined = data.config.rotation_days;
    assert.equal(days, 30);
  }
  const changed = await unwrap(
    ami.PATCH("/api/account-manager/provider-configs/{config_id}", {
      params: { path: { config_id: data.id } },
      body: { config: { rotation_days: 45 } },
    }),
  );
  assert.ok(changed.provider_type === "openai" && changed.config.rotation_days === 45);
  // `enabled` has a default: a create body without it compiles (it used to be required in the types).
  const body: Schemas["ProviderConfigCreateOpenai"] = { provider_type: "openai", name: "x" };
  assert.equal(body.enabled, undefined);
});

test("text standing for a number is refused, as the schema says", async () => {
  const ami = tokenClient();
  const error = await unwrap(
    ami.POST("/api/account-manager/provider-configs", {
      // @ts-expect-error — rotation_days is a number, not text
      body: { provider_type: "openai", name: unique("OpenAI"), config: { rotation_days: "45" } },
    }),
  ).catch((e: unknown) => e);
  assert.ok(error instanceof AmiApiError);
  assert.equal(error.status, 422);
  assert.match(error.field("config.rotation_days") ?? "", /whole number/);
});

test("account identifiers are typed per provider type: identifiers.base_url without a cast", async () => {
  const ami = tokenClient();
  const seen: string[] = [];
  let pages = 0;
  for await (const account of paginate(
    (cursor) => {
      pages += 1;
      return ami.GET("/api/account-manager/accounts", { params: { query: { cursor, limit: 2 } } });
    },
    (page) => page.accounts,
  )) {
    if (account.provider_type === "openai") {
      const baseUrl: string | null | undefined = account.identifiers.base_url;
      assert.ok(baseUrl !== null && baseUrl !== undefined);
      seen.push(baseUrl);
      assert.ok(!("mail" in account)); // only SMTP accounts have a send count
    }
  }
  assert.equal(seen.length, live.accountCount);
  assert.ok(seen.every((url) => url.startsWith("https://gateway")));
  // Two per page: the pager followed next_cursor across every page.
  assert.ok(pages >= Math.ceil(live.accountCount / 2));
});

test("Idempotency-Key: a retried create replays the first answer; another body with the key is refused", async () => {
  const ami = tokenClient();
  const key = `create-${process.pid}-${Date.now()}`;
  const name = unique("Anthropic");
  const first = await ami.POST("/api/account-manager/provider-configs", {
    headers: { "Idempotency-Key": key },
    body: { provider_type: "anthropic", name },
  });
  const again = await ami.POST("/api/account-manager/provider-configs", {
    headers: { "Idempotency-Key": key },
    body: { provider_type: "anthropic", name },
  });
  assert.equal(first.response.status, 201);
  assert.equal(again.response.status, 201);
  assert.equal(again.response.headers.get("Idempotent-Replayed"), "true");
  assert.equal(again.data?.id, first.data?.id);
  assert.equal(again.response.headers.get("Location"), first.response.headers.get("Location"));
  const other = await unwrap(
    ami.POST("/api/account-manager/provider-configs", {
      headers: { "Idempotency-Key": key },
      body: { provider_type: "anthropic", name: unique("Anthropic") },
    }),
  ).catch((e: unknown) => e);
  assert.ok(other instanceof AmiApiError);
  assert.equal(other.status, 422);
  assert.ok(other.field("Idempotency-Key") !== undefined);
});

test("providers' field schemas are typed per type: the config schema lists its properties", async () => {
  const schemas = await unwrap(tokenClient().GET("/api/account-manager/providers/schema"));
  const openai = schemas.providers.find((p) => p.id === "openai");
  assert.ok(openai !== undefined && openai.id === "openai");
  assert.equal(openai.config.properties.rotation_days.title, "Rotation reminder (days)");
  assert.equal(openai.account.properties.api_key.writeOnly, true);
});
