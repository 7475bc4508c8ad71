/*
 * Sweep page: a parallel-coordinates plot of the varied fields against the mean final test
 * accuracy (one line per configuration with a result), and one scatter per field (mean over
 * seeds with its 95% CI across seeds as error bars; the best configuration highlighted).
 * The data comes with the page (a json_script blob); a listed field's values become ticks, a
 * log range gets a log axis.
 */
(function () {
  "use strict";

  var blob = document.getElementById("sweep-chart-data");
  if (!blob || typeof Plotly === "undefined") return;
  var data = JSON.parse(blob.textContent);
  var configs = data.configurations;
  if (!configs.length) return;

  // A listed field's values (strings, booleans) are placed at their index along the axis.
  function axis(field) {
    var raw = configs.map(function (c) { return c.params[field.name]; });
    if (field.values) {
      var labels = field.values.map(function (v) { return String(v); });
      return {
        values: raw.map(function (v) { return labels.indexOf(String(v)); }),
        tickvals: labels.map(function (_, i) { return i; }),
        ticktext: labels,
        categorical: true,
      };
    }
    return {
      values: field.log ? raw.map(function (v) { return Math.log10(v); }) : raw,
      log: field.log,
      raw: raw,
    };
  }

  var percent = configs.map(function (c) { return c.mean * 100; });
  var dims = data.fields.map(function (field) {
    var a = axis(field);
    var dim = { label: field.name + (field.log ? " (log10)" : ""), values: a.values };
    if (a.categorical) {
      dim.tickvals = a.tickvals;
      dim.ticktext = a.ticktext;
      dim.range = [-0.5, a.tickvals.length - 0.5];
    }
    return dim;
  });
  dims.push({ label: "mean test accuracy (%)", values: percent });

  var parcoords = document.getElementById("sweep-parcoords");
  if (parcoords) {
    Plotly.newPlot(
      parcoords,
      [{
        type: "parcoords",
        line: { color: percent, colorscale: "Viridis", showscale: true, colorbar: { title: { text: "%" } } },
        dimensions: dims,
      }],
      { margin: { l: 60, r: 60, t: 40, b: 30 } },
      { responsive: true, displaylogo: false }
    );
  }

  var grid = document.getElementById("sweep-scatters");
  if (!grid) return;
  var divs = data.fields.map(function (field) {
    var div = document.createElement("div");
    div.className = "chart";
    div.id = "sweep-scatter-" + field.name;
    grid.appendChild(div);
    return div;
  });
  data.fields.forEach(function (field, i) {
    var x = configs.map(function (c) { return field.values ? String(c.params[field.name]) : c.params[field.name]; });
    Plotly.newPlot(
      divs[i],
      [{
        type: "scatter",
        mode: "markers",
        x: x,
        y: percent,
        error_y: {
          type: "data",
          array: configs.map(function (c) { return c.ci95 === null ? 0 : c.ci95 * 100; }),
          visible: true,
        },
        marker: {
          size: configs.map(function (c) { return c.best ? 12 : 8; }),
          color: configs.map(function (c) { return c.best ? "#d9480f" : "#2457c5"; }),
        },
        text: configs.map(function (c) { return "experiment #" + c.experiment_id + ", " + c.seeds + " seed(s)"; }),
      }],
      {
        title: { text: field.name },
        xaxis: { title: { text: field.name }, type: field.values ? "category" : field.log ? "log" : "linear" },
        yaxis: { title: { text: "mean test accuracy (%)" } },
        margin: { l: 60, r: 20, t: 40, b: 50 },
        showlegend: false,
      },
      { responsive: true, displaylogo: false }
    );
  });
})();
