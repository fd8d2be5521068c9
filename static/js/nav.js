// The console's navigation folds behind a "Menu" button on narrow screens (static/css/app.css, under 1200 px).
// Without this script the navigation simply stays open: the class that folds it is only set here.
(function () {
  "use strict";

  function setUp() {
    var toggle = document.querySelector(".nav-toggle");
    var header = toggle && toggle.closest(".topbar");
    if (!header) return;
    header.classList.add("nav-collapsible");

    function setOpen(open) {
      toggle.setAttribute("aria-expanded", open ? "true" : "false");
      header.classList.toggle("nav-open", open);
    }

    toggle.addEventListener("click", function () {
      setOpen(toggle.getAttribute("aria-expanded") !== "true");
    });
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && header.classList.contains("nav-open")) {
        setOpen(false);
        toggle.focus();
      }
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setUp);
  else setUp();
})();
