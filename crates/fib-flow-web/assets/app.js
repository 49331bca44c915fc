// fib-flow dashboard: the only script. No dependencies, nothing required: every page and
// action works without it.
(function () {
  "use strict";

  // Auto-refresh on pages that offer it (overview, task, workflow), remembered per browser.
  var refreshSeconds = Number(document.body.dataset.refresh || 0);
  var box = document.getElementById("auto-refresh");
  if (refreshSeconds > 0 && box) {
    box.checked = localStorage.getItem("fib-flow-refresh") === "on";
    var timer = null;
    var schedule = function () {
      clearTimeout(timer);
      if (box.checked) {
        timer = setTimeout(function () { location.reload(); }, refreshSeconds * 1000);
      }
    };
    box.addEventListener("change", function () {
      localStorage.setItem("fib-flow-refresh", box.checked ? "on" : "off");
      schedule();
    });
    schedule();
  }

  // Filter selects apply as soon as they change.
  document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });

  // Instants are rendered in UTC; show the local time on hover.
  document.querySelectorAll("time[datetime]").forEach(function (element) {
    var date = new Date(element.getAttribute("datetime"));
    if (!isNaN(date)) { element.title = date.toLocaleString(); }
  });
})();
