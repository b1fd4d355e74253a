// One camera's page: its tile, and its recent predictions and drift windows as charts,
// read from /api/camera every two seconds.
"use strict";

(() => {
  const id = new URLSearchParams(location.search).get("id") || "";
  const tile = document.getElementById("tile");
  const connection = document.getElementById("connection");
  document.getElementById("camera-name").textContent = id;
  tile.querySelector(".cam-id").textContent = id;
  document.title = `camstream · ${id}`;
  const stats = (window.camstreamCamera = { loads: 0, predictions: 0, windows: 0 });

  function topK(t) {
    const list = document.getElementById("top");
    list.replaceChildren(...t.top.map(([label, score]) => {
      const item = document.createElement("li");
      item.textContent = `${label} ${camstream.fmt(score, 3)}`;
      return item;
    }));
  }

  function dlq(kinds) {
    const list = document.getElementById("dlq");
    const entries = Object.entries(kinds);
    list.replaceChildren(...(entries.length ? entries : [["none", ""]]).map(([kind, n]) => {
      const item = document.createElement("li");
      item.textContent = n === "" ? "no record" : `${kind}: ${n}`;
      return item;
    }));
  }

  function predictionCharts(points, threshold) {
    const byLabel = new Map();
    for (const [t, label, score] of points) {
      if (!byLabel.has(label)) byLabel.set(label, []);
      byLabel.get(label).push([t, score]);
    }
    const series = [...byLabel].map(([label, pts]) => ({
      name: label, color: camstream.colorOf(label), points: pts, line: false, dots: true,
    }));
    camstream.timeChart(document.getElementById("chart-score"), {
      series, yMin: 0, yMax: 1, rules: threshold > 0 ? [{ y: threshold, color: "#e94e77" }] : [],
    });
    camstream.legend(document.getElementById("legend-score"),
      series.map((s) => [s.name, s.color, `(${s.points.length})`]));
    const latency = points.filter((p) => p[3] !== null).map((p) => [p[0], p[3]]);
    camstream.timeChart(document.getElementById("chart-latency"), {
      series: [{ name: "e2e", color: "#4e9af1", points: latency }], yMin: 0, yLabel: "ms",
    });
  }

  function driftCharts(windows) {
    const byTest = new Map();
    const bands = [];
    for (const w of windows) {
      if (w.kind === "silence") continue;
      if (w.drift || w.calibrating) {
        bands.push({ from: w.start_ms, to: w.end_ms, color: w.drift ? "rgba(233,78,119,0.25)" : "rgba(155,155,155,0.15)" });
      }
      for (const [test, [value, limit]] of Object.entries(w.stats)) {
        if (value === null || !limit) continue;
        if (!byTest.has(test)) byTest.set(test, []);
        byTest.get(test).push([w.end_ms, value / limit]);
      }
    }
    const series = [...byTest].map(([test, pts]) => ({ name: test, color: camstream.colorOf(test), points: pts, dots: true }));
    camstream.timeChart(document.getElementById("chart-drift"), {
      series, bands, yMin: 0, rules: [{ y: 1, color: "#e94e77" }],
    });
    camstream.legend(document.getElementById("legend-drift"), series.map((s) => [s.name, s.color]));
    const body = document.querySelector("#windows tbody");
    body.replaceChildren(...windows.slice(-12).reverse().map((w) => {
      const row = document.createElement("tr");
      const state = w.kind === "silence" ? "silent" : w.drift ? "drift" : w.calibrating ? "calibrating" : "ok";
      row.className = state;
      for (const text of [new Date(w.end_ms).toLocaleTimeString(), String(w.frames), state, w.reasons.join("; ")]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.appendChild(cell);
      }
      return row;
    }));
  }

  function shadowChart(windows) {
    document.getElementById("shadow-box").hidden = windows.length === 0;
    const pts = windows.filter((w) => w.agreement_rate !== null).map((w) => [w.end_ms, w.agreement_rate]);
    camstream.timeChart(document.getElementById("chart-shadow"), {
      series: [{ name: "agreement", color: "#7ed321", points: pts, dots: true }], yMin: 0, yMax: 1,
    });
  }

  async function load() {
    try {
      const response = await fetch(`/api/camera?id=${encodeURIComponent(id)}`, { cache: "no-store" });
      if (response.status === 404) {
        connection.textContent = "no such camera (yet)";
        connection.className = "connection down";
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      camstream.renderTile(tile, data.tile, data.server_ms);
      topK(data.tile);
      dlq(data.dlq_kinds);
      predictionCharts(data.predictions, data.tile.threshold);
      driftCharts(data.drift_windows);
      shadowChart(data.shadow_windows);
      connection.textContent = "live";
      connection.className = "connection live";
      stats.loads += 1;
      stats.predictions = data.predictions.length;
      stats.windows = data.drift_windows.length;
    } catch (error) {
      connection.textContent = `reconnecting… (${error.message})`;
      connection.className = "connection down";
    }
  }

  load();
  setInterval(load, 2000);
})();
