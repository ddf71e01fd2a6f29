(function () {
  "use strict";
  // Filter the findings by severity, family and status; the report reads fully without this script.
  var form = document.getElementById("filters");
  if (!form) { return; }
  var findings = Array.prototype.slice.call(document.querySelectorAll(".finding[data-severity]"));
  var rules = Array.prototype.slice.call(document.querySelectorAll(".rule"));
  var count = document.getElementById("filter-count");
  function chosen(name) {
    var set = {};
    form.querySelectorAll("input[name='" + name + "']").forEach(function (box) { set[box.value] = box.checked; });
    return set;
  }
  function apply() {
    var severity = chosen("severity"), family = chosen("family"), status = chosen("status"), shown = 0;
    findings.forEach(function (el) {
      var visible = severity[el.dataset.severity] && family[el.dataset.family] && status[el.dataset.status];
      el.hidden = !visible;
      if (visible) { shown += 1; }
    });
    rules.forEach(function (rule) {
      rule.hidden = rule.querySelector(".finding") !== null && rule.querySelector(".finding:not([hidden])") === null;
    });
    count.textContent = "Showing " + shown + " of " + findings.length + " findings.";
  }
  form.addEventListener("change", apply);
  form.hidden = false;
  apply();
}());
/* Printing from the browser shows every rule's folded documentation. */
window.addEventListener("beforeprint", function () {
  document.querySelectorAll("details").forEach(function (fold) { fold.open = true; });
});
