import { AmiApiError, createAmiClient, paginate, unwrap } from "../src/index.js";

/** List the connected accounts that need attention, and raise an OpenAI config's rotation reminder. */
export async function quickstart(baseUrl: string, token: string, openaiConfigId: number): Promise<string[]> {
  const ami = createAmiClient({ baseUrl, token });

  const attention: string[] = [];
  for await (const account of paginate(
    (cursor) => ami.GET("/api/account-manager/accounts", { params: { query: { cursor, limit: 100 } } }),
    (page) => page.accounts,
  )) {
    if (account.status !== "active") attention.push(`${account.label}: ${account.status_reason}`);
    if (account.provider_type === "openai") {
      console.log(account.label, "calls", account.identifiers.base_url ?? "https://api.openai.com");
    }
  }

  try {
    const config = await unwrap(
      ami.PATCH("/api/account-manager/provider-configs/{config_id}", {
        params: { path: { config_id: openaiConfigId } },
        body: { config: { rotation_days: 30 } },
      }),
    );
    if (config.provider_type === "openai") console.log("rotation reminder after", config.config.rotation_days, "days");
  } catch (error) {
    if (error instanceof AmiApiError) console.error(error.code, error.message, error.hint, error.fields);
    throw error;
  }
  return attention;
}
