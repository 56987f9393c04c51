// A small SVG chart for the admin page: bars (one per label) or a line (values over time).
// Written for this page (no library); draws with presentation attributes only, so the
// page's Content-Security-Policy (no inline style) holds.
"use strict";

const SluiceChart = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const W = 900, H = 240, PAD_L = 64, PAD_B = 36, PAD_T = 12, PAD_R = 12;

  function el(name, attrs, text) {
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function frame(svg, max, format) {
    const plotH = H - PAD_T - PAD_B;
    for (let i = 0; i <= 4; i++) {
      const y = PAD_T + plotH - (plotH * i) / 4;
      svg.appendChild(el("line", { x1: PAD_L, x2: W - PAD_R, y1: y, y2: y, stroke: "#e3e8ee" }));
      svg.appendChild(el("text", { x: PAD_L - 6, y: y + 4, "text-anchor": "end", "font-size": 11, fill: "#5d6b7a" }, format((max * i) / 4)));
    }
  }

  // Draws `values` (numbers) with `labels` into `container` as bars.
  function bars(container, labels, values, format) {
    container.replaceChildren();
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "chart" });
    const max = niceMax(Math.max(0, ...values));
    frame(svg, max, format);
    const plotW = W - PAD_L - PAD_R, plotH = H - PAD_T - PAD_B;
    const n = Math.max(values.length, 1);
    const step = plotW / n;
    const every = Math.ceil(n / 12);
    values.forEach((v, i) => {
      const h = (plotH * v) / max;
      const x = PAD_L + i * step + step * 0.15;
      const bar = el("rect", { x, y: PAD_T + plotH - h, width: Math.max(step * 0.7, 1), height: h, fill: "#1f6feb" });
      bar.appendChild(el("title", {}, `${labels[i]}: ${format(v)}`));
      svg.appendChild(bar);
      if (i % every === 0) {
        const label = String(labels[i]);
        svg.appendChild(el("text", { x: x + step * 0.35, y: H - PAD_B + 16, "text-anchor": "middle", "font-size": 11, fill: "#5d6b7a" },
          label.length > 16 ? label.slice(0, 15) + "…" : label));
      }
    });
    if (values.length === 0) {
      svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#5d6b7a" }, "no data in this range"));
    }
    container.appendChild(svg);
  }

  // Draws `series` ({name, color, values}) over the same x positions as lines.
  function lines(container, series, format) {
    container.replaceChildren();
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "chart" });
    const all = series.flatMap((s) => s.values);
    const max = niceMax(Math.max(0, ...all));
    frame(svg, max, format);
    const plotW = W - PAD_L - PAD_R, plotH = H - PAD_T - PAD_B;
    series.forEach((s, k) => {
      const n = s.values.length;
      if (n === 0) return;
      const pts = s.values.map((v, i) => {
        const x = PAD_L + (n === 1 ? plotW : (plotW * i) / (n - 1));
        const y = PAD_T + plotH - (plotH * v) / max;
        return `${x.toFixed(1)},${y.toFixed(1)}`;
      });
      svg.appendChild(el("polyline", { points: pts.join(" "), fill: "none", stroke: s.color, "stroke-width": 2 }));
      svg.appendChild(el("text", { x: PAD_L + 8 + k * 140, y: H - 8, "font-size": 12, fill: s.color }, s.name));
    });
    container.appendChild(svg);
  }

  return { bars, lines };
})();
