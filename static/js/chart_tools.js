/*
 * What the run page and the compare page share about drawing a metric curve (window.ChartTools).
 *
 * Pure functions first (smoothing, bands, ranges, trace building: each tested in the browser
 * test tests/e2e/test_charts_browser.py), then the two pieces that touch the page: the control
 * bar (smoothing slider, log-scale y, min/max band; remembered in localStorage) and the reading
 * of Plotly's zoom events.
 *
 * Why these rules:
 * - At most MAX_DRAWN points per trace: the server buckets whole series to fewer (min, max and
 *   the last value per bucket), and a zoom asks it for the window at about one point per pixel.
 * - Traces longer than GL_AFTER points are drawn with WebGL (scattergl): five SVG paths of a
 *   few thousand points each make a page sluggish to hover and pan.
 * - Smoothing is an exponential moving average, debiased at the start (TensorBoard's rule), so
 *   the first points are not pulled towards zero. Missing values (null: a diverged loss) stay
 *   gaps and do not move the average.
 */
(function () {
  "use strict";

  var MAX_DRAWN = 2000;
  var MIN_DRAWN = 200;
  var GL_AFTER = 1000;
  var STORAGE_KEY = "metatrain.charts";
  var DEFAULTS = { smoothing: 0, logY: false, band: true };

  // Exponential moving average of `values` with weight `smoothing` in [0, 1) on the past.
  function ema(values, smoothing) {
    var s = Math.min(Math.max(Number(smoothing) || 0, 0), 0.999);
    if (s === 0) return values.slice();
    var out = new Array(values.length);
    var last = 0;
    var seen = 0;
    for (var i = 0; i < values.length; i++) {
      var v = values[i];
      if (v === null || v === undefined || !isFinite(v)) {
        out[i] = null;
        continue;
      }
      last = last * s + (1 - s) * v;
      seen += 1;
      out[i] = last / (1 - Math.pow(s, seen));
    }
    return out;
  }

  // The min/max envelope of a bucketed series ({steps, min, max}): null when it has none to
  // show (raw points, where min == max == value everywhere).
  function band(series) {
    if (!series || !series.min || !series.max || series.min.length !== series.steps.length) {
      return null;
    }
    var spread = false;
    for (var i = 0; i < series.steps.length; i++) {
      if (series.min[i] !== series.max[i]) {
        spread = true;
        break;
      }
    }
    if (!spread) return null;
    return { x: series.steps.slice(), lower: series.min.slice(), upper: series.max.slice() };
  }

  // One x range for every chart of a page: from the smallest first step to the largest last
  // step over all `stepLists`. A lone step gets a range around it that still starts at 0 for
  // positive steps (a single validation point at 100 reads [0, 105], not [99, 101]).
  function sharedRange(stepLists) {
    var lo = Infinity;
    var hi = -Infinity;
    stepLists.forEach(function (steps) {
      if (!steps || !steps.length) return;
      lo = Math.min(lo, steps[0]);
      hi = Math.max(hi, steps[steps.length - 1]);
    });
    if (lo === Infinity) return null;
    if (lo === hi) {
      var pad = Math.max(1, Math.abs(hi) * 0.05);
      return [lo > 0 ? 0 : lo - pad, hi + pad];
    }
    return [lo, hi];
  }

  // How many points to ask the server for a chart `width` pixels wide: about one per pixel.
  function pointBudget(width) {
    var w = Math.round(Number(width) || 0);
    return Math.min(MAX_DRAWN, Math.max(MIN_DRAWN, w));
  }

  function traceType(length) {
    return length > GL_AFTER ? "scattergl" : "scatter";
  }

  function rgba(hex, alpha) {
    var n = parseInt(hex.slice(1), 16);
    return "rgba(" + ((n >> 16) & 255) + ", " + ((n >> 8) & 255) + ", " + (n & 255) + ", " + alpha + ")";
  }

  /*
   * The traces of one series: its min/max band (when bucketed and opts.band), the raw curve
   * (faint when smoothed), and the smoothed curve. opts: {name, color, smoothing, band, markers,
   * legendgroup}. Every trace carries meta.role ("band-upper", "band-lower", "raw", "smoothed")
   * so tests and callers can find them.
   */
  function seriesTraces(series, opts) {
    var n = series.steps.length;
    var type = traceType(n);
    var group = opts.legendgroup || opts.name;
    var traces = [];
    var envelope = opts.band ? band(series) : null;
    if (envelope) {
      traces.push({
        type: type, x: envelope.x, y: envelope.upper, mode: "lines", line: { width: 0, color: opts.color },
        hoverinfo: "skip", showlegend: false, legendgroup: group, meta: { role: "band-upper", series: opts.name },
      });
      traces.push({
        type: type, x: envelope.x, y: envelope.lower, mode: "lines", line: { width: 0, color: opts.color },
        fill: "tonexty", fillcolor: rgba(opts.color, 0.16), hoverinfo: "skip", showlegend: false,
        legendgroup: group, meta: { role: "band-lower", series: opts.name },
      });
    }
    var smoothed = opts.smoothing > 0;
    var mode = opts.markers ? "lines+markers" : "lines";
    traces.push({
      type: type, x: series.steps, y: series.values, name: opts.name, mode: mode,
      line: { width: smoothed ? 1 : 1.6, color: smoothed ? rgba(opts.color, 0.3) : opts.color },
      marker: { size: 5, color: smoothed ? rgba(opts.color, 0.3) : opts.color },
      showlegend: !smoothed, legendgroup: group, hoverinfo: smoothed ? "skip" : undefined,
      meta: { role: "raw", series: opts.name },
    });
    if (smoothed) {
      traces.push({
        type: type, x: series.steps, y: ema(series.values, opts.smoothing), name: opts.name,
        mode: mode, line: { width: 1.8, color: opts.color }, marker: { size: 5 },
        legendgroup: group, meta: { role: "smoothed", series: opts.name },
      });
    }
    return traces;
  }

  /*
   * A zoom or reset from a plotly_relayout event: {from, to} (whole steps, widened outwards)
   * for an x range, {whole: true} for autorange (a double click), null for anything else
   * (a y-only change, a legend click, a resize).
   */
  function zoomWindow(event) {
    if (!event) return null;
    if (event["xaxis.autorange"] === true) return { whole: true };
    var x0 = event["xaxis.range[0]"];
    var x1 = event["xaxis.range[1]"];
    if (x0 === undefined && Array.isArray(event["xaxis.range"])) {
      x0 = event["xaxis.range"][0];
      x1 = event["xaxis.range"][1];
    }
    if (x0 === undefined || x1 === undefined) return null;
    var lo = Math.min(Number(x0), Number(x1));
    var hi = Math.max(Number(x0), Number(x1));
    if (!isFinite(lo) || !isFinite(hi)) return null;
    return { from: Math.floor(lo), to: Math.ceil(hi), range: [lo, hi] };
  }

  function loadSettings() {
    var saved = {};
    try {
      saved = JSON.parse(window.localStorage.getItem(STORAGE_KEY) || "{}") || {};
    } catch (err) {
      saved = {}; // storage disabled or garbage: the defaults
    }
    var s = Number(saved.smoothing);
    return {
      smoothing: isFinite(s) && s >= 0 && s < 1 ? s : DEFAULTS.smoothing,
      logY: typeof saved.logY === "boolean" ? saved.logY : DEFAULTS.logY,
      band: typeof saved.band === "boolean" ? saved.band : DEFAULTS.band,
    };
  }

  function saveSettings(settings) {
    try {
      window.localStorage.setItem(STORAGE_KEY, JSON.stringify(settings));
    } catch (err) {
      // Private mode or full storage: the setting lasts for this page only.
    }
  }

  /*
   * The control bar above a page's charts: fills `bar` (an element already in the template)
   * and calls onChange(settings) after every change, once the new settings are saved.
   */
  function controls(bar, onChange) {
    var settings = loadSettings();
    bar.innerHTML =
      '<label class="chart-control">Smoothing <input type="range" min="0" max="0.99" step="0.01" ' +
      'class="chart-smoothing"> <output class="chart-smoothing-value"></output></label>' +
      '<label class="chart-control"><input type="checkbox" class="chart-log"> Log-scale y</label>' +
      '<label class="chart-control"><input type="checkbox" class="chart-band"> Min/max band</label>' +
      '<span class="chart-hint">Drag to zoom (finer data is fetched), double-click to reset.</span>';
    var slider = bar.querySelector(".chart-smoothing");
    var shown = bar.querySelector(".chart-smoothing-value");
    var log = bar.querySelector(".chart-log");
    var bandBox = bar.querySelector(".chart-band");
    slider.value = String(settings.smoothing);
    shown.textContent = settings.smoothing.toFixed(2);
    log.checked = settings.logY;
    bandBox.checked = settings.band;
    function changed() {
      settings = {
        smoothing: parseFloat(slider.value) || 0,
        logY: log.checked,
        band: bandBox.checked,
      };
      shown.textContent = settings.smoothing.toFixed(2);
      saveSettings(settings);
      onChange(settings);
    }
    slider.addEventListener("input", changed);
    log.addEventListener("change", changed);
    bandBox.addEventListener("change", changed);
    return settings;
  }

  function fetchJson(url) {
    return fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" }).then(
      function (resp) {
        var type = resp.headers.get("content-type") || "";
        if (!resp.ok || type.indexOf("application/json") < 0) {
          throw new Error("request failed: " + resp.status + " " + url);
        }
        return resp.json();
      }
    );
  }

  // The API's URL for a window of some series: GET /api/runs/{id}/metrics?names=&from_step=...
  function windowUrl(metricsApiUrl, names, win, maxPoints) {
    return (
      metricsApiUrl +
      "?names=" + encodeURIComponent(names.join(",")) +
      "&from_step=" + encodeURIComponent(win.from) +
      "&to_step=" + encodeURIComponent(win.to) +
      "&max_points=" + encodeURIComponent(maxPoints)
    );
  }

  // A double click always goes back to the whole series (the pages then fetch it), never to a
  // remembered first range.
  var PLOT_CONFIG = { responsive: true, displaylogo: false, doubleClick: "autosize" };

  window.ChartTools = {
    PLOT_CONFIG: PLOT_CONFIG,
    MAX_DRAWN: MAX_DRAWN,
    GL_AFTER: GL_AFTER,
    STORAGE_KEY: STORAGE_KEY,
    ema: ema,
    band: band,
    sharedRange: sharedRange,
    pointBudget: pointBudget,
    traceType: traceType,
    rgba: rgba,
    seriesTraces: seriesTraces,
    zoomWindow: zoomWindow,
    loadSettings: loadSettings,
    saveSettings: saveSettings,
    controls: controls,
    fetchJson: fetchJson,
    windowUrl: windowUrl,
  };
})();
