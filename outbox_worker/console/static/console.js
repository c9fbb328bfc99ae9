// The console's only script: the copy button of a secret. Everything else
// is plain links and forms, so the console works with scripts off.
"use strict";
document.addEventListener("click", function (event) {
  var button = event.target.closest("button[data-copy]");
  if (!button) return;
  var field = document.getElementById(button.getAttribute("data-copy"));
  var status = button.parentElement.querySelector(".copied");
  field.select();
  var done = function () { if (status) status.textContent = "Copied"; };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(field.value).then(done, function () {
      if (status) status.textContent = "Select the field and copy it";
    });
  } else if (document.execCommand("copy")) {
    done();
  }
});
