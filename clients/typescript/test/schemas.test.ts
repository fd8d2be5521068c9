/**
 * The published JSON Schemas compile in ajv's strict mode (draft 2020-12), and they agree with the server:
 * for bodies generated per provider type, valid and invalid, ajv's verdict is the server's (2xx or 422).
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { Ajv2020 } from "ajv/dist/2020.js";
import type { AnySchema, ValidateFunction } from "ajv";
import ajvFormats from "ajv-formats";

import { unwrap } from "../src/index.js";
import { live, tokenClient, unique } from "./live.js";

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Schema = { [key: string]: Json };

// ajv-formats is CommonJS: under NodeNext its default import is module.exports, whose `default` is the plugin.
const addFormats = ajvFormats.default;

function strictAjv(keywords: readonly string[]): Ajv2020 {
  const ajv = new Ajv2020({ strict: true, allErrors: true, keywords: [...keywords] });
  addFormats(ajv);
  return ajv;
}

test("every published provider schema compiles in ajv strict mode (2020-12)", async () => {
  const published = await unwrap(tokenClient().GET("/api/account-manager/providers/schema"));
  assert.ok(published.annotation_keywords.includes("x-order"));
  const ajv = strictAjv(published.annotation_keywords);
  let compiled = 0;
  for (const provider of published.providers) {
    for (const schema of [provider.config, provider.account]) {
      ajv.compile(schema as AnySchema);
      compiled += 1;
    }
  }
  assert.equal(compiled, published.providers.length * 2);
});

// --- bodies per provider type, valid and invalid ---------------------------------------------------------

function branch(schema: Schema): Schema {
  const anyOf = schema.anyOf;
  return Array.isArray(anyOf) ? (anyOf[0] as Schema) : schema;
}

function isUrl(schema: Schema): boolean {
  return typeof schema.pattern === "string" && schema.pattern.startsWith("^[Hh][Tt][Tt][Pp]");
}

/** A value the field should accept, from its own examples and default, or made to fit its type. */
function goodValue(field: Schema): Json {
  const shape = branch(field);
  const examples = field.examples;
  if (Array.isArray(examples) && examples.length > 0) return examples[0] ?? null;
  if (field.default !== undefined && field.default !== null) return field.default;
  if (field.const !== undefined) return field.const;
  if (Array.isArray(shape.enum)) return shape.enum[0] ?? null;
  switch (shape.type) {
    case "integer":
      return typeof shape.minimum === "number" ? shape.minimum : 1;
    case "boolean":
      return true;
    case "array":
      return ["value"];
    default:
      return isUrl(shape) ? "https://id.example.com" : "value";
  }
}

/** Values a client might send by mistake (or on purpose), by the field's type. */
function badValues(field: Schema): Json[] {
  const shape = branch(field);
  if (Array.isArray(shape.enum)) return ["not-an-option", 1];
  switch (shape.type) {
    case "integer": {
      const values: Json[] = ["45", 4.5, true];
      if (typeof shape.minimum === "number") values.push(shape.minimum - 1);
      if (typeof shape.maximum === "number") values.push(shape.maximum + 1);
      return values;
    }
    case "boolean":
      return ["yes", "true", 1];
    case "array":
      return ["openid email", ["a", "a"], [" padded"], [""], [1]];
    default: {
      const values: Json[] = [45, "", " padded ", "two\nlines"];
      if (isUrl(shape)) {
        values.push("ftp://files.example.com", "mailto:admin@example.com", "https://user:pw@example.com", "example.com");
      }
      if (typeof shape.maxLength === "number") values.push("x".repeat(shape.maxLength + 1));
      return values;
    }
  }
}

interface Case {
  providerType: string;
  label: string;
  config: { [key: string]: Json } | undefined;
  enabled?: boolean;
}

function casesFor(providerType: string, configSchema: Schema): Case[] {
  const properties = (configSchema.properties ?? {}) as { [name: string]: Schema };
  const required = (configSchema.required ?? []) as string[];
  const baseline: { [key: string]: Json } = {};
  for (const name of required) {
    const field = properties[name];
    if (field !== undefined) baseline[name] = goodValue(field);
  }
  const cases: Case[] = [{ providerType, label: "required fields only", config: baseline }];
  if (required.length > 0) {
    cases.push({ providerType, label: "no config", config: undefined });
    for (const name of required) {
      const without = { ...baseline };
      delete without[name];
      cases.push({ providerType, label: `without ${name}`, config: without });
    }
  }
  cases.push({ providerType, label: "an unknown field", config: { ...baseline, not_a_field: 1 } });
  // Enabled at once: only when no required secret is due for these values.
  cases.push({ providerType, label: "enabled", config: baseline, enabled: true });
  for (const [name, field] of Object.entries(properties)) {
    const options = branch(field).enum;
    if (!Array.isArray(options)) continue;
    for (const option of options) {
      cases.push({ providerType, label: `enabled, ${name}: ${String(option)}`, config: { ...baseline, [name]: option }, enabled: true });
    }
  }
  for (const [name, field] of Object.entries(properties)) {
    if (field.writeOnly === true) {
      cases.push({ providerType, label: `secret ${name}`, config: { ...baseline, [name]: "s3cret-value" } });
      continue;
    }
    cases.push({ providerType, label: `${name}: good`, config: { ...baseline, [name]: goodValue(field) } });
    cases.push({ providerType, label: `${name}: null`, config: { ...baseline, [name]: null } });
    for (const bad of badValues(field)) {
      cases.push({ providerType, label: `${name}: ${JSON.stringify(bad).slice(0, 40)}`, config: { ...baseline, [name]: bad } });
    }
  }
  return cases;
}

/** The OpenAPI document's component schemas, registered in ajv under their own names. */
function openapiValidators(document: Schema, keywords: readonly string[]): (name: string) => ValidateFunction {
  const ajv = strictAjv(keywords);
  const components = ((document.components as Schema).schemas ?? {}) as { [name: string]: Schema };
  const text = JSON.stringify(components).replaceAll('"#/components/schemas/', '"');
  const rewritten = JSON.parse(text) as { [name: string]: Schema };
  for (const [name, schema] of Object.entries(rewritten)) {
    if (!name.startsWith("ProviderConfigCreate") || name === "ProviderConfigCreate") continue;
    ajv.addSchema(schema as AnySchema, name);
  }
  return (name: string) => {
    const found = ajv.getSchema(name);
    assert.ok(found !== undefined, name);
    return found;
  };
}

test("ajv and the server agree on every generated config body (2xx or 422)", async () => {
  const ami = tokenClient();
  const published = await unwrap(ami.GET("/api/account-manager/providers/schema"));
  const document = (await (await fetch(`${live.baseUrl}/api/openapi.json`)).json()) as Schema;
  const validator = openapiValidators(document, published.annotation_keywords);
  const disagreements: string[] = [];
  let total = 0;
  for (const provider of published.providers) {
    const name = `ProviderConfigCreate${provider.id
      .split("_")
      .map((part) => part.charAt(0).toUpperCase() + part.slice(1))
      .join("")}`;
    const validate = validator(name);
    for (const sample of casesFor(provider.id, provider.config as unknown as Schema)) {
      const body: { [key: string]: Json } = { provider_type: sample.providerType, name: unique(provider.display_name) };
      if (sample.config !== undefined) body.config = sample.config;
      if (sample.enabled !== undefined) body.enabled = sample.enabled;
      const ajvSays = validate(body) ? "valid" : "invalid";
      const response = await fetch(`${live.baseUrl}/api/account-manager/provider-configs`, {
        method: "POST",
        headers: { Authorization: `Bearer ${live.token}`, "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      total += 1;
      const serverSays = response.status === 201 ? "valid" : response.status === 422 ? "invalid" : `HTTP ${response.status}`;
      const detail = response.status === 201 ? "" : JSON.stringify(((await response.json()) as Schema).error).slice(0, 200);
      if (response.status === 201) await response.body?.cancel();
      if (ajvSays !== serverSays) {
        disagreements.push(`${sample.providerType} ${sample.label}: ajv ${ajvSays}, server ${serverSays} ${detail}`);
      }
    }
  }
  console.log(`schema/server agreement: ${total} bodies, ${disagreements.length} disagreements`);
  assert.ok(total > 150, `only ${total} bodies`);
  assert.deepEqual(disagreements, []);
});
