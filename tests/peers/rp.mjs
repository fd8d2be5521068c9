// Relying parties of AMI Auth's own OpenID Provider, for its tests: openid-client v6 (panva, OpenID Certified)
// and jose, driven over HTTP by pytest (tests/support/rp.py). Never shipped.
//
//   node rp.mjs <port>            prints `READY <port>` once it listens on 127.0.0.1:<port>
//
// POST /call {"op": ..., ...}    -> 200 {"result": ...} or 200 {"error": {name, code, error, error_description, status}}
//   configure          {name, issuer, client_id, client_secret?, auth: client_secret_basic|client_secret_post|none|
//                      private_key_jwt, insecure?}          discovery(); a private_key_jwt client uses the key made by
//                                                          `key` under the same name
//   key                {name, alg}                         a key pair; its public JWK is served at GET /jwks/<name>
//   authorize_url      {name, redirect_uri, scope, params?} a PKCE S256 + state + nonce authorization URL
//   callback           {name, url, verifier, state, nonce, max_age?}
//                                                          authorizationCodeGrant(): the code exchanged, the ID token
//                                                          checked (iss, aud, nonce, at_hash, signature...)
//   refresh            {name, refresh_token}
//   userinfo           {name, access_token, sub}
//   introspect         {name, token, hint?}
//   revoke             {name, token, hint?}
//   client_credentials {name, params?}
//   end_session_url    {name, params}
//   verify             {jwks_uri, issuer, token, audience?, typ?}   jose.jwtVerify against the remote JWKS
// GET  /cb/<name>                  a redirect URI: remembers the URL it was called with (GET /seen/<name>)
// POST /backchannel/<name>         an OIDC back-channel logout receiver: verifies the logout_token with jose
//                                  (iss, aud, typ logout+jwt, events, no nonce) against the issuer's JWKS and keeps
//                                  the claims (GET /logouts/<name>); answers 200, or 400 for a bad token
// POST /backchannel-config/<name>  {issuer, jwks_uri, client_id, status?} how the receiver checks (and answers)

import * as http from 'node:http';
import * as client from 'openid-client';
import * as jose from 'jose';

const port = Number(process.argv[2]);
const configs = new Map();
const keys = new Map();
const seen = new Map();
const logouts = new Map();
const receivers = new Map();

function errorOf(e) {
  return {
    name: e?.name,
    code: e?.code,
    message: e?.message,
    error: e?.error ?? e?.cause?.error,
    error_description: e?.error_description ?? e?.cause?.error_description,
    status: e?.status ?? e?.cause?.status,
  };
}

function tokensOf(r) {
  const out = { ...r };
  try {
    out.claims = r.claims ? r.claims() : undefined;
  } catch (e) {
    out.claims = undefined;
  }
  return out;
}

const ops = {
  async key({ name, alg }) {
    const pair = await jose.generateKeyPair(alg, { extractable: true });
    const jwk = await jose.exportJWK(pair.publicKey);
    jwk.kid = `${name}-${Date.now()}`;
    jwk.alg = alg;
    jwk.use = 'sig';
    keys.set(name, { ...pair, jwk });
    return jwk;
  },
  async configure({ name, issuer, client_id, client_secret, auth, insecure }) {
    let method;
    if (auth === 'client_secret_post') method = client.ClientSecretPost(client_secret);
    else if (auth === 'none') method = client.None();
    else if (auth === 'private_key_jwt') method = client.PrivateKeyJwt({ key: keys.get(name).privateKey, kid: keys.get(name).jwk.kid });
    else method = client.ClientSecretBasic(client_secret);
    const options = insecure ? { execute: [client.allowInsecureRequests] } : undefined;
    const config = await client.discovery(new URL(issuer), client_id, undefined, method, options);
    configs.set(name, config);
    return config.serverMetadata();
  },
  async authorize_url({ name, redirect_uri, scope, params }) {
    const verifier = client.randomPKCECodeVerifier();
    const state = client.randomState();
    const nonce = client.randomNonce();
    const url = client.buildAuthorizationUrl(configs.get(name), {
      redirect_uri,
      scope,
      code_challenge: await client.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256',
      state,
      nonce,
      ...(params || {}),
    });
    return { url: url.href, verifier, state, nonce };
  },
  async callback({ name, url, verifier, state, nonce, max_age }) {
    const checks = { pkceCodeVerifier: verifier, expectedState: state, expectedNonce: nonce, idTokenExpected: true };
    if (max_age !== undefined) checks.maxAge = max_age;
    return tokensOf(await client.authorizationCodeGrant(configs.get(name), new URL(url), checks));
  },
  async refresh({ name, refresh_token }) {
    return tokensOf(await client.refreshTokenGrant(configs.get(name), refresh_token));
  },
  async userinfo({ name, access_token, sub }) {
    return await client.fetchUserInfo(configs.get(name), access_token, sub);
  },
  async introspect({ name, token, hint }) {
    return await client.tokenIntrospection(configs.get(name), token, hint ? { token_type_hint: hint } : undefined);
  },
  async revoke({ name, token, hint }) {
    await client.tokenRevocation(configs.get(name), token, hint ? { token_type_hint: hint } : undefined);
    return { revoked: true };
  },
  async client_credentials({ name, params }) {
    return tokensOf(await client.clientCredentialsGrant(configs.get(name), params || {}));
  },
  async end_session_url({ name, params }) {
    return client.buildEndSessionUrl(configs.get(name), params).href;
  },
  async verify({ jwks_uri, issuer, token, audience, typ }) {
    const jwks = jose.createRemoteJWKSet(new URL(jwks_uri));
    const { payload, protectedHeader } = await jose.jwtVerify(token, jwks, { issuer, audience, typ });
    return { payload, header: protectedHeader };
  },
};

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res, status, body, type = 'application/json') {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(type === 'application/json' ? JSON.stringify(body) : body);
}

async function backchannel(name, body, res) {
  const receiver = receivers.get(name);
  const form = new URLSearchParams(body);
  const token = form.get('logout_token');
  const entry = { received_at: Date.now() };
  try {
    // OIDC Back-Channel Logout 1.0 §2.6: validate like an ID token, plus the events claim, and no nonce.
    const jwks = jose.createRemoteJWKSet(new URL(receiver.jwks_uri));
    const { payload, protectedHeader } = await jose.jwtVerify(token, jwks, {
      issuer: receiver.issuer,
      audience: receiver.client_id,
      typ: 'logout+jwt',
      requiredClaims: ['iat', 'jti', 'events'],
    });
    if (!payload.events || typeof payload.events['http://schemas.openid.net/event/backchannel-logout'] !== 'object') {
      throw new Error('no back-channel logout event');
    }
    if ('nonce' in payload) throw new Error('a logout token must not have a nonce');
    if (!payload.sub && !payload.sid) throw new Error('neither sub nor sid');
    entry.claims = payload;
    entry.header = protectedHeader;
  } catch (e) {
    entry.error = String(e?.message || e);
    (logouts.get(name) || logouts.set(name, []).get(name)).push(entry);
    return send(res, 400, { error: 'invalid_request', error_description: entry.error });
  }
  (logouts.get(name) || logouts.set(name, []).get(name)).push(entry);
  const status = receiver.status || 200;
  return send(res, status, status === 200 ? '' : 'down', 'text/plain');
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, `http://127.0.0.1:${port}`);
  try {
    if (req.method === 'POST' && url.pathname === '/call') {
      const args = JSON.parse(await readBody(req));
      try {
        return send(res, 200, { result: await ops[args.op](args) });
      } catch (e) {
        return send(res, 200, { error: errorOf(e) });
      }
    }
    const [, kind, name] = url.pathname.split('/');
    if (req.method === 'GET' && kind === 'jwks') return send(res, 200, { keys: [keys.get(name).jwk] });
    if (req.method === 'GET' && kind === 'cb') {
      (seen.get(name) || seen.set(name, []).get(name)).push(url.href);
      return send(res, 200, '<!doctype html><title>RP callback</title><h1>Back at the app</h1>', 'text/html');
    }
    if (req.method === 'GET' && kind === 'seen') return send(res, 200, seen.get(name) || []);
    if (req.method === 'GET' && kind === 'logouts') return send(res, 200, logouts.get(name) || []);
    if (req.method === 'POST' && kind === 'backchannel-config') {
      receivers.set(name, JSON.parse(await readBody(req)));
      return send(res, 200, { ok: true });
    }
    if (req.method === 'POST' && kind === 'backchannel') return await backchannel(name, await readBody(req), res);
    return send(res, 404, { error: 'not_found' });
  } catch (e) {
    return send(res, 500, { error: errorOf(e) });
  }
});

server.listen(port, '127.0.0.1', () => console.log(`READY ${port}`));
