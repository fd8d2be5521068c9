// The secure dialog's "Test connection" result panel (#test-result, swapped in by htmx). When a test passes,
// the red field errors left by an earlier failed Save or Test no longer describe what is typed: clear them,
// so the page does not show "Connection works" beside an old error.
(function () {
  "use strict";

  function clearFieldErrors(form) {
    form.querySelectorAll(".field.has-error").forEach(function (field) {
      field.classList.remove("has-error");
    });
    form.querySelectorAll("p.error").forEach(function (error) {
      var id = error.id;
      error.remove();
      if (!id) {
        return;
      }
      form.querySelectorAll("[aria-describedby]").forEach(function (input) {
        var rest = input.getAttribute("aria-describedby").split(" ").filter(function (ref) {
          return ref && ref !== id;
        });
        if (rest.length) {
          input.setAttribute("aria-describedby", rest.join(" "));
        } else {
          input.removeAttribute("aria-describedby");
        }
      });
    });
    form.querySelectorAll("[aria-invalid]").forEach(function (input) {
      input.removeAttribute("aria-invalid");
    });
    form.querySelectorAll("[data-form-errors]").forEach(function (box) {
      box.remove();
    });
  }

  document.addEventListener("htmx:afterSwap", function (event) {
    var slot = event.detail && event.detail.target;
    if (!slot || slot.id !== "test-result" || !slot.querySelector('[data-code="ok"]')) {
      return;
    }
    var form = slot.closest("form");
    if (form) {
      clearFieldErrors(form);
    }
  });
})();
