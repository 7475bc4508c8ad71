/*
 * Compare page: one chart per metric, one line per selected run (same colour per run across
 * charts). The data comes with the page (a json_script blob), bucketed on the server.
 */
(function () {
  "use strict";

  var blob = document.getElementById("compare-data");
  var container = document.getElementById("compare-charts");
  if (!blob || !container || typeof Plotly === "undefined") return;
  var runs = JSON.parse(blob.textContent);

  var ORDER = [
    "inner_loss",
    "inner_accuracy",
    "validation_accuracy",
    "validation_loss_before",
    "validation_loss_after",
    "meta_step_size",
  ];
  var TITLES = {
    inner_loss: "Inner loss (training tasks)",
    inner_accuracy: "Inner accuracy (training tasks)",
    validation_accuracy: "Validation accuracy",
    validation_loss_before: "Validation loss before adaptation",
    validation_loss_after: "Validation loss after adaptation",
    meta_step_size: "Outer step size",
  };
  var SKIP = { validation_ci95: true }; // drawn as error bars on validation_accuracy
  var COLORS = ["#2457c5", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#0b7285", "#5c940d", "#e67700"];

  var names = [];
  runs.forEach(function (run) {
    Object.keys(run.series).forEach(function (name) {
      if (!SKIP[name] && run.series[name].steps.length && names.indexOf(name) < 0) names.push(name);
    });
  });
  names.sort(function (a, b) {
    var ia = ORDER.indexOf(a) < 0 ? ORDER.length : ORDER.indexOf(a);
    var ib = ORDER.indexOf(b) < 0 ? ORDER.length : ORDER.indexOf(b);
    return ia - ib || (a < b ? -1 : a > b ? 1 : 0);
  });
  if (!names.length) return;
  container.innerHTML = "";

  // Every box first, then the plots: each chart is drawn at its final width.
  var divs = names.map(function (name) {
    var div = document.createElement("div");
    div.className = "chart";
    div.id = "compare-" + name;
    container.appendChild(div);
    return div;
  });

  names.forEach(function (name, n) {
    var traces = [];
    runs.forEach(function (run, i) {
      var s = run.series[name];
      if (!s || !s.steps.length) return;
      var trace = {
        x: s.steps,
        y: s.values,
        name: run.label,
        mode: s.steps.length < 60 ? "lines+markers" : "lines",
        line: { width: 1.6, color: COLORS[i % COLORS.length] },
        marker: { size: 5 },
      };
      var ci = name === "validation_accuracy" ? run.series.validation_ci95 : null;
      if (ci && ci.steps.length === s.steps.length) {
        trace.error_y = { type: "data", array: ci.values, visible: true, thickness: 1, width: 3 };
      }
      traces.push(trace);
    });
    var div = divs[n];
    Plotly.newPlot(
      div,
      traces,
      {
        title: { text: TITLES[name] || name, font: { size: 14 } },
        margin: { l: 56, r: 16, t: 40, b: 84 },
        xaxis: { title: { text: "meta-iteration" } },
        showlegend: true,
        legend: { orientation: "h", y: -0.4 },
        hovermode: "x",
      },
      { responsive: true, displaylogo: false }
    );
    if (window.ResizeObserver) {
      new ResizeObserver(function () { Plotly.Plots.resize(div); }).observe(div);
    }
  });
})();
