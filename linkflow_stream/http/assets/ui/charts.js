// Simple SVG charts for the operations page: horizontal bars, one or more series per label.

import { svg } from "./dom.js";

/**
 * Horizontal bars: `rows` is [{label, values: [n, ...]}], `series` the names of the values
 * (stacked, in order), `format` how a value is written.
 */
export function barChart(rows, series, { format = (v) => String(v), width = 520, title = "" } = {}) {
  const row = 26;
  const label = 130;
  const height = Math.max(rows.length, 1) * row + 26;
  const total = (r) => r.values.reduce((a, b) => a + b, 0);
  const max = Math.max(1e-9, ...rows.map(total));
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": title });
  rows.forEach((r, i) => {
    const y = i * row + 4;
    root.append(svg("text", { x: 4, y: y + 15, class: "row-label" }, r.label));
    let x = label;
    r.values.forEach((v, s) => {
      const w = ((width - label - 70) * v) / max;
      if (w > 0) {
        const rect = svg("rect", { x, y: y + 2, width: w, height: row - 10, class: `series-${s}` });
        rect.append(svg("title", {}, `${r.label} ${series[s]}: ${format(v)}`));
        root.append(rect);
      }
      x += w;
    });
    root.append(svg("text", { x: x + 6, y: y + 15, class: "value" }, format(total(r))));
  });
  if (!rows.length) root.append(svg("text", { x: 4, y: 18, class: "muted" }, "nothing yet"));
  const legend = svg("g", { transform: `translate(${label} ${height - 8})` });
  series.forEach((name, s) => {
    legend.append(svg("rect", { x: s * 110, y: -9, width: 10, height: 10, class: `series-${s}` }));
    legend.append(svg("text", { x: s * 110 + 14, y: 0, class: "legend" }, name));
  });
  if (series.length > 1) root.append(legend);
  return root;
}

/** Sum of every sample of a metric in Prometheus text, optionally by one label. */
export function metricSum(text, name, byLabel) {
  const out = {};
  let total = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name + " ") && !line.startsWith(name + "{")) continue;
    const value = parseFloat(line.slice(line.lastIndexOf(" ") + 1));
    if (Number.isNaN(value)) continue;
    total += value;
    if (byLabel) {
      const m = line.match(new RegExp(`${byLabel}="([^"]*)"`));
      const key = m ? m[1] : "";
      out[key] = (out[key] || 0) + value;
    }
  }
  return byLabel ? out : total;
}
