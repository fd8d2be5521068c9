// The CMS stand-in for tests/e2e/test_cms_dialog.py. Its server holds the service token; this page only
// asks it for a dialog URL (shown in the iframe) and, back from the dialog, for the account snapshots.
"use strict";

function show(accounts) {
  const list = document.getElementById("accounts");
  list.replaceChildren();
  for (const account of accounts) {
    const item = document.createElement("li");
    item.dataset.accountId = String(account.id);
    item.dataset.status = account.status;
    item.textContent = `${account.label} · ${account.provider_type} · ${account.status}`;
    list.append(item);
  }
  list.dataset.loaded = "true";
}

async function main() {
  const params = new URLSearchParams(window.location.search);
  const frame = document.getElementById("dialog");
  if (params.has("status")) {
    frame.remove();
    document.getElementById("outcome").textContent =
      `Dialog ${params.get("status")}` + (params.has("account") ? ` (account ${params.get("account")})` : "");
    const answer = await fetch("/cms/accounts");
    show((await answer.json()).accounts);
    return;
  }
  const answer = await fetch("/cms/dialog", { method: "POST" });
  const dialog = await answer.json();
  frame.src = dialog.url;
}

main();
