/*
 * Compare page: one chart per metric, one line per selected run (same colour per run across
 * charts). The data comes with the page (a json_script blob), bucketed on the server; the
 * smoothing, log-scale, band and zoom behaviour is the run page's (static/js/chart_tools.js):
 * a zoom fetches each run's points of the window from the API and shows it on every chart.
 */
(function () {
  "use strict";

  var blob = document.getElementById("compare-data");
  var container = document.getElementById("compare-charts");
  var T = window.ChartTools;
  if (!blob || !container || typeof Plotly === "undefined" || !T) return;
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
    validation_accuracy: container.dataset.validationTitle || "Validation accuracy",
    validation_loss_before: "Validation loss before adaptation",
    validation_loss_after: "Validation loss after adaptation",
    meta_step_size: "Outer step size",
  };
  var SKIP = { validation_ci95: true }; // drawn as error bars on validation_accuracy
  var UNSMOOTHED = { validation_accuracy: true, meta_step_size: true };
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

  var settings = T.loadSettings();
  var zoom = null; // {from, to, range} on every chart, or null: whole series
  var zoomData = {}; // run id -> series of the zoom window
  var view = 0; // counts zooms and resets: the x axis' uirevision
  var rendering = false;

  // Every box first, then the plots: each chart is drawn at its final width.
  var divs = names.map(function (name) {
    var div = document.createElement("div");
    div.className = "chart";
    div.id = "compare-" + name;
    container.appendChild(div);
    return div;
  });

  function seriesOf(run, name) {
    var source = zoom ? zoomData[run.id] || {} : run.series;
    return source[name];
  }

  function wholeRange() {
    var lists = [];
    runs.forEach(function (run) {
      Object.keys(run.series).forEach(function (name) { lists.push(run.series[name].steps); });
    });
    return T.sharedRange(lists);
  }

  function render(name, div, xRange) {
    var traces = [];
    runs.forEach(function (run, i) {
      var s = seriesOf(run, name);
      if (!s || !s.steps.length) return;
      var runTraces = T.seriesTraces(s, {
        name: run.label,
        color: COLORS[i % COLORS.length],
        smoothing: UNSMOOTHED[name] ? 0 : settings.smoothing,
        band: settings.band,
        markers: s.steps.length < 60,
      });
      var ci = name === "validation_accuracy" ? seriesOf(run, "validation_ci95") : null;
      if (ci && ci.steps.length === s.steps.length) {
        runTraces.forEach(function (trace) {
          if (trace.meta.role === "raw") {
            trace.error_y = { type: "data", array: ci.values, visible: true, thickness: 1, width: 3 };
          }
        });
      }
      traces = traces.concat(runTraces);
    });
    rendering = true;
    Plotly.react(
      div,
      traces,
      {
        title: { text: TITLES[name] || name, font: { size: 14 } },
        margin: { l: 56, r: 16, t: 40, b: 84 },
        xaxis: {
          title: { text: "meta-iteration" }, autorange: !xRange, range: xRange || undefined,
          uirevision: view, // a new view (zoom or reset) overrides the range the user dragged to
        },
        yaxis: {
          type: settings.logY ? "log" : "linear", autorange: true,
          uirevision: view + (settings.logY ? "log" : "linear"),
        },
        showlegend: true,
        legend: { orientation: "h", y: -0.4 },
        hovermode: "x",
        uirevision: "keep",
      },
      T.PLOT_CONFIG
    );
    rendering = false;
  }

  function renderAll() {
    var xRange = zoom ? zoom.range : wholeRange();
    names.forEach(function (name, n) { render(name, divs[n], xRange); });
    container.dataset.zoom = zoom ? zoom.from + "-" + zoom.to : "";
  }

  function zoomTo(win) {
    if (!win) return;
    view += 1;
    if (win.whole) {
      zoom = null;
      zoomData = {};
      renderAll();
      return;
    }
    zoom = win;
    var budget = T.pointBudget(divs[0].clientWidth);
    var wanted = names.concat(["validation_ci95"]);
    Promise.all(
      runs.map(function (run) {
        return T.fetchJson(T.windowUrl(run.metrics_url, wanted, win, budget)).then(function (data) {
          return [run.id, data.series];
        });
      })
    )
      .then(function (answers) {
        if (zoom !== win) return; // a newer zoom or a reset came first
        zoomData = {};
        answers.forEach(function (pair) { zoomData[pair[0]] = pair[1]; });
        renderAll();
      })
      .catch(function (err) {
        if (window.console) console.warn(err);
      });
  }

  var bar = document.getElementById("chart-controls");
  if (bar) {
    settings = T.controls(bar, function (next) {
      settings = next;
      renderAll();
    });
  }
  renderAll();
  divs.forEach(function (div) {
    div.on("plotly_relayout", function (event) {
      if (!rendering) zoomTo(T.zoomWindow(event));
    });
    if (window.ResizeObserver) {
      new ResizeObserver(function () { Plotly.Plots.resize(div); }).observe(div);
    }
  });
})();
