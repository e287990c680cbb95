// Live updates: the server's event stream says when the newest task changed; each
// [data-live-src] region then fetches its fresh HTML (rendered and escaped by the
// server) and replaces its content. No reload, no data from the stream itself;
// [data-live-every="5"] regions also refresh every 5 s (worker heartbeats).
"use strict";
(function () {
  var refreshing = false, again = false;

  function refresh() {
    if (refreshing) { again = true; return; }
    var regions = document.querySelectorAll("[data-live-src]");
    if (!regions.length) return;
    refreshing = true;
    var jobs = Array.prototype.map.call(regions, function (region) {
      return fetch(region.getAttribute("data-live-src"), {
        credentials: "same-origin", headers: { "Accept": "text/html" }
      }).then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      }).then(function (html) {
        region.innerHTML = html;
        if (window.ChicoryChart) window.ChicoryChart.drawAll(region);
      });
    });
    Promise.all(jobs).catch(function () { /* next event tries again */ }).then(function () {
      refreshing = false;
      document.body.setAttribute("data-live-refreshed", String(Date.now()));
      if (again) { again = false; refresh(); }
    });
  }

  function connect() {
    var status = document.getElementById("live-status");
    if (!window.EventSource || !document.body.hasAttribute("data-live-since")) return;
    var base = document.body.getAttribute("data-base") || "";
    var since = document.body.getAttribute("data-live-since");
    var source = new EventSource(base + "/events?since=" + encodeURIComponent(since));
    source.addEventListener("open", function () {
      if (status) { status.className = "live on"; }
      document.body.setAttribute("data-live", "open");
    });
    source.addEventListener("error", function () {
      if (status) { status.className = "live off"; }
      document.body.setAttribute("data-live", "error");
    });
    source.addEventListener("tasks", refresh);
  }

  // Regions whose data no task event announces (heartbeats) also refresh every N seconds.
  function every() {
    var seconds = Infinity;
    Array.prototype.forEach.call(document.querySelectorAll("[data-live-every]"), function (el) {
      var n = parseFloat(el.getAttribute("data-live-every"));
      if (n > 0 && n < seconds) seconds = n;
    });
    if (seconds !== Infinity) window.setInterval(refresh, seconds * 1000);
  }

  document.addEventListener("DOMContentLoaded", function () { connect(); every(); });
})();
