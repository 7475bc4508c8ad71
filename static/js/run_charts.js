/*
 * A run's live page: training curves (Plotly) and progress, kept current while it runs.
 *
 * The first request loads each series whole (bucketed on the server to a bounded size); after
 * that, every few seconds, only the points after the last step shown are fetched and appended
 * with Plotly.extendTraces. The same response carries the run's status and progress. Polling
 * stops once the run is finished (and the page reloads once to show results and downloads).
 *
 * The tail request starts TAIL_OVERLAP steps before the newest step shown: the worker may store
 * a validation point for step k just after the training points of step k were read. Points a
 * series already has are skipped, so the overlap never draws anything twice.
 */
(function () {
  "use strict";

  var TAIL_OVERLAP = 2;
  var panel = document.getElementById("run-progress");
  var chartsEl = document.getElementById("charts");
  if (!panel || !chartsEl) return;

  var metricsUrl = panel.dataset.metricsUrl;
  var pollMs = parseInt(panel.dataset.pollMs, 10) || 3000;
  var loadedFinal = panel.dataset.final === "true";

  // What to draw. Series not named here get a chart of their own.
  var CHARTS = [
    { key: "inner_loss", title: "Inner loss (training tasks)", series: ["inner_loss"], y: "loss" },
    { key: "inner_accuracy", title: "Inner accuracy (training tasks)", series: ["inner_accuracy"], y: "accuracy" },
    {
      key: "validation_accuracy",
      title: "Validation accuracy ± 95% CI",
      series: ["validation_accuracy"],
      band: "validation_ci95",
      y: "accuracy",
    },
    {
      key: "validation_loss",
      title: "Validation loss before / after adaptation",
      series: ["validation_loss_before", "validation_loss_after"],
      y: "mean squared error",
    },
    { key: "meta_step_size", title: "Outer step size (annealed)", series: ["meta_step_size"], y: "step size" },
  ];
  var BAND_SERIES = { validation_ci95: true };
  var COLORS = ["#2457c5", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#0b7285"];

  var charts = {}; // chart key -> {div, def, traceOf: {name: index}, bandTraces: [upper, lower]}
  var lastStep = {}; // series name -> last step drawn
  var timer = null;
  var attempts = null;

  function chartFor(name) {
    for (var i = 0; i < CHARTS.length; i++) {
      if (CHARTS[i].series.indexOf(name) >= 0) return CHARTS[i];
    }
    return { key: "other_" + name, title: name, series: [name], y: name, order: CHARTS.length };
  }
  CHARTS.forEach(function (def, i) { def.order = i; });

  function createChart(def) {
    var empty = document.getElementById("charts-empty");
    if (empty) empty.remove();
    var div = document.createElement("div");
    div.className = "chart";
    div.id = "chart-" + def.key;
    div.dataset.points = "0";
    div.style.order = String(def.order); // a chart that appears later still takes its place
    chartsEl.appendChild(div);
    var traces = [];
    var traceOf = {};
    var bandTraces = null;
    if (def.band) {
      // Upper edge (no line), then the lower edge filled up to it: the 95% interval.
      traces.push({ x: [], y: [], mode: "lines", line: { width: 0 }, hoverinfo: "skip", showlegend: false, name: "upper" });
      traces.push({
        x: [], y: [], mode: "lines", line: { width: 0 }, fill: "tonexty",
        fillcolor: "rgba(36, 87, 197, 0.18)", name: "95% CI", hoverinfo: "skip",
      });
      bandTraces = [0, 1];
    }
    def.series.forEach(function (name, i) {
      traceOf[name] = traces.length;
      traces.push({
        // Validation points are sparse (every validation_interval): draw their markers.
        x: [], y: [], name: name, mode: def.key.indexOf("validation") === 0 ? "lines+markers" : "lines",
        line: { width: 1.6, color: COLORS[i % COLORS.length] }, marker: { size: 5 },
      });
    });
    var layout = {
      title: { text: def.title, font: { size: 14 } },
      margin: { l: 56, r: 16, t: 40, b: def.series.length > 1 || def.band ? 84 : 44 },
      xaxis: { title: { text: "meta-iteration" }, zeroline: false },
      yaxis: { title: { text: def.y }, zeroline: false },
      showlegend: def.series.length > 1 || !!def.band,
      legend: { orientation: "h", y: -0.4 },
      hovermode: "x",
      paper_bgcolor: "#fff",
      plot_bgcolor: "#fff",
    };
    Plotly.newPlot(div, traces, layout, { responsive: true, displaylogo: false });
    // A new chart reflows the grid: let every chart follow its box, not only window resizes.
    if (window.ResizeObserver) {
      new ResizeObserver(function () { Plotly.Plots.resize(div); }).observe(div);
    }
    var chart = { div: div, def: def, traceOf: traceOf, bandTraces: bandTraces };
    charts[def.key] = chart;
    return chart;
  }

  // The new points of one series: those after the last step already drawn.
  function freshPoints(name, s) {
    var after = lastStep.hasOwnProperty(name) ? lastStep[name] : null;
    var xs = [];
    var ys = [];
    for (var i = 0; i < s.steps.length; i++) {
      if (after === null || s.steps[i] > after) {
        xs.push(s.steps[i]);
        ys.push(s.values[i]);
      }
    }
    return { x: xs, y: ys };
  }

  function applySeries(series) {
    var names = Object.keys(series).sort();
    var updates = {}; // chart key -> {x: [], y: [], idx: []}
    names.forEach(function (name) {
      if (BAND_SERIES[name]) return;
      var fresh = freshPoints(name, series[name]);
      if (!fresh.x.length) return;
      var def = chartFor(name);
      var chart = charts[def.key] || createChart(def);
      var u = updates[def.key] || (updates[def.key] = { x: [], y: [], idx: [] });
      if (chart.def.band) {
        var ci = {};
        var band = series[chart.def.band];
        if (band) band.steps.forEach(function (step, i) { ci[step] = band.values[i]; });
        var upper = [];
        var lower = [];
        fresh.x.forEach(function (step, i) {
          var v = fresh.y[i];
          var half = ci[step];
          var ok = v !== null && half !== null && half !== undefined;
          upper.push(ok ? v + half : v);
          lower.push(ok ? v - half : v);
        });
        u.x.push(fresh.x.slice(), fresh.x.slice());
        u.y.push(upper, lower);
        u.idx.push(chart.bandTraces[0], chart.bandTraces[1]);
      }
      u.x.push(fresh.x);
      u.y.push(fresh.y);
      u.idx.push(chart.traceOf[name]);
      lastStep[name] = fresh.x[fresh.x.length - 1];
      chart.div.dataset.points = String(parseInt(chart.div.dataset.points, 10) + fresh.x.length);
    });
    Object.keys(updates).forEach(function (key) {
      var u = updates[key];
      Plotly.extendTraces(charts[key].div, { x: u.x, y: u.y }, u.idx);
    });
  }

  function setText(id, text) {
    var el = document.getElementById(id);
    if (el) el.textContent = text;
  }

  function setHidden(id, hidden) {
    var el = document.getElementById(id);
    if (el) el.hidden = hidden;
  }

  function updateState(run) {
    var badge = document.getElementById("run-status");
    if (badge) {
      badge.className = "badge status-" + run.status;
      badge.textContent = run.status_display;
    }
    setHidden("run-unresponsive", !run.unresponsive);
    setHidden("run-cancel-requested", !(run.cancel_requested && !run.is_final));
    var bar = document.getElementById("run-progress-bar");
    if (bar) {
      bar.style.width = run.progress_percent + "%";
      bar.parentNode.classList.toggle("done", run.is_final);
    }
    setText("run-iteration", String(run.iteration));
    setText("run-total", run.total_iterations ? String(run.total_iterations) : "?");
    setText("run-percent", run.progress_percent + " %");
    setText("run-eta", run.eta_display || "");
    setHidden("run-eta-wrap", !run.eta_display);
    if (run.seconds_per_iteration) setText("run-spi", run.seconds_per_iteration.toFixed(3));
    setText("run-worker", run.worker || "—");
    setText("run-attempts", String(run.attempts));
    setText("run-heartbeat", run.heartbeat_display || "—");
    setText("run-device", run.device || "—");
    updateEvaluation(run);
  }

  // The final evaluation as its own phase (progress, rate, ETA), and the Evaluations table's
  // rows as the server renders them, replaced when their number changes.
  function updateEvaluation(run) {
    setHidden("run-eval-phase", !run.evaluating);
    if (run.evaluating) {
      setText("run-eval-done", String(run.eval_tasks_done));
      setText("run-eval-total", String(run.eval_tasks_total));
      setText("run-eval-percent", run.eval_percent + " %");
      setText("run-eval-rate", run.eval_tasks_per_second ? run.eval_tasks_per_second.toFixed(1) : "…");
      setText("run-eval-eta", run.eval_eta_display || "…");
    }
    var rows = document.getElementById("run-evaluation-rows");
    if (rows && typeof run.evaluations_html === "string" &&
        String(run.evaluations_count) !== rows.dataset.count) {
      rows.innerHTML = run.evaluations_html;
      rows.dataset.count = String(run.evaluations_count);
      setHidden("run-evaluations", !run.evaluations_count);
      setHidden("run-evaluations-none", !!run.evaluations_count);
    }
  }

  function tailStart() {
    var steps = Object.keys(lastStep).map(function (k) { return lastStep[k]; });
    if (!steps.length) return null;
    return Math.max.apply(null, steps) - TAIL_OVERLAP;
  }

  function reset() {
    Object.keys(charts).forEach(function (key) {
      Plotly.purge(charts[key].div);
      charts[key].div.remove();
    });
    charts = {};
    lastStep = {};
  }

  function fetchMetrics() {
    var after = tailStart();
    var url = metricsUrl + (after === null ? "" : "?after_step=" + encodeURIComponent(after));
    return fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" }).then(
      function (resp) {
        var type = resp.headers.get("content-type") || "";
        if (!resp.ok || type.indexOf("application/json") < 0) {
          throw new Error("metrics request failed: " + resp.status);
        }
        return resp.json();
      }
    );
  }

  function stop() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    panel.dataset.polling = "false";
  }

  function tick() {
    fetchMetrics()
      .then(function (data) {
        if (attempts !== null && data.run.attempts !== attempts) {
          // A new attempt resumed from a checkpoint and rewrote the steps after it: redraw.
          reset();
          attempts = data.run.attempts;
          return tick();
        }
        attempts = data.run.attempts;
        applySeries(data.series);
        updateState(data.run);
        if (data.run.is_final) {
          stop();
          // Results, evaluations and downloads are rendered by the server: show them.
          if (!loadedFinal) window.setTimeout(function () { window.location.reload(); }, 800);
          return;
        }
        if (!loadedFinal) timer = window.setTimeout(tick, pollMs);
      })
      .catch(function (err) {
        if (window.console) console.warn(err);
        if (!loadedFinal) timer = window.setTimeout(tick, pollMs * 2);
      });
  }

  if (typeof Plotly === "undefined") {
    setText("charts-empty", "The charting library did not load (static/vendor/plotly.min.js).");
    return;
  }
  panel.dataset.polling = loadedFinal ? "false" : "true";
  tick();
})();
