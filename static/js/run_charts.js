/*
 * A run's live page: training curves (Plotly, drawn with static/js/chart_tools.js) and
 * progress, kept current while it runs.
 *
 * The first request loads each series whole (bucketed on the server to at most 1,500 points,
 * with each bucket's min and max); after that, every few seconds, only the points after the last
 * step held are fetched and appended, and the charts are redrawn from what the page holds. A
 * series that grows past ChartTools.MAX_DRAWN points is fetched whole (bucketed) again, so no
 * trace ever draws more. The same response carries the run's status and progress. Polling stops
 * once the run is finished (and the page reloads once to show results and downloads).
 *
 * Zoom: dragging over a chart asks the API for the window's points of every series, at about
 * one per pixel (GET /api/runs/{id}/metrics?from_step&to_step&max_points), and shows that window
 * on every chart (one x range for the whole page); a double click goes back to the whole series.
 *
 * The tail request starts TAIL_OVERLAP steps before the newest step held: the worker may store
 * a validation point for step k just after the training points of step k were read. Points a
 * series already has are skipped, so the overlap never draws anything twice.
 */
(function () {
  "use strict";

  var TAIL_OVERLAP = 2;
  var panel = document.getElementById("run-progress");
  var chartsEl = document.getElementById("charts");
  if (!panel || !chartsEl) return;
  var T = window.ChartTools;

  var metricsUrl = panel.dataset.metricsUrl;
  var windowApiUrl = chartsEl.dataset.metricsApiUrl;
  var pollMs = parseInt(panel.dataset.pollMs, 10) || 3000;
  var loadedFinal = panel.dataset.final === "true";

  // What to draw. Series not named here get a chart of their own. The periodic evaluation's
  // title says which classes it uses (the server decides from the run's config).
  var CHARTS = [
    { key: "inner_loss", title: "Inner loss (training tasks)", series: ["inner_loss"], y: "loss" },
    { key: "inner_accuracy", title: "Inner accuracy (training tasks)", series: ["inner_accuracy"], y: "accuracy" },
    {
      key: "validation_accuracy",
      title: (chartsEl.dataset.validationTitle || "Validation accuracy") + " ± 95% CI",
      series: ["validation_accuracy"],
      ci: "validation_ci95",
      y: "accuracy",
      markers: true,
      smooth: false, // a few evaluations of many tasks each: nothing to smooth
    },
    {
      key: "validation_loss",
      title: "Validation loss before / after adaptation",
      series: ["validation_loss_before", "validation_loss_after"],
      y: "mean squared error",
      markers: true,
    },
    { key: "meta_step_size", title: "Outer step size (annealed)", series: ["meta_step_size"], y: "step size", smooth: false },
  ];
  var CI_SERIES = { validation_ci95: true };
  var COLORS = ["#2457c5", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#0b7285"];

  var charts = {}; // chart key -> {div, def}
  var store = {}; // series name -> {steps, values, min, max}: whole (bucketed) + live tail
  var lastStep = {}; // series name -> last step held
  var zoom = null; // {from, to, range} shown on every chart, or null: the whole run
  var zoomData = {}; // series name -> the zoom window's points, from the API
  var view = 0; // counts zooms and resets: the x axis' uirevision
  var needWhole = false; // a series outgrew MAX_DRAWN: fetch everything bucketed again
  var settings = T.loadSettings();
  var timer = null;
  var attempts = null;

  function chartFor(name) {
    for (var i = 0; i < CHARTS.length; i++) {
      if (CHARTS[i].series.indexOf(name) >= 0) return CHARTS[i];
    }
    var def = { key: "other_" + name, title: name, series: [name], y: name, order: CHARTS.length };
    CHARTS.push(def);
    return def;
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
    var chart = { div: div, def: def, drawn: false };
    charts[def.key] = chart;
    return chart;
  }

  // The 95% interval around an evaluation curve, as an upper edge and a lower edge filled to it.
  function ciTraces(values, ci, color) {
    if (!values || !ci || !ci.steps.length) return [];
    var half = {};
    ci.steps.forEach(function (step, i) { half[step] = ci.values[i]; });
    var upper = [];
    var lower = [];
    values.steps.forEach(function (step, i) {
      var v = values.values[i];
      var h = half[step];
      var ok = v !== null && h !== null && h !== undefined;
      upper.push(ok ? v + h : v);
      lower.push(ok ? v - h : v);
    });
    var type = T.traceType(values.steps.length);
    return [
      { type: type, x: values.steps, y: upper, mode: "lines", line: { width: 0 }, hoverinfo: "skip",
        showlegend: false, name: "upper", meta: { role: "ci-upper" } },
      { type: type, x: values.steps, y: lower, mode: "lines", line: { width: 0 }, fill: "tonexty",
        fillcolor: T.rgba(color, 0.18), name: "95% CI", hoverinfo: "skip", meta: { role: "ci-lower" } },
    ];
  }

  function wholeRange() {
    return T.sharedRange(Object.keys(store).map(function (name) { return store[name].steps; }));
  }

  function render(chart, xRange) {
    var def = chart.def;
    var source = zoom ? zoomData : store;
    var traces = [];
    if (def.ci) traces = traces.concat(ciTraces(source[def.series[0]], source[def.ci], COLORS[0]));
    var held = 0;
    def.series.forEach(function (name, i) {
      var s = source[name];
      if (store[name]) held += store[name].steps.length;
      if (!s || !s.steps.length) return;
      traces = traces.concat(
        T.seriesTraces(s, {
          name: name,
          color: COLORS[i % COLORS.length],
          smoothing: def.smooth === false ? 0 : settings.smoothing,
          band: settings.band,
          markers: !!def.markers,
        })
      );
    });
    var legend = def.series.length > 1 || !!def.ci;
    var layout = {
      title: { text: def.title, font: { size: 14 } },
      margin: { l: 56, r: 16, t: 40, b: legend ? 84 : 44 },
      xaxis: {
        title: { text: "meta-iteration" }, zeroline: false, autorange: !xRange, range: xRange || undefined,
        uirevision: view, // a new view (zoom or reset) overrides the range the user dragged to
      },
      yaxis: {
        title: { text: def.y }, zeroline: false, type: settings.logY ? "log" : "linear", autorange: true,
        uirevision: view + (settings.logY ? "log" : "linear"),
      },
      showlegend: legend,
      legend: { orientation: "h", y: -0.4 },
      hovermode: "x",
      paper_bgcolor: "#fff",
      plot_bgcolor: "#fff",
      uirevision: "keep", // legend clicks survive redraws
    };
    chart.rendering = true;
    Plotly.react(chart.div, traces, layout, T.PLOT_CONFIG);
    chart.rendering = false;
    chart.div.dataset.points = String(held);
    if (!chart.drawn) {
      chart.drawn = true;
      chart.div.on("plotly_relayout", function (event) {
        if (!chart.rendering) zoomTo(T.zoomWindow(event));
      });
      // A new chart reflows the grid: let every chart follow its box, not only window resizes.
      if (window.ResizeObserver) {
        new ResizeObserver(function () { Plotly.Plots.resize(chart.div); }).observe(chart.div);
      }
    }
  }

  function renderAll() {
    var xRange = zoom ? zoom.range : wholeRange();
    Object.keys(charts).forEach(function (key) { render(charts[key], xRange); });
    chartsEl.dataset.zoom = zoom ? zoom.from + "-" + zoom.to : "";
  }

  // A zoom on any chart shows that window on all of them, at the window's own resolution.
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
    var names = Object.keys(store);
    var first = charts[Object.keys(charts)[0]];
    var budget = T.pointBudget(first ? first.div.clientWidth : 0);
    chartsEl.dataset.zoomLoading = "true";
    T.fetchJson(T.windowUrl(windowApiUrl, names, win, budget))
      .then(function (data) {
        if (zoom !== win) return; // a newer zoom or a reset came first
        zoomData = data.series;
        renderAll();
      })
      .catch(function (err) {
        if (window.console) console.warn(err);
      })
      .then(function () { chartsEl.dataset.zoomLoading = "false"; });
  }

  // The new points of one series: those after the last step already held.
  function freshPoints(name, s) {
    var after = lastStep.hasOwnProperty(name) ? lastStep[name] : null;
    var fresh = { steps: [], values: [], min: [], max: [] };
    for (var i = 0; i < s.steps.length; i++) {
      if (after === null || s.steps[i] > after) {
        fresh.steps.push(s.steps[i]);
        fresh.values.push(s.values[i]);
        fresh.min.push(s.min ? s.min[i] : s.values[i]);
        fresh.max.push(s.max ? s.max[i] : s.values[i]);
      }
    }
    return fresh;
  }

  function applySeries(series) {
    var changed = false;
    Object.keys(series).sort().forEach(function (name) {
      var fresh = freshPoints(name, series[name]);
      if (!fresh.steps.length) return;
      changed = true;
      var held = store[name] || (store[name] = { steps: [], values: [], min: [], max: [] });
      // New arrays, not pushes: the drawn traces hold the old ones, and must not grow with them.
      ["steps", "values", "min", "max"].forEach(function (key) {
        held[key] = held[key].concat(fresh[key]);
      });
      lastStep[name] = fresh.steps[fresh.steps.length - 1];
      if (held.steps.length > T.MAX_DRAWN) needWhole = true;
      if (CI_SERIES[name]) return;
      var def = chartFor(name);
      if (!charts[def.key]) createChart(def);
    });
    // Too many points held: draw nothing of them, the caller fetches the series whole again.
    if (changed && !needWhole) renderAll();
  }

  function setText(id, text) {
    var el = document.getElementById(id);
    if (el) el.textContent = text;
  }

  function setHidden(id, hidden) {
    var el = document.getElementById(id);
    if (el) el.hidden = hidden;
  }

  // The server's format_duration (webapp/experiments/views/runs.py), for the ticking ETA.
  function formatDuration(seconds) {
    var s = Math.round(seconds);
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60);
    s = s % 60;
    if (m < 60) return m + " min " + (s < 10 ? "0" : "") + s + " s";
    var h = Math.floor(m / 60);
    m = m % 60;
    if (h < 48) return h + " h " + (m < 10 ? "0" : "") + m + " min";
    return Math.floor(h / 24) + " d " + (h % 24) + " h";
  }

  /*
   * The ETA counts down every second from the server's estimate. The server computes it from
   * the iterations left, so while the iteration stands still (a periodic validation) its answer
   * does not move: the countdown is re-anchored only when the iteration advances, not frozen.
   * That estimate leaves out validation time, so it may rise again once training resumes.
   */
  var eta = { iteration: null, seconds: null, at: 0, timer: null };

  function drawEta() {
    if (eta.seconds === null) return;
    var left = Math.max(0, eta.seconds - (Date.now() - eta.at) / 1000);
    setText("run-eta", formatDuration(left));
  }

  function showEta(run) {
    var known = run.eta_seconds !== null && run.eta_seconds !== undefined && !run.is_final;
    if (!known) {
      eta.seconds = null;
      eta.iteration = null;
      if (eta.timer !== null) clearInterval(eta.timer);
      eta.timer = null;
      setText("run-eta", run.eta_display || "");
      setHidden("run-eta-wrap", !run.eta_display);
      return;
    }
    // An unresponsive run (no heartbeat) is not counting down: show the server's estimate as is.
    if (eta.iteration !== run.iteration || eta.seconds === null || run.unresponsive) {
      eta.iteration = run.iteration;
      eta.seconds = run.eta_seconds;
      eta.at = Date.now();
    }
    setHidden("run-eta-wrap", false);
    drawEta();
    if (eta.timer === null) eta.timer = setInterval(drawEta, 1000);
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
    showEta(run);
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

  // Forget every point held (the charts stay, and are redrawn from the next answer).
  function reset() {
    store = {};
    lastStep = {};
    needWhole = false;
  }

  function fetchMetrics() {
    var after = tailStart();
    var url = metricsUrl + (after === null ? "" : "?after_step=" + encodeURIComponent(after));
    return T.fetchJson(url);
  }

  function stop() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    panel.dataset.polling = "false";
  }

  function tick() {
    if (needWhole) reset();
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
        if (needWhole) return tick(); // bucketed on the server again, at once
        chartsEl.dataset.loaded = "true";
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

  if (typeof Plotly === "undefined" || !T) {
    setText("charts-empty", "The charting library did not load (static/vendor/plotly.min.js).");
    return;
  }
  var bar = document.getElementById("chart-controls");
  if (bar) {
    settings = T.controls(bar, function (next) {
      settings = next;
      renderAll();
    });
  }
  panel.dataset.polling = loadedFinal ? "false" : "true";
  tick();
})();
