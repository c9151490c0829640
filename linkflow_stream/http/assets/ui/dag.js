// A workflow's DAG as SVG, laid out by dagre (the one library the UI ships), each node coloured
// by its state. Drawn again whole on every change: layout of a few hundred nodes is cheap, and
// the same input always gives the same picture.

import dagre from "./dagre.esm.js";
import { svg } from "./dom.js";

const NODE_W = 168;
const NODE_H = 50;

/**
 * Draw `workflow` (its nodes with depends_on) into `host`. `states` maps node id to
 * {status, attempts}; `onPick(nodeId)` is called on a click; `selected` is outlined.
 */
export function drawDag(host, workflow, states = {}, { onPick, selected } = {}) {
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: "LR", nodesep: 22, ranksep: 56, marginx: 14, marginy: 14 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const node of workflow.nodes) g.setNode(node.id, { width: NODE_W, height: NODE_H });
  for (const node of workflow.nodes) {
    for (const dep of node.depends_on || []) {
      const [from, branch] = dep.split(":"); // "c:true": the true branch of condition c
      if (g.hasNode(from)) g.setEdge(from, node.id, { branch: branch || "" });
    }
  }
  dagre.layout(g);
  const { width, height } = g.graph();
  const root = svg("svg", {
    class: "dag",
    viewBox: `0 0 ${Math.max(width, 10)} ${Math.max(height, 10)}`,
    width: Math.max(width, 10),
    height: Math.max(height, 10),
    role: "img",
    "aria-label": `DAG of workflow ${workflow.id}`,
  });
  const defs = svg("defs");
  const marker = svg("marker", {
    id: "arrow",
    viewBox: "0 0 10 10",
    refX: 9,
    refY: 5,
    markerWidth: 7,
    markerHeight: 7,
    orient: "auto-start-reverse",
  });
  marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }));
  defs.append(marker);
  root.append(defs);
  for (const e of g.edges()) {
    const points = g.edge(e).points;
    const d = points.map((p, i) => `${i ? "L" : "M"} ${p.x.toFixed(1)} ${p.y.toFixed(1)}`).join(" ");
    const target = (states[e.w] || {}).status || "pending";
    root.append(svg("path", { d, class: `edge to-${target}`, "marker-end": "url(#arrow)" }));
    const branch = g.edge(e).branch;
    if (branch) {
      const mid = points[Math.floor(points.length / 2)];
      root.append(svg("text", { x: mid.x, y: mid.y - 4, class: "edge-label" }, branch));
    }
  }
  for (const node of workflow.nodes) {
    const at = g.node(node.id);
    const state = states[node.id] || {};
    const status = state.status || "pending";
    const group = svg("g", {
      class: `node state-${status}${selected === node.id ? " selected" : ""}`,
      transform: `translate(${(at.x - NODE_W / 2).toFixed(1)} ${(at.y - NODE_H / 2).toFixed(1)})`,
      "data-node": node.id,
      "data-status": status,
      tabindex: 0,
    });
    group.append(svg("rect", { width: NODE_W, height: NODE_H, rx: 7 }));
    group.append(svg("text", { x: 10, y: 20, class: "node-id" }, clip(node.id, 20)));
    const attempts = state.attempts > 1 ? ` · ${state.attempts} attempts` : "";
    group.append(svg("text", { x: 10, y: 38, class: "node-sub" }, `${node.type} · ${status}${attempts}`));
    group.append(svg("title", {}, `${node.id} (${node.type}): ${status}`));
    if (onPick) {
      group.addEventListener("click", () => onPick(node.id));
      group.addEventListener("keydown", (ev) => ev.key === "Enter" && onPick(node.id));
    }
    root.append(group);
  }
  host.replaceChildren(root);
  return root;
}

function clip(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}
