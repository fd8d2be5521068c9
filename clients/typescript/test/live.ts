/** What the pytest fixture (tests/integration/test_typescript_client.py) tells the tests about the live app. */
import { createAmiClient, type AmiClient, type AmiClientOptions } from "../src/index.js";

function required(name: string): string {
  const value = process.env[name];
  if (value === undefined || value === "") throw new Error(`${name} is not set: run these tests through pytest`);
  return value;
}

export const live = {
  baseUrl: required("AMI_BASE_URL"),
  tightBaseUrl: required("AMI_TIGHT_BASE_URL"),
  token: required("AMI_TOKEN"),
  narrowToken: required("AMI_NARROW_TOKEN"),
  sessionCookie: required("AMI_SESSION_COOKIE"),
  otherSessionId: required("AMI_OTHER_SESSION_ID"),
  cmsOrigin: required("AMI_CMS_ORIGIN"),
  adminId: Number(required("AMI_ADMIN_ID")),
  memberId: Number(required("AMI_MEMBER_ID")),
  ssoUserId: Number(required("AMI_SSO_USER_ID")),
  openaiConfigId: Number(required("AMI_OPENAI_CONFIG_ID")),
  accountCount: Number(required("AMI_ACCOUNT_COUNT")),
  userCount: Number(required("AMI_USER_COUNT")),
};

/** A client with the full-scope service token (the CMS server). */
export function tokenClient(options: Partial<AmiClientOptions> = {}): AmiClient {
  return createAmiClient({ baseUrl: live.baseUrl, token: live.token, ...options });
}

/**
 * What a browser on the CMS origin does with `credentials: "include"`: it sends its cookies (starting with the
 * signed-in admin's session, keeping what the server sets) and its Origin.
 */
export function cookieFetch(log?: Request[]): (request: Request) => Promise<Response> {
  const jar = new Map<string, string>([["ami_session", live.sessionCookie]]);
  return async (request: Request) => {
    log?.push(request.clone());
    const headers = new Headers(request.headers);
    headers.set("Cookie", [...jar].map(([name, value]) => `${name}=${value}`).join("; "));
    headers.set("Origin", live.cmsOrigin);
    const response = await fetch(new Request(request, { headers }));
    for (const cookie of response.headers.getSetCookie()) {
      const [pair = ""] = cookie.split(";");
      const at = pair.indexOf("=");
      if (at > 0) jar.set(pair.slice(0, at).trim(), pair.slice(at + 1).trim());
    }
    return response;
  };
}

let counter = 0;
/** A name no other test used. */
export function unique(prefix: string): string {
  counter += 1;
  return `${prefix} ${process.pid}-${Date.now()}-${counter}`;
}
