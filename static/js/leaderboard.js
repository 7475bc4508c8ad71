// The leaderboard's seed lists: a row's seeds are fetched when its toggle is first opened
// (the page would otherwise carry every row's seeds: 1.2 MB at 10,000 runs). Without
// JavaScript, the toggle holds a link to the same list.
(function () {
  "use strict";
  document.querySelectorAll("details.seed-runs[data-seeds-url]").forEach(function (toggle) {
    toggle.addEventListener("toggle", function () {
      if (!toggle.open || toggle.dataset.loaded) return;
      toggle.dataset.loaded = "loading";
      fetch(toggle.dataset.seedsUrl + "?fragment=1", { credentials: "same-origin" })
        .then(function (resp) {
          if (!resp.ok) throw new Error("HTTP " + resp.status);
          return resp.text();
        })
        .then(function (html) {
          var fallback = toggle.querySelector(".seed-runs-fallback");
          var tpl = document.createElement("template");
          tpl.innerHTML = html;
          if (fallback) fallback.replaceWith(tpl.content);
          toggle.dataset.loaded = "yes";
        })
        .catch(function (err) {
          delete toggle.dataset.loaded; // the link stays; opening it again tries again
          console.warn("seed list:", err);
        });
    });
  });
})();
