// The secure dialogs keep nothing in browser storage (their URLs will carry single-use tokens). htmx 2
// writes the current path to sessionStorage ("htmx-current-path-for-history") as soon as it loads, even
// with its history off, so remove it once htmx has run (this script is deferred after it) and after swaps.
(function () {
  "use strict";
  var KEYS = ["htmx-current-path-for-history", "htmx-history-cache"];

  function scrub() {
    try {
      KEYS.forEach(function (key) {
        window.sessionStorage.removeItem(key);
        window.localStorage.removeItem(key);
      });
    } catch (e) {
      // Storage disabled by the browser: nothing was written either.
    }
  }

  scrub();
  document.addEventListener("htmx:afterSettle", scrub);
})();
