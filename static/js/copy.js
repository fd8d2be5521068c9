// Copy buttons: <button type="button" data-copy="ELEMENT-ID">Copy</button> copies that element's text (a
// redirect URI, a one-time token shown once) to the clipboard and says so next to the button.
(function () {
  "use strict";

  // The words come translated from the page: data-msg-* on the button, else on <body> (templates/base.html).
  function message(button, key, fallback) {
    return button.getAttribute("data-msg-" + key) || document.body.getAttribute("data-msg-" + key) || fallback;
  }

  function say(button, text) {
    var status = button.parentNode.querySelector("[data-copy-status]");
    if (!status) {
      status = document.createElement("span");
      status.setAttribute("data-copy-status", "");
      status.setAttribute("role", "status");
      status.className = "copy-status";
      button.insertAdjacentElement("afterend", status);
    }
    status.textContent = text;
  }

  function selectText(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-copy]") : null;
    if (!button) {
      return;
    }
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) {
      return;
    }
    var items = source.querySelectorAll("li");
    var text;
    if (source.tagName === "INPUT" || source.tagName === "TEXTAREA") {
      text = source.value;
    } else if (items.length) {
      // A list (recovery codes): one item a line.
      text = Array.prototype.map.call(items, function (item) { return item.textContent.trim(); }).join("\n");
    } else {
      text = source.textContent.trim();
    }
    if (!navigator.clipboard || !window.isSecureContext) {
      selectText(source);
      say(button, message(button, "copy-select", "Selected: press Ctrl+C (⌘C) to copy."));
      return;
    }
    navigator.clipboard.writeText(text).then(
      function () {
        say(button, message(button, "copied", "Copied."));
      },
      function () {
        selectText(source);
        say(button, message(button, "copy-select", "Selected: press Ctrl+C (⌘C) to copy."));
      }
    );
  });
})();
