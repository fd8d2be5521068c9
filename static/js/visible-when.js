// Show and hide catalog form fields from their data-visible-when conditions: {"field": ["value", …]}.
// The rules match the server's (app/providers/validation.py visibility): a hidden field counts as blank,
// checkboxes compare as "true"/"false". Hidden fields are also disabled, so the browser does not send
// them; the server ignores hidden fields either way, so this is a convenience, not a control.
(function () {
  "use strict";

  function wrapperOf(form, name) {
    return form.querySelector('div.schema-field[data-field="' + CSS.escape(name) + '"]');
  }

  function valueOf(form, name) {
    var wrapper = wrapperOf(form, name);
    if (wrapper && wrapper.hidden) return "";
    var inputs = form.querySelectorAll('[name="' + CSS.escape(name) + '"]');
    if (!inputs.length) return "";
    var input = inputs[0];
    if (input.type === "checkbox") return input.checked ? "true" : "false";
    if (input.type === "radio") {
      var checked = form.querySelector('[name="' + CSS.escape(name) + '"]:checked');
      return checked ? checked.value : "";
    }
    return (input.value || "").trim();
  }

  function setShown(wrapper, shown) {
    wrapper.hidden = !shown;
    wrapper.querySelectorAll("input, select, textarea").forEach(function (el) {
      el.disabled = !shown;
    });
  }

  function update(form) {
    var wrappers = Array.prototype.slice.call(form.querySelectorAll("div.schema-field[data-visible-when]"));
    // Conditions can chain (A depends on B depends on C): repeat until nothing changes.
    for (var pass = 0; pass <= wrappers.length; pass++) {
      var changed = false;
      wrappers.forEach(function (wrapper) {
        var condition;
        try {
          condition = JSON.parse(wrapper.getAttribute("data-visible-when"));
        } catch (e) {
          return;
        }
        var shown = Object.keys(condition).every(function (name) {
          return condition[name].indexOf(valueOf(form, name)) !== -1;
        });
        if (wrapper.hidden === shown) {
          setShown(wrapper, shown);
          changed = true;
        }
      });
      if (!changed) break;
    }
  }

  function init() {
    document.querySelectorAll("form").forEach(function (form) {
      if (!form.querySelector("div.schema-field[data-visible-when]")) return;
      form.addEventListener("change", function () { update(form); });
      form.addEventListener("input", function () { update(form); });
      update(form);
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
