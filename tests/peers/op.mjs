// A real OpenID Provider for AMI Auth's tests: node-oidc-provider (OpenID Certified), configured per run.
//
//   node op.mjs '<json config>'        or        OP_CONFIG='<json config>' node op.mjs
//
// Config (every key optional except port):
//   port                 TCP port on 127.0.0.1
//   issuer               default http://127.0.0.1:<port> — fixed byte for byte, clients must use exactly this
//   clients              [{client_id, client_secret, redirect_uris, token_endpoint_auth_method, grant_types, ...}]
//   accounts             {"<login>": {sub, email, email_verified, name, ...}} — unknown logins get generated claims
//   claims               scope -> claim names (default openid/email/profile as in TESTING.md)
//   ttl                  seconds per artifact: AccessToken, AuthorizationCode, RefreshToken, IdToken, DeviceCode, ...
//   rotateRefreshToken   true (every use) | false (never) | absent (library default: after 70 % of the life)
//   signing              "RS256" (default) | "ES256": one fresh key with a random kid per start
//   deviceInterval       add `interval` to device authorization responses (oidc-provider sends none)
//   deviceSlowDown       seconds: answer `slow_down` to a device poll sooner than this after the previous one
//   omitUnchangedRefreshToken  leave `refresh_token` out of a refresh response that did not rotate it, as
//                        Google does (oidc-provider always echoes it; RFC 6749 §6 allows either)
//   userinfoSub          {"<login>": "<sub>"}: the userinfo endpoint answers about <sub> instead, as a
//                        misconfigured or hostile provider would (OIDC Core §5.3.4: the client must refuse it)
//
// Test-only endpoints under /__test/ (never part of a real OP; they exist so tests can assert what the OP saw):
//   GET  /__test/counts           {"requests": {"GET /jwks": n, ...}, "grants": {"refresh_token": {"200": n}, ...}}
//                                 requests are counted per route ("GET /interaction/:uid"), grants per status
//   POST /__test/reset            zero the counters
//   POST /__test/refresh-tokens   {"client_id", "account_id", "scope", "count"} -> {"refresh_tokens": [...]}
//                                 mints real refresh tokens through the provider's own models (bulk fixtures)
//   POST /__test/accounts         {"<login>": {claims}}: replace those accounts' claims (a directory change, e.g.
//                                 a user leaving a group), seen by the next sign-in
//
// On start it prints one line `READY <issuer>` to stdout.

import * as crypto from 'node:crypto';
import Provider from 'oidc-provider';
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';

const raw = process.argv[2] ?? process.env.OP_CONFIG ?? '{}';
const config = JSON.parse(raw);
const port = Number(config.port);
if (!Number.isInteger(port) || port <= 0) {
  console.error('op.mjs: config.port is required');
  process.exit(2);
}
const issuer = config.issuer ?? `http://127.0.0.1:${port}`;
const signing = config.signing ?? 'RS256';

function signingKey(alg) {
  const kid = crypto.randomBytes(8).toString('hex');
  const { privateKey } = alg === 'ES256'
    ? crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}

// oidc-provider's own in-memory store is an LRU of 1,000 entries, so bulk fixtures (hundreds of grants, each
// with its tokens) would be evicted mid-test and refused as unknown. Same adapter, unbounded store; entries
// still expire when their artifact does.
class UnboundedStore {
  #entries = new Map();

  get(key) {
    const entry = this.#entries.get(key);
    if (entry === undefined) return undefined;
    if (entry.expiry !== undefined && entry.expiry <= Date.now()) {
      this.#entries.delete(key);
      return undefined;
    }
    return entry.value;
  }

  set(key, value, { maxAge } = {}) {
    this.#entries.set(key, { value, expiry: typeof maxAge === 'number' ? Date.now() + maxAge : undefined });
  }

  delete(key) {
    this.#entries.delete(key);
  }
}
const store = new UnboundedStore();

const accounts = config.accounts ?? {};
function accountClaims(id) {
  return accounts[id] ?? {
    sub: id, email: `${id}@example.test`, email_verified: true, name: `User ${id}`,
  };
}

const clients = (config.clients ?? []).map((client) => ({
  response_types: ['code'],
  grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
  token_endpoint_auth_method: 'client_secret_basic',
  ...(signing === 'ES256' ? { id_token_signed_response_alg: 'ES256' } : {}),
  ...client,
}));

const provider = new Provider(issuer, {
  adapter: (model) => new MemoryAdapter(model, store, 15),
  clients,
  jwks: { keys: [signingKey(signing)] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  // `pkceRequired: false` stands for a provider that accepts a code without PKCE (the app's "PKCE off").
  pkce: { required: () => config.pkceRequired ?? true },
  scopes: ['openid', 'offline_access', 'email', 'profile'],
  claims: config.claims ?? { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  findAccount: async (ctx, id) => ({ accountId: id, claims: async () => ({ ...accountClaims(id), sub: id }) }),
  issueRefreshToken: async (ctx, client, code) => client.grantTypeAllowed('refresh_token')
    && code.scopes.has('offline_access'),
  ...('rotateRefreshToken' in config ? { rotateRefreshToken: Boolean(config.rotateRefreshToken) } : {}),
  ttl: {
    AccessToken: 3600, AuthorizationCode: 60, IdToken: 3600, RefreshToken: 14 * 24 * 3600,
    DeviceCode: 600, Grant: 14 * 24 * 3600, Interaction: 3600, Session: 14 * 24 * 3600,
    ...(config.ttl ?? {}),
  },
  enabledJWA: { idTokenSigningAlgValues: [signing] },
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    userinfo: { enabled: true },
  },
});

// --- test-only instrumentation ----------------------------------------------------------------------

// `authorize`: the query of the last authorization request, as the provider received it.
const counts = { requests: {}, grants: {}, authorize: null };
const lastDevicePoll = new Map();
const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';

function bump(table, key) {
  table[key] = (table[key] ?? 0) + 1;
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return chunks.length ? JSON.parse(Buffer.concat(chunks).toString('utf8')) : {};
}

async function mintRefreshTokens({ client_id: clientId, account_id: accountId, scope, count }) {
  const client = await provider.Client.find(clientId);
  if (!client) throw new Error(`unknown client ${clientId}`);
  const scopes = scope ?? 'openid offline_access';
  const tokens = [];
  for (let i = 0; i < (count ?? 1); i += 1) {
    const grant = new provider.Grant({ accountId, clientId });
    grant.addOIDCScope(scopes);
    const grantId = await grant.save();
    const token = new provider.RefreshToken({
      accountId, client, grantId, scope: scopes, gty: 'authorization_code',
    });
    tokens.push(await token.save());
  }
  return tokens;
}

provider.use(async (ctx, next) => {
  if (ctx.path.startsWith('/__test/')) {
    ctx.set('Cache-Control', 'no-store');
    if (ctx.method === 'GET' && ctx.path === '/__test/counts') {
      ctx.body = counts;
    } else if (ctx.method === 'POST' && ctx.path === '/__test/reset') {
      counts.requests = {};
      counts.grants = {};
      counts.authorize = null;
      ctx.status = 204;
    } else if (ctx.method === 'POST' && ctx.path === '/__test/accounts') {
      Object.assign(accounts, await readJson(ctx.req));
      ctx.status = 204;
    } else if (ctx.method === 'POST' && ctx.path === '/__test/refresh-tokens') {
      ctx.body = { refresh_tokens: await mintRefreshTokens(await readJson(ctx.req)) };
    } else {
      ctx.status = 404;
    }
    return;
  }

  if (ctx.method === 'GET' && ctx.path === '/auth') counts.authorize = { ...ctx.query };
  await next();
  // Per route, not per URL: "/interaction/:uid" rather than one key per interaction.
  bump(counts.requests, `${ctx.method} ${ctx._matchedRoute ?? ctx.path}`);

  const params = ctx.oidc?.params;
  if (ctx.method === 'POST' && ctx.path === '/token' && params?.grant_type) {
    const grantType = params.grant_type;
    // RFC 8628 §3.5: a server may answer `slow_down` to polls that come too fast; oidc-provider never does.
    if (grantType === DEVICE_GRANT && config.deviceSlowDown && ctx.body?.error === 'authorization_pending') {
      const now = Date.now();
      const previous = lastDevicePoll.get(params.device_code);
      lastDevicePoll.set(params.device_code, now);
      if (previous !== undefined && now - previous < config.deviceSlowDown * 1000) {
        ctx.body = { error: 'slow_down', error_description: 'you are polling too quickly' };
      }
    }
    if (grantType === 'refresh_token' && config.omitUnchangedRefreshToken && ctx.status === 200
      && ctx.body?.refresh_token === params.refresh_token) {
      const { refresh_token: omitted, ...rest } = ctx.body;
      ctx.body = rest;
    }
    if (!counts.grants[grantType]) counts.grants[grantType] = {};
    bump(counts.grants[grantType], String(ctx.status));
  }
  if (ctx.method === 'POST' && ctx.path === '/device/auth' && config.deviceInterval && ctx.status === 200) {
    ctx.body = { ...ctx.body, interval: config.deviceInterval };
  }
  if (ctx.path === '/me' && ctx.status === 200 && config.userinfoSub?.[ctx.body?.sub]) {
    ctx.body = { ...ctx.body, sub: config.userinfoSub[ctx.body.sub] };
  }
});

const server = provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`READY ${issuer}\n`);
});

function stop() {
  server.close(() => process.exit(0));
  // Clients keep pooled keep-alive connections open; close() alone would wait for them.
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
