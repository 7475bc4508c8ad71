/*
 * Sweep form: a live estimate of configurations × seeds as the fields are typed (the "Count
 * runs" button asks the server, which checks every configuration; this only counts).
 */
(function () {
  "use strict";

  var form = document.getElementById("sweep-form");
  var out = document.getElementById("sweep-estimate");
  if (!form || !out) return;
  var limit = parseInt(out.getAttribute("data-limit"), 10) || 0;

  function field(name) { return form.elements[name]; }

  function seeds() {
    return field("seeds").value.split(",").filter(function (s) { return s.trim() !== ""; }).length;
  }

  function configurations() {
    if (field("method").value !== "grid") return parseInt(field("trials").value, 10) || 0;
    var lines = field("space").value.split("\n").filter(function (l) {
      l = l.trim();
      return l && l.charAt(0) !== "#";
    });
    if (!lines.length) return 0;
    var total = 1;
    lines.forEach(function (line) {
      var rest = line.split("=").slice(1).join("=");
      if (rest.indexOf("..") >= 0) total = NaN; // a range has no grid size
      else total *= rest.split(",").filter(function (v) { return v.trim() !== ""; }).length;
    });
    return total;
  }

  function update() {
    var n = configurations();
    var s = seeds();
    if (isNaN(n)) {
      out.textContent = "A grid needs a list of values on every line (ranges are for searches).";
      return;
    }
    var runs = n * s;
    out.textContent = n + " configuration" + (n === 1 ? "" : "s") + " × " + s + " seed" +
      (s === 1 ? "" : "s") + " = " + runs + " run" + (runs === 1 ? "" : "s") +
      (limit && runs > limit ? ": more than this server allows (" + limit + ")" : "");
  }

  form.addEventListener("input", update);
  form.addEventListener("change", update);
  update();
})();
