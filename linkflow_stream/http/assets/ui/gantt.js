// The timeline (Gantt) of a run, from its events: one row per node, a bar per attempt (coloured
// by how it ended), and the waits between them: a retry's backoff, a rate limit's hold, and the
// run's wait for a concurrency slot. Pure over the events, except "now" for what still runs.

import { svg } from "./dom.js";

const ROW = 24;
const LABEL = 150;
const WIDTH = 900;

const ENDS = {
  node_succeeded: "succeeded",
  node_failed: "failed",
  node_retry_scheduled: "retried",
  node_cancelled: "cancelled",
  node_throttled: "throttled",
};

/** Bars per row from the events: {rows: [{id, bars: [{from, to, kind, label}]}], start, end}. */
export function timeline(events, runEnded) {
  const rows = new Map();
  const open = new Map(); // node id -> the running attempt's bar
  const row = (id) => {
    if (!rows.has(id)) rows.set(id, { id, bars: [] });
    return rows.get(id).bars;
  };
  let start = null;
  let end = null;
  let queuedAt = null;
  for (const e of events) {
    const t = Date.parse(e.at);
    start = start === null ? t : Math.min(start, t);
    end = end === null ? t : Math.max(end, t);
    if (e.type === "execution_queued") queuedAt = t;
    if (e.type === "execution_started" && queuedAt !== null) {
      row("(run)").push({ from: queuedAt, to: t, kind: "wait", label: "waiting for a concurrency slot" });
      queuedAt = null;
    }
    if (!e.node_id) continue;
    // An inline node's attempt is one event that starts and ends it (ADR 0056): open, then close.
    if (e.type === "node_started" || (e.type in ENDS && e.dispatch)) {
      const bar = { from: t, to: null, kind: "running", label: `attempt ${e.attempt}` };
      row(e.node_id).push(bar);
      open.set(e.node_id, bar);
    }
    if (e.type in ENDS) {
      const bar = open.get(e.node_id);
      if (bar) {
        bar.to = t;
        bar.kind = ENDS[e.type];
        if (e.error) bar.label += ` — ${e.error.error_class}: ${e.error.message}`;
        open.delete(e.node_id);
      }
      if ((e.type === "node_retry_scheduled" || e.type === "node_throttled") && e.due_at) {
        const due = Date.parse(e.due_at);
        const why = e.type === "node_retry_scheduled" ? "backoff before retry" : "held by rate limit";
        row(e.node_id).push({ from: t, to: due, kind: "wait", label: why });
        end = Math.max(end, due);
      }
    } else if (e.type === "node_skipped" || e.type === "node_reused") {
      row(e.node_id).push({ from: t, to: t, kind: e.type === "node_skipped" ? "skipped" : "reused", label: e.reason || "" });
    }
  }
  const now = Date.now();
  for (const bar of open.values()) bar.to = runEnded ? end : now;
  if (!runEnded) end = Math.max(end ?? now, now);
  return { rows: [...rows.values()], start, end };
}

export function drawGantt(host, events, runEnded) {
  const { rows, start, end } = timeline(events, runEnded);
  if (!rows.length || start === null) {
    host.replaceChildren(document.createTextNode("No node has started yet."));
    return;
  }
  const span = Math.max(end - start, 1);
  const x = (t) => LABEL + ((t - start) / span) * (WIDTH - LABEL - 10);
  const height = rows.length * ROW + 30;
  const root = svg("svg", { class: "gantt", viewBox: `0 0 ${WIDTH} ${height}`, width: WIDTH, height });
  for (let i = 0; i <= 4; i++) {
    const t = start + (span * i) / 4;
    const gx = x(t);
    root.append(svg("line", { x1: gx, x2: gx, y1: 0, y2: height - 18, class: "grid" }));
    const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
    root.append(svg("text", { x: gx, y: height - 4, class: "tick", "text-anchor": anchor }, `+${((t - start) / 1000).toFixed(1)}s`));
  }
  rows.forEach((r, i) => {
    const y = i * ROW + 4;
    root.append(svg("text", { x: 4, y: y + 15, class: "row-label" }, r.id));
    for (const bar of r.bars) {
      const x1 = x(bar.from);
      const w = Math.max(x(bar.to ?? bar.from) - x1, 3);
      const rect = svg("rect", {
        x: x1,
        y: y + (bar.kind === "wait" ? 6 : 2),
        width: w,
        height: bar.kind === "wait" ? ROW - 16 : ROW - 8,
        rx: 2,
        class: `bar bar-${bar.kind}`,
        "data-node": r.id,
      });
      rect.append(svg("title", {}, `${r.id}: ${bar.label} (${(((bar.to ?? bar.from) - bar.from) / 1000).toFixed(3)} s)`));
      root.append(rect);
    }
  });
  host.replaceChildren(root);
}
