// The runs page's live cells: while a run on the page is queued or running, ask the server
// for its status, progress, duration, speed and result every few seconds (rendered by the
// page's own templates) and swap them in; stop once none can change any more.
(function () {
  "use strict";
  var table = document.getElementById("run-table");
  if (!table || !table.dataset.liveUrl) return;
  var pollMs = parseInt(table.dataset.pollMs, 10) || 3000;

  function apply(id, item) {
    var row = table.querySelector('tr[data-run="' + id + '"]');
    if (!row) return;
    var status = row.querySelector('[data-cell="status"]');
    if (status) status.innerHTML = item.status;
    var tpl = document.createElement("template");
    tpl.innerHTML = "<table><tr>" + item.cells + "</tr></table>";
    tpl.content.querySelectorAll("td[data-cell]").forEach(function (cell) {
      var old = row.querySelector('[data-cell="' + cell.dataset.cell + '"]');
      if (old) old.replaceWith(cell);
    });
  }

  function tick() {
    fetch(table.dataset.liveUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (resp) {
        if (!resp.ok) throw new Error("runs feed: HTTP " + resp.status);
        return resp.json();
      })
      .then(function (data) {
        var active = false;
        Object.keys(data.runs).forEach(function (id) {
          apply(id, data.runs[id]);
          active = active || data.runs[id].active;
        });
        if (active) window.setTimeout(tick, pollMs);
      })
      .catch(function (err) {
        if (window.console) console.warn(err);
        window.setTimeout(tick, pollMs * 2);
      });
  }
  window.setTimeout(tick, pollMs);
})();
