// WebAuthn ceremonies for forms marked data-webauthn="register" | "authenticate".
// The server sends the options as JSON, the browser's own parsers turn them into a request, the result goes
// back as JSON (credential.toJSON()) with the page's CSRF token, and the server answers with where to go next.
(function () {
  "use strict";

  function csrfToken() {
    var headers = document.body.getAttribute("hx-headers");
    if (!headers) {
      return "";
    }
    try {
      return JSON.parse(headers)["X-CSRFToken"] || "";
    } catch (err) {
      return "";
    }
  }

  function supported() {
    return (
      typeof window.PublicKeyCredential === "function" &&
      typeof PublicKeyCredential.parseCreationOptionsFromJSON === "function" &&
      typeof PublicKeyCredential.parseRequestOptionsFromJSON === "function"
    );
  }

  // The words come translated from the page: data-msg-* on the form's [data-webauthn-error] box
  // (templates/macros/forms.html, webauthn_messages); English when a page has none.
  function text(form, key, fallback, values) {
    var box = form && form.querySelector("[data-webauthn-error]");
    var message = (box && box.getAttribute("data-msg-" + key)) || fallback;
    Object.keys(values || {}).forEach(function (name) {
      message = message.split("{" + name + "}").join(values[name]);
    });
    return message;
  }

  // Errors from the server come in the app's taxonomy: {"error": {"code", "message", "hint", "fields"}}.
  function ServerError(body) {
    var error = (body && body.error) || {};
    this.name = "ServerError";
    this.code = error.code || "internal_error";
    this.fields = error.fields || {};
    this.message = [error.message, error.hint].filter(Boolean).join(" ");
  }

  async function postJSON(url, payload) {
    var response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "X-CSRFToken": csrfToken()
      },
      body: JSON.stringify(payload || {})
    });
    var body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      throw new ServerError(body);
    }
    return body;
  }

  function browserMessage(form, err) {
    if (err && err.name === "NotAllowedError") {
      return text(form, "cancelled", "The passkey prompt was cancelled or timed out. Try again when you are ready.");
    }
    if (err && err.name === "InvalidStateError") {
      return text(form, "registered", "This authenticator is already registered to your account.");
    }
    if (err && err.name === "SecurityError") {
      // WebAuthn's relying party id must be a domain name: on an IP address every ceremony fails.
      if (/^[0-9.]+$/.test(location.hostname) || location.hostname.indexOf(":") !== -1 ||
          location.hostname.charAt(0) === "[") {
        var local = location.protocol + "//localhost" + (location.port ? ":" + location.port : "");
        return text(
          form,
          "ip-address",
          "Passkeys need a domain name, and this page is open at an IP address ({host}). Open the site at {url} " +
            "instead, with AMI_AUTH_BASE_URL set to that address.",
          { host: location.hostname, url: local }
        );
      }
      return text(
        form,
        "address",
        "Passkeys cannot be used from this address. Open the site at its configured URL (AMI_AUTH_BASE_URL)."
      );
    }
    return text(form, "unusable", "The passkey could not be used ({reason}). Try again.", {
      reason: (err && err.name) || "error"
    });
  }

  function setError(form, message) {
    var box = form.querySelector("[data-webauthn-error]");
    if (!box) {
      return;
    }
    box.textContent = message || "";
    box.hidden = !message;
  }

  // Passkey autofill (WebAuthn L3 conditional mediation): the email field offers the user's passkeys in its
  // autofill list; picking one signs in. Only one WebAuthn request may be pending, so the explicit passkey
  // button aborts this one before it starts its own.
  var autofillRequest = null;

  async function startAutofill(form) {
    if (
      !supported() ||
      typeof PublicKeyCredential.isConditionalMediationAvailable !== "function" ||
      !(await PublicKeyCredential.isConditionalMediationAvailable())
    ) {
      return;
    }
    var controller = new AbortController();
    autofillRequest = controller;
    try {
      var options = await postJSON(form.getAttribute("data-options-url"), {});
      var credential = await navigator.credentials.get({
        publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options.publicKey),
        mediation: "conditional",
        signal: controller.signal
      });
      if (controller.signal.aborted) {
        return;
      }
      var result = await postJSON(
        form.getAttribute("data-verify-url") + (form.getAttribute("data-verify-url").indexOf("?") < 0 ? "?" : "&") + "ui=autofill",
        { credential: credential.toJSON() }
      );
      window.location.assign(result.redirect);
    } catch (err) {
      if (controller.signal.aborted) {
        return;
      }
      if (err instanceof ServerError) {
        setError(form, err.message || text(form, "failed", "Something went wrong. Try again."));
      }
      // Anything else (the list dismissed, no passkey chosen) leaves the page as it is: the password and the
      // passkey button still work.
    } finally {
      if (autofillRequest === controller) {
        autofillRequest = null;
      }
    }
  }

  function stopAutofill() {
    if (autofillRequest) {
      autofillRequest.abort();
      autofillRequest = null;
    }
  }

  async function run(form) {
    var mode = form.getAttribute("data-webauthn");
    stopAutofill();
    var nameInput = form.querySelector("[data-webauthn-name]");
    var extra = nameInput ? { name: nameInput.value } : {};
    // Checkboxes sent with the result, e.g. "Trust this browser" at the second step.
    form.querySelectorAll("input[type=checkbox][data-webauthn-flag]").forEach(function (box) {
      extra[box.name] = box.checked;
    });
    var button = form.querySelector("button[type=submit]");
    setError(form, "");
    if (!supported()) {
      setError(form, text(form, "unsupported", "This browser does not support passkeys. Update it, or use another way to sign in."));
      return;
    }
    if (button) {
      button.disabled = true;
    }
    try {
      var options = await postJSON(form.getAttribute("data-options-url"), extra);
      var credential;
      try {
        if (mode === "register") {
          credential = await navigator.credentials.create({
            publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(options.publicKey)
          });
        } else {
          credential = await navigator.credentials.get({
            publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options.publicKey)
          });
        }
      } catch (err) {
        setError(form, browserMessage(form, err));
        return;
      }
      var result = await postJSON(
        form.getAttribute("data-verify-url"),
        Object.assign({ credential: credential.toJSON() }, extra)
      );
      window.location.assign(result.redirect);
    } catch (err) {
      if (err instanceof ServerError) {
        setError(form, (err.fields && err.fields.name) || err.message || text(form, "failed", "Something went wrong. Try again."));
      } else {
        setError(form, text(form, "offline", "The server could not be reached. Check your connection and try again."));
      }
    } finally {
      if (button) {
        button.disabled = false;
      }
    }
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-webauthn")) {
      return;
    }
    event.preventDefault();
    run(form);
  });

  function init() {
    // The buttons come disabled: a click before this script has run would submit the form as a plain GET
    // and reload the page without a ceremony (and without its query, so the sign-in's next step too).
    document.querySelectorAll("form[data-webauthn] button[data-webauthn-ready]").forEach(function (button) {
      button.disabled = false;
    });
    var form = document.querySelector("form[data-webauthn-autofill]");
    if (form && document.querySelector('input[autocomplete~="webauthn"]')) {
      startAutofill(form);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
