/*
 * "Try the initialization" on a succeeded run's page (templates/experiments/_tryit_*.html).
 *
 * Sine runs: a random task's K points, placed or moved by clicking on either plot; after every
 * change the server adapts the trained initialization and the run's random start to the points
 * (POST /api/runs/{id}/try/sine) and both fits are drawn after 0, 1 and 32 steps.
 *
 * Omniglot runs: N x K boxes to draw in (or fill with uploaded PNG/JPEG files) and a query box;
 * "Classify" sends them as data: URLs (POST /api/runs/{id}/try/omniglot) and shows each class's
 * probability for both networks. Uploaded files are sent as they are, so the server checks and
 * names a bad one; drawings are sent as PNGs of the canvas (black ink on white).
 */
(function () {
  "use strict";

  function csrfToken(section) {
    var input = section.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function call(section, method, url, body) {
    var options = {
      method: method,
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.headers["X-CSRFToken"] = csrfToken(section);
      options.body = JSON.stringify(body);
    }
    return fetch(url, options).then(function (response) {
      return response
        .json()
        .catch(function () { return { detail: "The server answered " + response.status + "." }; })
        .then(function (data) { return { ok: response.ok, status: response.status, data: data }; });
    });
  }

  function showErrors(list, messages) {
    list.innerHTML = "";
    messages.forEach(function (text) {
      var li = document.createElement("li");
      li.textContent = text;
      list.appendChild(li);
    });
    list.hidden = messages.length === 0;
  }

  // A refusal's messages; `name(field)` says which input a field is to a person.
  function refusal(answer, name) {
    var detail = answer.data && answer.data.detail;
    if (Array.isArray(detail)) {
      return detail.map(function (e) { return (e.field ? name(e.field) + ": " : "") + e.message; });
    }
    return [detail || "The server answered " + answer.status + "."];
  }

  // --- sine ------------------------------------------------------------------------------------

  function sinePanel(section) {
    var plots = {
      initialization: document.getElementById("tryit-sine-trained"),
      random: document.getElementById("tryit-sine-random"),
    };
    var titles = { initialization: "Trained initialization", random: "Random initialization" };
    var status = document.getElementById("tryit-sine-status");
    var errors = document.getElementById("tryit-sine-errors");
    var STEP_COLORS = ["#868e96", "#d9480f", "#2457c5"];
    var X = [-5, 5];
    var Y = [-6, 6];
    var points = [];
    var task = null; // {amplitude, phase} of the drawn task
    var fits = null; // the last answer
    var selected = -1;
    var pending = 0;

    function truth() {
      var xs = [], ys = [];
      for (var i = 0; i <= 200; i++) {
        var x = X[0] + ((X[1] - X[0]) * i) / 200;
        xs.push(x);
        ys.push(task.amplitude * Math.sin(x + task.phase));
      }
      return { x: xs, y: ys, mode: "lines", name: "task", line: { color: "#adb5bd", dash: "dash" } };
    }

    function draw() {
      Object.keys(plots).forEach(function (key) {
        var traces = [];
        if (task) traces.push(truth());
        if (fits) {
          fits.steps.forEach(function (step, i) {
            traces.push({
              x: fits.grid,
              y: fits[key][i],
              mode: "lines",
              name: step === 0 ? "before adaptation" : "after " + step + " step" + (step > 1 ? "s" : ""),
              line: { color: STEP_COLORS[i % STEP_COLORS.length], width: step === 0 ? 1.5 : 2.5 },
            });
          });
        }
        traces.push({
          x: points.map(function (p) { return p.x; }),
          y: points.map(function (p) { return p.y; }),
          mode: "markers",
          name: "K points",
          marker: {
            size: 10,
            color: points.map(function (_, i) { return i === selected ? "#f59f00" : "#1d2330"; }),
          },
        });
        Plotly.react(
          plots[key],
          traces,
          {
            title: { text: titles[key], font: { size: 14 } },
            margin: { l: 40, r: 10, t: 36, b: 30 },
            xaxis: { range: X, fixedrange: true, zeroline: false },
            yaxis: { range: Y, fixedrange: true, zeroline: false },
            dragmode: false,
            hovermode: false,
            showlegend: key === "initialization",
            legend: { orientation: "h", y: -0.12 },
          },
          { displayModeBar: false, responsive: true }
        );
      });
    }

    function fit() {
      if (!points.length) {
        fits = null;
        draw();
        return;
      }
      var ticket = ++pending;
      status.textContent = "adapting…";
      var body = { x: points.map(function (p) { return p.x; }), y: points.map(function (p) { return p.y; }) };
      call(section, "POST", section.dataset.tryUrl, body).then(function (answer) {
        if (ticket !== pending) return; // a newer change is on its way
        if (answer.status === 429) {
          // The previous change's adaptation still holds this user's slot: ask again shortly.
          setTimeout(function () { if (ticket === pending) fit(); }, 400);
          return;
        }
        if (!answer.ok) {
          status.textContent = "";
          showErrors(errors, refusal(answer, function (f) { return f; }));
          return;
        }
        showErrors(errors, []);
        fits = answer.data;
        status.textContent = points.length + " points, adapted in " + fits.seconds.toFixed(2) + " s";
        draw();
        section.dataset.fits = String(parseInt(section.dataset.fits, 10) + 1);
      }, function () {
        status.textContent = "";
        showErrors(errors, ["The server could not be reached."]);
      });
    }

    function newTask() {
      call(section, "GET", section.dataset.taskUrl).then(function (answer) {
        if (!answer.ok) {
          showErrors(errors, refusal(answer, function (f) { return f; }));
          return;
        }
        task = { amplitude: answer.data.amplitude, phase: answer.data.phase };
        points = answer.data.x.map(function (x, i) { return { x: x, y: answer.data.y[i] }; });
        selected = -1;
        fit();
      });
    }

    function onClick(div, event) {
      var layout = div._fullLayout;
      if (!layout) return;
      var xa = layout.xaxis, ya = layout.yaxis;
      var rect = div.getBoundingClientRect();
      var px = event.clientX - rect.left - xa._offset;
      var py = event.clientY - rect.top - ya._offset;
      if (px < 0 || px > xa._length || py < 0 || py > ya._length) return;
      var near = -1, best = 12;
      points.forEach(function (p, i) {
        var d = Math.hypot(xa.l2p(p.x) - px, ya.l2p(p.y) - py);
        if (d < best) { best = d; near = i; }
      });
      if (near >= 0) {
        selected = near === selected ? -1 : near; // pick it up (or put it back)
        draw();
        return;
      }
      var point = {
        x: Math.min(X[1], Math.max(X[0], xa.p2l(px))),
        y: Math.min(Y[1], Math.max(Y[0], ya.p2l(py))),
      };
      if (selected >= 0) {
        points[selected] = point;
        selected = -1;
      } else if (points.length < 50) {
        points.push(point);
      }
      fit();
    }

    Object.keys(plots).forEach(function (key) {
      plots[key].addEventListener("click", function (event) { onClick(plots[key], event); });
    });
    document.getElementById("tryit-sine-draw").addEventListener("click", newTask);
    document.getElementById("tryit-sine-clear").addEventListener("click", function () {
      points = [];
      task = null;
      selected = -1;
      status.textContent = "";
      fit();
    });
    draw();
    newTask();
  }

  // --- omniglot ----------------------------------------------------------------------------------

  function Cell(canvas) {
    var self = this;
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.clear();
    var drawing = false;
    function at(event) {
      var rect = canvas.getBoundingClientRect();
      return [
        ((event.clientX - rect.left) * canvas.width) / rect.width,
        ((event.clientY - rect.top) * canvas.height) / rect.height,
      ];
    }
    canvas.addEventListener("pointerdown", function (event) {
      if (self.uploaded) self.clear();
      if (self.onEdit) self.onEdit();
      drawing = true;
      canvas.setPointerCapture(event.pointerId);
      var p = at(event);
      self.ctx.beginPath();
      self.ctx.moveTo(p[0], p[1]);
      self.ctx.lineTo(p[0] + 0.1, p[1] + 0.1);
      self.ctx.stroke();
      self.drawn = true;
    });
    canvas.addEventListener("pointermove", function (event) {
      if (!drawing) return;
      var p = at(event);
      self.ctx.lineTo(p[0], p[1]);
      self.ctx.stroke();
    });
    function stop() { drawing = false; }
    canvas.addEventListener("pointerup", stop);
    canvas.addEventListener("pointercancel", stop);
    canvas.addEventListener("dblclick", function () {
      self.clear();
      if (self.onEdit) self.onEdit();
    });
  }

  Cell.prototype.clear = function () {
    var ctx = this.ctx;
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 5;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    this.drawn = false;
    this.uploaded = null;
  };

  // Show an image (a data: URL) in the box; it is sent as it came.
  Cell.prototype.fill = function (url) {
    var self = this;
    this.clear();
    this.uploaded = url;
    var img = new Image();
    img.onload = function () {
      self.ctx.imageSmoothingEnabled = false;
      self.ctx.drawImage(img, 0, 0, self.canvas.width, self.canvas.height);
    };
    img.src = url;
  };

  Cell.prototype.value = function () {
    if (this.uploaded) return this.uploaded;
    return this.drawn ? this.canvas.toDataURL("image/png") : null;
  };

  function readFile(file) {
    return new Promise(function (resolve, reject) {
      var reader = new FileReader();
      reader.onload = function () { resolve(reader.result); };
      reader.onerror = function () { reject(reader.error); };
      reader.readAsDataURL(file);
    });
  }

  function omniglotPanel(section) {
    var waysInput = document.getElementById("tryit-ways");
    var shotsInput = document.getElementById("tryit-shots");
    var supportEl = document.getElementById("tryit-support");
    var status = document.getElementById("tryit-omniglot-status");
    var errors = document.getElementById("tryit-omniglot-errors");
    var resultEl = document.getElementById("tryit-result");
    var maxWays = Math.min(20, parseInt(section.dataset.ways, 10) || 5);
    waysInput.max = String(maxWays);
    waysInput.value = String(maxWays);
    shotsInput.value = String(Math.min(10, parseInt(section.dataset.shots, 10) || 1));
    var rows = []; // rows[class] = [Cell, ...]
    var query = new Cell(document.getElementById("tryit-query"));
    var queryLabel = null; // the true class of a random task's query
    query.onEdit = function () { queryLabel = null; };

    function clamp(input, low, high) {
      var n = parseInt(input.value, 10);
      n = Math.min(high, Math.max(low, isNaN(n) ? low : n));
      input.value = String(n);
      return n;
    }

    function build() {
      var ways = clamp(waysInput, 2, maxWays);
      var shots = clamp(shotsInput, 1, 10);
      supportEl.innerHTML = "";
      rows = [];
      for (var c = 0; c < ways; c++) {
        var row = document.createElement("div");
        row.className = "tryit-row";
        var label = document.createElement("span");
        label.className = "label small";
        label.textContent = "Class " + (c + 1);
        row.appendChild(label);
        var cells = [];
        for (var k = 0; k < shots; k++) {
          var canvas = document.createElement("canvas");
          canvas.width = 112;
          canvas.height = 112;
          canvas.className = "tryit-cell";
          canvas.setAttribute("aria-label", "Class " + (c + 1) + ", example " + (k + 1));
          row.appendChild(canvas);
          cells.push(new Cell(canvas));
        }
        var file = document.createElement("input");
        file.type = "file";
        file.accept = "image/png,image/jpeg";
        file.multiple = true;
        file.setAttribute("aria-label", "Upload examples of class " + (c + 1));
        file.addEventListener("change", uploadInto(cells));
        row.appendChild(file);
        supportEl.appendChild(row);
        rows.push(cells);
      }
      queryLabel = null;
      resultEl.hidden = true;
    }

    function uploadInto(cells) {
      return function (event) {
        var files = Array.prototype.slice.call(event.target.files, 0, cells.length);
        Promise.all(files.map(readFile)).then(function (urls) {
          urls.forEach(function (url, i) { cells[i].fill(url); });
        });
        queryLabel = null;
      };
    }

    function fieldName(field) {
      var parts = field.split(".");
      if (parts[0] === "support" && parts.length === 3) {
        return "Class " + (+parts[1] + 1) + ", example " + (+parts[2] + 1);
      }
      if (parts[0] === "queries") return "Query";
      return field;
    }

    function showResult(answer) {
      var table = document.createElement("table");
      table.className = "small";
      table.innerHTML =
        "<thead><tr><th>Class</th><th>Example</th><th>Trained initialization</th><th>Random initialization</th></tr></thead>";
      var body = document.createElement("tbody");
      var trained = answer.initialization, random = answer.random;
      rows.forEach(function (cells, c) {
        var tr = document.createElement("tr");
        if (trained.predicted[0] === c) tr.className = "tryit-predicted";
        var name = document.createElement("td");
        name.textContent = "Class " + (c + 1) + (queryLabel === c ? " (the query's class)" : "");
        tr.appendChild(name);
        var example = document.createElement("td");
        var img = document.createElement("img");
        img.src = cells[0].canvas.toDataURL("image/png");
        img.width = 28;
        img.height = 28;
        img.alt = "";
        example.appendChild(img);
        tr.appendChild(example);
        [trained, random].forEach(function (prediction) {
          var td = document.createElement("td");
          var p = prediction.probabilities[0][c];
          var bar = document.createElement("span");
          bar.className = "tryit-bar";
          bar.style.width = Math.round(p * 120) + "px";
          td.appendChild(bar);
          td.appendChild(document.createTextNode((p * 100).toFixed(1) + " %" + (prediction.predicted[0] === c ? " ← predicted" : "")));
          tr.appendChild(td);
        });
        body.appendChild(tr);
      });
      table.appendChild(body);
      resultEl.innerHTML = "";
      resultEl.appendChild(table);
      resultEl.hidden = false;
      var verdict = "Predicted class " + (trained.predicted[0] + 1);
      if (queryLabel !== null) verdict += trained.predicted[0] === queryLabel ? " (right)" : " (wrong: it is class " + (queryLabel + 1) + ")";
      status.textContent = verdict + "; adapted in " + answer.seconds.toFixed(2) + " s";
      section.dataset.results = String(parseInt(section.dataset.results, 10) + 1);
    }

    function classify() {
      var missing = [];
      var support = rows.map(function (cells, c) {
        return cells.map(function (cell, k) {
          var value = cell.value();
          if (!value) missing.push("Class " + (c + 1) + ", example " + (k + 1) + ": draw or upload it.");
          return value;
        });
      });
      if (!query.value()) missing.push("Query: draw or upload it.");
      if (missing.length) {
        showErrors(errors, missing);
        return;
      }
      showErrors(errors, []);
      status.textContent = "adapting…";
      call(section, "POST", section.dataset.tryUrl, { support: support, queries: [query.value()] }).then(
        function (answer) {
          if (!answer.ok) {
            status.textContent = "";
            showErrors(errors, refusal(answer, fieldName));
            return;
          }
          showResult(answer.data);
        },
        function () {
          status.textContent = "";
          showErrors(errors, ["The server could not be reached."]);
        }
      );
    }

    function randomTask() {
      var url = section.dataset.taskUrl + "?ways=" + clamp(waysInput, 2, maxWays) + "&shots=" + clamp(shotsInput, 1, 10);
      status.textContent = "drawing a task…";
      call(section, "GET", url).then(function (answer) {
        if (!answer.ok) {
          status.textContent = "";
          showErrors(errors, refusal(answer, function (f) { return f; }));
          return;
        }
        showErrors(errors, []);
        build();
        var task = answer.data;
        task.support.forEach(function (images, c) {
          images.forEach(function (url, k) { rows[c][k].fill(url); });
        });
        var pick = Math.floor(Math.random() * task.queries.length);
        query.fill(task.queries[pick]);
        queryLabel = task.query_labels[pick];
        status.textContent = "A random task from the test characters: which class is the query?";
      });
    }

    waysInput.addEventListener("change", build);
    shotsInput.addEventListener("change", build);
    document.getElementById("tryit-clear").addEventListener("click", function () {
      build();
      query.clear();
      showErrors(errors, []);
      status.textContent = "";
    });
    document.getElementById("tryit-random").addEventListener("click", randomTask);
    document.getElementById("tryit-classify").addEventListener("click", classify);
    document.getElementById("tryit-query-file").addEventListener("change", function (event) {
      if (!event.target.files.length) return;
      readFile(event.target.files[0]).then(function (url) { query.fill(url); });
      queryLabel = null;
    });
    build();
  }

  function start() {
    var sine = document.getElementById("tryit-sine");
    if (sine && window.Plotly) sinePanel(sine);
    var omniglot = document.getElementById("tryit-omniglot");
    if (omniglot) omniglotPanel(omniglot);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
