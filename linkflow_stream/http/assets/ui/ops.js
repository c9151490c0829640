// Operations: queue depth per priority, running runs, workers and pools, dead letters and cost
// per team, from /api/admin/queue/status, /api/workers/status, /metrics and /api/costs/report.
// Read again every few seconds. A key below admin sees what it may: the rest says why not.

import { api, metricsText } from "./api.js";
import { badge, h, put, seconds } from "./dom.js";
import { barChart, metricSum } from "./charts.js";

const REFRESH_MS = 3000;

export function opsPage(app) {
  const period = h("select", { id: "cost-period" }, ["day", "week", "month", "all"].map((p) => h("option", { value: p, selected: p === "month" }, p)));
  const queues = h("div", { id: "ops-queues" });
  const totals = h("div", { class: "tiles", id: "ops-tiles" });
  const workers = h("div", { id: "ops-workers" });
  const costs = h("div", { id: "ops-costs" });
  const running = h("div", { id: "ops-running-runs" });
  app.replaceChildren(
    h("h1", {}, "Operations"),
    totals,
    h("section", { class: "grid2" }, h("div", { class: "panel" }, h("h2", {}, "Queue depth per priority"), queues), h("div", { class: "panel" }, h("h2", {}, "Workers and pools"), workers)),
    h("section", { class: "panel" }, h("h2", {}, "Running now (newest first)"), running),
    h("section", { class: "panel" }, h("h2", {}, "Cost per team over the last ", period), costs),
  );
  period.addEventListener("change", () => load());

  // One loop of reads: a load started by a change of period (while another is under way) makes
  // the one under way drop its answers and plan nothing, so there is never a second loop.
  let timer = null;
  let stopped = false;
  let generation = 0;
  const load = async () => {
    const mine = ++generation;
    clearTimeout(timer);
    const [queue, registry, metrics, report, active] = await Promise.all([
      api("/api/admin/queue/status").catch((e) => e),
      api("/api/workers/status").catch((e) => e),
      metricsText().catch(() => ""),
      api(`/api/costs/report?group_by=team&period=${period.value}`).catch((e) => e),
      api("/api/executions?status=running&limit=10&view=summary").catch((e) => e),
    ]);
    if (stopped || mine !== generation) return; // left, or a newer load draws (and plans the next)
    if (!(active instanceof Error)) {
      put(
        running,
        active.executions.length
          ? h(
              "table",
              { class: "runs" },
              h("tbody", {}, active.executions.map((r) =>
                h("tr", { "data-id": r.id },
                  h("td", {}, h("a", { href: `/ui/executions/${encodeURIComponent(r.id)}`, class: "mono" }, r.id)),
                  h("td", {}, r.workflow_id), h("td", {}, r.team || "—"), h("td", {}, r.priority),
                  h("td", {}, badge(r.status)), h("td", {}, `for ${seconds(r.started_at)}`)))),
            )
          : h("p", { class: "muted" }, "Nothing is running."),
        active.next_cursor ? h("p", {}, h("a", { href: "/ui/executions?status=running" }, "all running runs →")) : null,
      );
    }
    const dlq = metricSum(metrics, "linkflow_dlq_messages_total");
    const tiles = [["Dead letters", dlq, "ops-dlq"]];
    if (!(queue instanceof Error)) {
      tiles.unshift(["Queued", queue.queued, "ops-queued"], ["Running", queue.running, "ops-running"], ["Consumer lag", queue.consumer_lag, "ops-lag"]);
      const rows = queue.order.map((p) => ({ label: p, values: [queue.queues[p].queued, queue.queues[p].running] }));
      queues.replaceChildren(barChart(rows, ["queued", "running"], { title: "queue depth per priority" }));
    } else {
      queues.replaceChildren(h("p", { class: "muted" }, `Not shown: ${queue.message}`));
    }
    if (!(registry instanceof Error)) {
      workers.replaceChildren(...drawWorkers(registry));
    } else {
      workers.replaceChildren(h("p", { class: "muted" }, `Not shown: ${registry.message}`));
    }
    if (!(report instanceof Error)) {
      const rows = (report.teams || []).map((g) => ({ label: g.team, values: [Number(g.total_cost || 0)] }));
      costs.replaceChildren(barChart(rows, ["cost"], { format: money, title: "cost per team" }));
    } else {
      costs.replaceChildren(h("p", { class: "muted" }, `Not shown: ${report.message}`));
    }
    totals.replaceChildren(...tiles.map(([label, value, id]) => h("div", { class: "tile", id }, h("div", { class: "tile-value" }, String(value)), h("div", { class: "muted" }, label))));
    timer = setTimeout(load, REFRESH_MS);
  };
  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/** A cost in dollars: small ones (a run costs fractions of a cent) in scientific notation. */
function money(v) {
  if (v === 0) return "$0";
  return v < 0.001 ? `$${v.toExponential(2)}` : `$${v.toFixed(4)}`;
}

function drawWorkers(status) {
  const list = status.workers || [];
  const pools = {};
  for (const w of list) {
    if (!w.alive) continue;
    for (const [pool, p] of Object.entries(w.pools || {})) {
      pools[pool] = pools[pool] || { slots: 0, used: 0 };
      pools[pool].slots += p.slots;
      pools[pool].used += p.slots_in_use;
    }
  }
  const rows = Object.entries(pools).map(([pool, p]) => ({ label: pool, values: [p.used, Math.max(p.slots - p.used, 0)] }));
  return [
    h("p", { class: "muted" }, `${status.alive} of ${status.count} workers up; ${status.running} of ${status.capacity} slots in use.`),
    barChart(rows, ["slots in use", "free slots"], { title: "slots per pool" }),
    h(
      "table",
      { class: "runs", id: "workers-table" },
      h("thead", {}, h("tr", {}, ["Worker", "Roles", "Pools", "Slots in use", "Health"].map((t) => h("th", {}, t)))),
      h(
        "tbody",
        {},
        list.map((w) =>
          h(
            "tr",
            { "data-worker": w.id },
            h("td", { class: "mono" }, w.id),
            h("td", {}, (w.roles || []).join(", ")),
            h("td", {}, Object.keys(w.pools || {}).join(", ") || (w.tags || []).join(", ")),
            h("td", {}, `${w.slots_in_use} / ${w.slots}`),
            h("td", {}, h("span", { class: `badge state-${w.health === "up" ? "success" : "failed"}` }, w.health)),
          ),
        ),
      ),
    ),
  ];
}
