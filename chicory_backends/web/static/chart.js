// A tiny SVG chart for the Chicory dashboard: grouped bars and lines, no library.
// Data comes from <script type="application/json"> blocks the server writes:
//   {"labels": [...], "series": [{"name": "...", "values": [number|null, ...]}, ...]}
// Every label is set with textContent, never as markup.
"use strict";
(function () {
  var SVG = "http://www.w3.org/2000/svg";
  var COLORS = ["#5b3fa8", "#c62828", "#1a7f37", "#1f5fbf", "#b26a00", "#667085"];
  var W = 600, H = 220, LEFT = 46, RIGHT = 10, TOP = 22, BOTTOM = 34;

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (parent) parent.appendChild(node);
    return node;
  }

  function text(parent, x, y, content, anchor) {
    var node = el("text", { x: x, y: y, "text-anchor": anchor || "middle" }, parent);
    node.textContent = String(content);
    return node;
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    var power = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      if (steps[i] * power >= value) return steps[i] * power;
    }
    return 10 * power;
  }

  function format(value) {
    if (value === null || value === undefined) return "–";
    if (Math.abs(value) >= 1000) return value.toFixed(0);
    if (Math.abs(value) >= 10) return value.toFixed(1).replace(/\.0$/, "");
    return String(Number(value.toPrecision(3)));
  }

  function frame(svg, labels, max) {
    var plotH = H - TOP - BOTTOM, plotW = W - LEFT - RIGHT;
    for (var i = 0; i <= 4; i++) {
      var y = TOP + plotH - (plotH * i) / 4;
      el("line", { x1: LEFT, x2: W - RIGHT, y1: y, y2: y, stroke: "#e4e7ec" }, svg);
      text(svg, LEFT - 6, y + 4, format((max * i) / 4), "end");
    }
    var slot = plotW / Math.max(1, labels.length);
    var every = Math.max(1, Math.ceil(labels.length / 12));
    labels.forEach(function (label, index) {
      if (index % every) return;
      var shown = String(label);
      if (shown.length > 14) shown = shown.slice(0, 13) + "…";
      var t = text(svg, LEFT + slot * (index + 0.5), H - BOTTOM + 14, shown);
      el("title", {}, t).textContent = String(label);
    });
    return { plotH: plotH, plotW: plotW, slot: slot };
  }

  function legend(svg, series) {
    var g = el("g", { class: "legend" }, svg), x = LEFT;
    series.forEach(function (s, i) {
      el("rect", { x: x, y: 4, width: 10, height: 10, fill: COLORS[i % COLORS.length] }, g);
      var t = text(g, x + 14, 13, s.name, "start");
      x += 24 + 7 * String(s.name).length;
      return t;
    });
  }

  function maxOf(series) {
    var max = 0;
    series.forEach(function (s) {
      s.values.forEach(function (v) { if (typeof v === "number" && v > max) max = v; });
    });
    return niceMax(max);
  }

  function bar(svg, data) {
    var max = maxOf(data.series);
    var f = frame(svg, data.labels, max);
    var n = Math.max(1, data.series.length);
    var width = (f.slot * 0.7) / n;
    data.series.forEach(function (s, si) {
      s.values.forEach(function (v, i) {
        if (typeof v !== "number") return;
        var h = (f.plotH * v) / max;
        var x = LEFT + f.slot * i + f.slot * 0.15 + width * si;
        var rect = el("rect", {
          x: x, y: TOP + f.plotH - h, width: Math.max(1, width - 1), height: h,
          fill: COLORS[si % COLORS.length], class: "bar"
        }, svg);
        el("title", {}, rect).textContent = data.labels[i] + " · " + s.name + ": " + format(v);
      });
    });
    if (data.series.length > 1) legend(svg, data.series);
  }

  function line(svg, data) {
    var max = maxOf(data.series);
    var f = frame(svg, data.labels, max);
    data.series.forEach(function (s, si) {
      var points = [];
      s.values.forEach(function (v, i) {
        if (typeof v !== "number") return;
        var x = LEFT + f.slot * (i + 0.5), y = TOP + f.plotH - (f.plotH * v) / max;
        points.push(x.toFixed(1) + "," + y.toFixed(1));
        var dot = el("circle", { cx: x, cy: y, r: 3, fill: COLORS[si % COLORS.length] }, svg);
        el("title", {}, dot).textContent = data.labels[i] + " · " + s.name + ": " + format(v);
      });
      el("polyline", {
        points: points.join(" "), fill: "none", stroke: COLORS[si % COLORS.length],
        "stroke-width": 2, class: "line"
      }, svg);
    });
    legend(svg, data.series);
  }

  function draw(container) {
    var source = document.getElementById(container.getAttribute("data-chart-id"));
    if (!source) return;
    var data;
    try { data = JSON.parse(source.textContent); } catch (e) { return; }
    if (!data || !data.labels) return;
    while (container.firstChild) container.removeChild(container.firstChild);
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img" }, container);
    if (!data.labels.length) { text(svg, W / 2, H / 2, "no data"); return; }
    (container.getAttribute("data-chart") === "line" ? line : bar)(svg, data);
  }

  function drawAll(root) {
    Array.prototype.forEach.call((root || document).querySelectorAll("[data-chart]"), draw);
  }

  window.ChicoryChart = { drawAll: drawAll, draw: draw };
  document.addEventListener("DOMContentLoaded", function () { drawAll(document); });
})();
