/*
 * Experiment page: one chart per metric, the mean over the experiment's seeds as a line and
 * the band from the lowest to the highest seed (min/max over seeds) shaded around it. The
 * data comes with the page (a json_script blob), bucketed by the server.
 */
(function () {
  "use strict";

  var blob = document.getElementById("experiment-curve-data");
  var container = document.getElementById("experiment-curves");
  if (!blob || !container || typeof Plotly === "undefined") return;
  var curves = JSON.parse(blob.textContent);

  var divs = curves.map(function (c) {
    var div = document.createElement("div");
    div.className = "chart";
    div.id = "experiment-curve-" + c.name;
    container.appendChild(div);
    return div;
  });
  curves.forEach(function (c, i) {
    Plotly.newPlot(
      divs[i],
      [
        { x: c.steps, y: c.high, mode: "lines", line: { width: 0 }, hoverinfo: "skip", showlegend: false },
        {
          x: c.steps, y: c.low, mode: "lines", line: { width: 0 }, fill: "tonexty",
          fillcolor: "rgba(36, 87, 197, 0.18)", name: "min/max over seeds",
        },
        {
          x: c.steps, y: c.mean, mode: "lines", line: { color: "#2457c5" }, name: "mean over seeds",
          text: c.seeds.map(function (n) { return n + " seed(s)"; }),
        },
      ],
      {
        title: { text: c.name },
        xaxis: { title: { text: "meta-iteration" } },
        margin: { l: 60, r: 20, t: 40, b: 50 },
        legend: { orientation: "h" },
      },
      { responsive: true, displaylogo: false }
    );
  });
})();
