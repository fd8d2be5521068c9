/** The README's example, run against the live app. */
import assert from "node:assert/strict";
import { test } from "node:test";

import { quickstart } from "../examples/quickstart.js";
import { live } from "./live.js";

test("the README example runs", async () => {
  const attention = await quickstart(live.baseUrl, live.token, live.openaiConfigId);
  assert.ok(Array.isArray(attention));
});
