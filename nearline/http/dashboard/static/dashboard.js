// nearline dashboard: the chart of the last minutes (uPlot), redrawn from /ui/stats every 2 s.
(function () {
  "use strict";
  var box = document.getElementById("chart");
  if (!box || typeof uPlot === "undefined") { return; }
  var plot = null;
  function options(width) {
    return {
      width: width, height: 200,
      scales: { x: { time: true }, ms: { auto: true } },
      series: [
        {},
        { label: "completed / 10 s", stroke: "#1e7d32", width: 2 },
        { label: "failed / 10 s", stroke: "#b3261e", width: 2 },
        { label: "p50 ms", stroke: "#2357c6", width: 1, dash: [4, 4], scale: "ms" }
      ],
      axes: [{}, { label: "jobs" }, { side: 1, scale: "ms", label: "ms", grid: { show: false } }]
    };
  }
  function draw(stats) {
    var data = [stats.t, stats.completed, stats.failed, stats.p50_ms];
    if (plot === null) {
      plot = new uPlot(options(Math.max(box.clientWidth - 10, 300)), data, box);
    } else {
      plot.setData(data);
    }
  }
  function refresh() {
    fetch(box.dataset.stats, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (stats) { if (stats) { draw(stats); } })
      .catch(function () { /* the next refresh tries again */ });
  }
  refresh();
  setInterval(refresh, 2000);
})();
