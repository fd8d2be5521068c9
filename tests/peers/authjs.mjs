// A small Express app that signs people in with Auth.js (@auth/express) through AMI Auth's OpenID Provider, the way
// the CMS does: `node authjs.mjs PORT` with the environment below. The configuration is the one
// docs/oidc-provider.md shows.
//
// AMI_ISSUER, AMI_CLIENT_ID, AMI_CLIENT_SECRET   the provider and the client registered for this app
// AUTH_SECRET                                    Auth.js's own secret (encrypts its session cookie)
// APP_URL                                        this app's own address, e.g. http://localhost:PORT
//
// GET  /auth/...              Auth.js: /auth/signin (its page), /auth/callback/ami, /auth/session (the session)
// GET  /logout                RP-initiated logout: drops the app's session, sends the browser to AMI's end_session
//                             endpoint with the ID token as id_token_hint, back to /signed-out
// POST /backchannel-logout    OIDC Back-Channel Logout 1.0 receiver (Auth.js has none): verifies the logout token
//                             with jose and ends every app session of that AMI session (sid) at its next request
// GET  /logouts               what the receiver accepted (for the tests)

import express from 'express';
import { ExpressAuth } from '@auth/express';
import { getToken } from '@auth/core/jwt';
import * as jose from 'jose';

const port = Number(process.argv[2]);
const { AMI_ISSUER, AMI_CLIENT_ID, AMI_CLIENT_SECRET, AUTH_SECRET, APP_URL } = process.env;
const LOGOUT_EVENT = 'http://schemas.openid.net/event/backchannel-logout';

// AMI sessions (sid) ended by back-channel logout; a real deployment keeps this in its shared store (Redis).
const endedSessions = new Set();
const accepted = [];

export const authConfig = {
  secret: AUTH_SECRET,
  trustHost: true,
  basePath: '/auth',
  session: { strategy: 'jwt' },
  providers: [
    {
      id: 'ami',
      name: 'AMI Auth',
      type: 'oidc',
      issuer: AMI_ISSUER,
      clientId: AMI_CLIENT_ID,
      clientSecret: AMI_CLIENT_SECRET,
      checks: ['pkce', 'state', 'nonce'],
      authorization: { params: { scope: 'openid profile email' } },
    },
  ],
  callbacks: {
    async jwt({ token, account, profile }) {
      if (account && profile) {
        // Kept in the app's (encrypted) session cookie: the AMI session it belongs to and the ID token for logout.
        // Auth.js gives its own user id to token.sub without a database; AMI's user id is the ID token's sub.
        token.amiSub = profile.sub;
        token.sid = profile.sid;
        token.amr = profile.amr;
        token.idToken = account.id_token;
      }
      // null ends the Auth.js session: its cookie is cleared and /auth/session answers null.
      if (token.sid && endedSessions.has(token.sid)) return null;
      return token;
    },
    async session({ session, token }) {
      session.user.id = token.amiSub;
      session.amr = token.amr;
      return session;
    },
  },
};

let metadata;
async function discovery() {
  metadata ??= await (await fetch(new URL('.well-known/openid-configuration', AMI_ISSUER + '/'))).json();
  return metadata;
}

const app = express();
app.set('trust proxy', true);
// Mounted at /auth (Express 5): @auth/express derives its basePath from the mount point.
app.use('/auth', ExpressAuth(authConfig));

app.get('/', (req, res) => res.type('html').send('<!doctype html><title>CMS</title><h1>CMS home</h1>'));
app.get('/signed-out', (req, res) => res.type('html').send('<!doctype html><title>CMS</title><h1>Signed out of the CMS</h1>'));

app.get('/logout', async (req, res) => {
  const token = await getToken({ req, secret: AUTH_SECRET, secureCookie: APP_URL.startsWith('https:') });
  const { end_session_endpoint } = await discovery();
  res.clearCookie(APP_URL.startsWith('https:') ? '__Secure-authjs.session-token' : 'authjs.session-token');
  const url = new URL(end_session_endpoint);
  if (token?.idToken) url.searchParams.set('id_token_hint', token.idToken);
  url.searchParams.set('client_id', AMI_CLIENT_ID);
  url.searchParams.set('post_logout_redirect_uri', `${APP_URL}/signed-out`);
  res.redirect(303, url.href);
});

app.post('/backchannel-logout', express.urlencoded({ extended: false }), async (req, res) => {
  try {
    const { jwks_uri } = await discovery();
    // OIDC Back-Channel Logout 1.0 §2.6: validate like an ID token, plus the events claim, and no nonce.
    const { payload } = await jose.jwtVerify(req.body.logout_token, jose.createRemoteJWKSet(new URL(jwks_uri)), {
      issuer: AMI_ISSUER,
      audience: AMI_CLIENT_ID,
      typ: 'logout+jwt',
      requiredClaims: ['iat', 'jti', 'events'],
    });
    if (typeof payload.events?.[LOGOUT_EVENT] !== 'object') throw new Error('no back-channel logout event');
    if ('nonce' in payload) throw new Error('a logout token has no nonce');
    if (!payload.sid) throw new Error('this app ends sessions by sid');
    endedSessions.add(payload.sid);
    accepted.push(payload);
    res.set('Cache-Control', 'no-store').status(200).end();
  } catch (e) {
    res.set('Cache-Control', 'no-store').status(400).json({ error: 'invalid_request', error_description: String(e?.message ?? e) });
  }
});

app.get('/logouts', (req, res) => res.json(accepted));

app.listen(port, '127.0.0.1', () => console.log('READY'));
