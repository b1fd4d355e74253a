// Shared by the wall (view.js) and the camera page (camera.js): formatting, one
// tile's rendering, small SVG charts. Record data is untrusted (camera ids and labels
// come from Kafka): it only ever goes into textContent and attributes.
"use strict";

const camstream = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const PALETTE = ["#4e9af1", "#f5a623", "#7ed321", "#bd10e0", "#50e3c2", "#f8e71c",
    "#e94e77", "#9b9b9b", "#b8e986", "#ff7f50", "#c69c6d", "#3fb27f"];

  // Colours by first appearance on this page, so a chart's few labels never share one.
  const colors = new Map();
  function colorOf(text) {
    if (!colors.has(text)) colors.set(text, PALETTE[colors.size % PALETTE.length]);
    return colors.get(text);
  }

  function fmt(value, digits) {
    return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
  }

  function ago(ms) {
    if (ms < 1000) return "now";
    const s = Math.round(ms / 1000);
    return s < 120 ? `${s} s ago` : `${Math.round(s / 60)} min ago`;
  }

  const thumbUrl = (camera, version) =>
    `/api/thumbnail?id=${encodeURIComponent(camera)}&v=${version}`;
  const cameraUrl = (camera) => `/camera?id=${encodeURIComponent(camera)}`;

  function set(root, selector, text, className) {
    const node = root.querySelector(selector);
    node.textContent = text;
    if (className !== undefined) node.className = className;
    return node;
  }

  // One tile from its JSON (camstream.view.state FleetState._tile); `now`: the
  // server's clock in ms.
  function renderTile(root, t, now) {
    root.dataset.camera = t.camera;
    root.dataset.status = t.status;
    root.dataset.label = t.label;
    root.dataset.seq = String(t.seq);
    root.dataset.thumb = String(t.thumb);
    root.classList.toggle("stale", t.status === "stale");
    root.classList.toggle("waiting", t.status === "waiting");
    root.classList.toggle("drifting", t.drift.state === "drifting");
    root.classList.toggle("quality-flag", t.drift.quality.length > 0);
    const age = t.last_seen_ms ? ago(now - t.last_seen_ms) : "no prediction yet";
    set(root, ".status", t.status === "live" ? "live" : `${t.status} · ${age}`, `status ${t.status}`);
    set(root, ".label", t.label || "–", t.label === "uncertain" ? "label uncertain" : "label");
    set(root, ".score", t.seq >= 0 ? fmt(t.score, 2) : "");
    const route = t.route && !(t.model || "").startsWith(t.route) ? ` · routed to ${t.route}` : "";
    set(root, ".model", `${t.model || "no model yet"}${route}`);
    set(root, ".fps", `in ${fmt(t.fps_in, 1)} · out ${fmt(t.fps_out, 1)} fps`);
    set(root, ".e2e", t.e2e_ms === null ? "e2e –" : `e2e ${Math.round(t.e2e_ms)} ms`);
    set(root, ".dlq", `DLQ ${t.dlq.count}`, t.dlq.count > 0 ? "dlq bad" : "dlq");
    root.querySelector(".dlq").title = t.dlq.last;
    const drift = t.drift.state === "unknown" ? "drift: no window yet" : t.drift.state;
    set(root, ".drift-state", drift, `drift-state ${t.drift.state}`);
    root.querySelector(".quality").replaceChildren(...t.drift.quality.map((q) => {
      const chip = document.createElement("span");
      chip.className = `chip ${q}`;
      chip.textContent = q;
      return chip;
    }));
    const reasons = t.drift.state === "drifting" || t.drift.quality.length ? t.drift.reasons : [];
    const why = set(root, ".reasons", reasons.join("; "));
    why.title = reasons.join("\n");
    const shadow = root.querySelector(".shadow");
    shadow.hidden = !t.shadow;
    root.classList.toggle("disagree", Boolean(t.shadow && !t.shadow.agree));
    if (t.shadow) {
      const s = t.shadow;
      set(root, ".shadow-label", s.label, s.agree ? "shadow-label" : "shadow-label disagree");
      set(root, ".shadow-score", fmt(s.score, 2));
      const rate = s.agreement_rate === null ? "" : ` · ${Math.round(100 * s.agreement_rate)}% agree`;
      set(root, ".shadow-agree", `${s.agree ? "agrees" : "disagrees"} · ${s.candidate}${rate}`,
        s.agree ? "shadow-agree" : "shadow-agree disagree");
      shadow.title = `${s.recent_disagreements} of the last ${s.recent_pairs} pairs disagree ` +
        `(champion: ${s.champion_label})`;
    }
    const img = root.querySelector(".thumb-img");
    if (t.thumb > 0 && img.dataset.version !== String(t.thumb)) {
      img.dataset.version = String(t.thumb);
      img.src = thumbUrl(t.camera, t.thumb);
      img.alt = `latest frame of ${t.camera}`;
    }
    root.classList.toggle("has-thumb", t.thumb > 0);
  }

  function node(tag, attrs, parent) {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
    if (parent) parent.appendChild(n);
    return n;
  }

  // A time chart. series: [{name, color, points: [[t_ms, y], ...], line, dots}];
  // bands: [{from, to, color}] (shaded spans of time); rules: [{y, color}].
  function timeChart(svg, { series, bands = [], rules = [], yMin = 0, yMax, yLabel = "" }) {
    const box = svg.viewBox.baseVal;
    const W = box.width, H = box.height, L = 48, R = 10, T = 10, B = 24;
    svg.replaceChildren();
    const all = series.flatMap((s) => s.points);
    if (!all.length) {
      const t = node("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, svg);
      t.textContent = "no data yet";
      return;
    }
    const xs = all.map((p) => p[0]).concat(bands.flatMap((b) => [b.from, b.to]));
    const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1000);
    const ys = all.map((p) => p[1]).concat(rules.map((r) => r.y));
    const top = yMax !== undefined ? yMax : Math.max(...ys, yMin + 1e-9) * 1.1;
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => T + (1 - (Math.min(y, top) - yMin) / (top - yMin)) * (H - T - B);
    for (const b of bands) {
      const a = sx(b.from), z = sx(b.to);
      node("rect", { x: a, y: T, width: Math.max(z - a, 2), height: H - T - B, fill: b.color }, svg);
    }
    for (let i = 0; i <= 4; i++) {
      const v = yMin + ((top - yMin) * i) / 4, y = sy(v);
      node("line", { x1: L, x2: W - R, y1: y, y2: y, class: "grid" }, svg);
      const t = node("text", { x: L - 4, y: y + 4, "text-anchor": "end", class: "axis" }, svg);
      t.textContent = top - yMin >= 10 ? String(Math.round(v)) : v.toFixed(2);
    }
    for (const [right, x] of [[false, x0], [true, x1]]) {
      const t = node("text", {
        x: right ? W - R : L, y: H - 6, "text-anchor": right ? "end" : "start", class: "axis",
      }, svg);
      t.textContent = new Date(x).toLocaleTimeString();
    }
    if (yLabel) node("text", { x: L + 4, y: T + 12, class: "axis" }, svg).textContent = yLabel;
    for (const r of rules) {
      node("line", { x1: L, x2: W - R, y1: sy(r.y), y2: sy(r.y), stroke: r.color, "stroke-dasharray": "5 4" }, svg);
    }
    for (const s of series) {
      if (s.line !== false && s.points.length > 1) {
        const pts = s.points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`);
        node("polyline", { points: pts.join(" "), fill: "none", stroke: s.color, "stroke-width": 1.5 }, svg);
      }
      if (s.dots) {
        for (const p of s.points) node("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: s.color }, svg);
      }
    }
  }

  function legend(container, entries) {
    container.replaceChildren(...entries.map(([name, color, extra]) => {
      const item = document.createElement("span");
      item.className = "legend-item";
      const swatch = document.createElement("i");
      swatch.style.background = color;
      item.append(swatch, `${name}${extra ? ` ${extra}` : ""}`);
      return item;
    }));
  }

  return { colorOf, fmt, ago, thumbUrl, cameraUrl, renderTile, timeChart, legend };
})();
