// One run: its DAG coloured by node state and kept live over GET /api/executions/{id}/watch, the
// picked node's input, output, error, attempts and logs, the timeline of its attempts and waits
// (from its events), its transition history, and the actions the API offers, each confirmed.
// A failed run opens on its failed node, so its error is one click from the runs list.

import { api, follow } from "./api.js";
import { badge, confirmAction, h, pretty, put, seconds, when } from "./dom.js";
import { drawDag } from "./dag.js";
import { drawGantt } from "./gantt.js";
import { navigate } from "./app.js";

const TERMINAL = new Set(["success", "failed", "cancelled"]);
// Each read of /events has the engine scan the run's partition of the event log, and each read of
// /logs queries the log view: while a run changes, the page reads them at most this often, one
// call at a time (the next is planned when the last has answered), never while the tab is hidden,
// and once more when the run has ended.
const EVENTS_EVERY_MS = 4000;
const LOGS_EVERY_MS = 3000;

export function runPage(app, id) {
  const view = { run: null, workflow: null, events: [], picked: null, pickedByUser: false };
  const title = h("h1", {}, "Run ", h("span", { class: "mono" }, id), " ", h("span", { id: "run-status" }));
  const live = h("span", { class: "live", id: "run-live" });
  const facts = h("dl", { class: "facts", id: "run-facts" });
  const actions = h("div", { class: "actions", id: "run-actions" });
  const message = h("p", { class: "error", id: "run-error" });
  const dagHost = h("div", { class: "dag-host", id: "dag" }, h("p", { class: "muted" }, "Loading…"));
  const detail = h("aside", { class: "detail", id: "node-detail" }, h("p", { class: "muted" }, "Click a node to see its input, output, error and logs."));
  const gantt = h("div", { class: "gantt-host", id: "gantt" });
  const history = h("div", { id: "history" });
  app.replaceChildren(
    title,
    h("div", { class: "toolbar" }, actions, live),
    message,
    facts,
    h(
      "section",
      { class: "split" },
      h(
        "div",
        {},
        h("div", { class: "panel" }, h("h2", {}, "DAG"), dagHost),
        h("div", { class: "panel" }, h("h2", {}, "Timeline"), gantt),
        h("div", { class: "panel" }, h("h2", {}, "History"), history),
      ),
      detail,
    ),
  );

  let stopped = false;

  const draw = () => {
    const run = view.run;
    if (!run) return;
    document.getElementById("run-status").replaceChildren(badge(run.status));
    facts.replaceChildren(
      ...fact("Workflow", h("a", { href: `/ui/workflows/${encodeURIComponent(run.workflow_id)}` }, run.workflow_id), ` v${run.workflow_version}`),
      ...fact("Team", run.team || "—"),
      ...fact("Priority", run.priority),
      ...fact("Created", when(run.created_at)),
      ...fact("Started", when(run.started_at)),
      ...fact("Finished", when(run.finished_at)),
      ...fact("Took", run.started_at ? seconds(run.started_at, run.finished_at) : "—"),
      ...(run.rerun_of ? fact("Rerun of", runLink(run.rerun_of)) : []),
      ...((run.reruns || []).length ? fact("Reruns", ...run.reruns.map(runLink)) : []),
      ...(run.parent ? fact("Parent", runLink(run.parent)) : []),
      ...((run.children || []).length ? fact("Children", ...run.children.map(runLink)) : []),
    );
    drawActions();
    if (view.workflow) {
      if (!view.pickedByUser && run.status === "failed") {
        const failed = Object.entries(run.nodes).find(([, n]) => n.status === "failed");
        if (failed) view.picked = failed[0];
      }
      drawDag(dagHost, view.workflow, run.nodes, { onPick: pick, selected: view.picked });
    }
    drawDetail();
    history.replaceChildren(
      h(
        "table",
        { class: "history" },
        h("thead", {}, h("tr", {}, ["At", "From", "To", "Reason"].map((t) => h("th", {}, t)))),
        h(
          "tbody",
          {},
          run.history.map((t) => h("tr", {}, h("td", { class: "mono" }, when(t.at)), h("td", {}, t.from || "—"), h("td", {}, badge(t.to)), h("td", {}, t.reason || ""))),
        ),
      ),
    );
  };

  const pick = (nodeId) => {
    view.picked = nodeId;
    view.pickedByUser = true;
    draw();
    logsSoon();
  };

  // The picked node's log lines: one call in flight per node, a reply for a node no longer picked
  // (or older than the last one asked) dropped, and a running node's lines read again at most
  // every LOGS_EVERY_MS (at once when another node is picked).
  const logsBox = h("div", { id: "node-logs" });
  const logs = { asked: 0, busyFor: null, shownFor: null, lastFor: null, last: 0, wanted: false, timer: null, finalFor: null };
  const logsSoon = () => {
    logs.wanted = true;
    pumpLogs();
  };
  const pumpLogs = () => {
    const nodeId = view.picked;
    if (stopped || !nodeId || !logs.wanted || logs.busyFor === nodeId || document.hidden) return;
    const ended = view.run && TERMINAL.has(view.run.status);
    if (ended && logs.finalFor === nodeId) {
      logs.wanted = false; // read once after the run ended: nothing new can come
      return;
    }
    const fresh = logs.lastFor !== nodeId;
    const wait = fresh || ended ? 0 : logs.last + LOGS_EVERY_MS - Date.now();
    clearTimeout(logs.timer);
    logs.timer = null;
    if (wait > 0) {
      logs.timer = setTimeout(pumpLogs, wait);
      return;
    }
    logs.wanted = false;
    logs.busyFor = logs.lastFor = nodeId;
    if (ended) logs.finalFor = nodeId;
    loadLogs(nodeId, ++logs.asked).finally(() => {
      if (logs.busyFor === nodeId) logs.busyFor = null;
      logs.last = Date.now();
      pumpLogs();
    });
  };
  const loadLogs = async (nodeId, asked) => {
    if (logs.shownFor !== nodeId) {
      logs.shownFor = nodeId;
      logsBox.replaceChildren(h("p", { class: "muted" }, "Loading…"));
    }
    const current = () => !stopped && asked === logs.asked && view.picked === nodeId;
    try {
      const found = await api(`/api/executions/${encodeURIComponent(id)}/logs?node_id=${encodeURIComponent(nodeId)}&limit=500`);
      if (!current()) return; // a newer call was made, or another node picked: its answer is shown
      logsBox.replaceChildren(
        found.logs.length
          ? h("ol", { class: "logs" }, found.logs.map((l) => h("li", { class: `level-${l.level}` }, h("span", { class: "mono muted" }, when(l.at).slice(11), " "), l.message)))
          : h("p", { class: "muted" }, "No lines."),
      );
    } catch (err) {
      if (current()) logsBox.replaceChildren(h("p", { class: "error" }, String(err.message || err)));
    }
  };

  const drawDetail = () => {
    const run = view.run;
    const nodeId = view.picked;
    if (!run || !nodeId || !run.nodes[nodeId]) return;
    const n = run.nodes[nodeId];
    const def = view.workflow ? view.workflow.nodes.find((x) => x.id === nodeId) : null;
    const deps = def ? def.depends_on || [] : [];
    const input = { input: run.input_data, nodes: Object.fromEntries(deps.map((d) => [d, run.nodes[d] ? run.nodes[d].output : null])) };
    put(
      detail,
      h("h2", {}, "Node ", h("span", { class: "mono", id: "detail-node" }, nodeId), " ", badge(n.status)),
      def ? h("p", { class: "muted" }, `${def.type} node · pool ${def.pool || "default"}`) : null,
      n.error
        ? h(
            "div",
            { class: "node-error", id: "node-error" },
            h("h3", {}, "Error"),
            h("dl", { class: "facts" }, ...fact("Class", h("span", { id: "error-class" }, n.error.error_class)), ...fact("Message", h("span", { id: "error-message" }, n.error.message)), ...fact("Retryable", h("span", { id: "error-retryable" }, n.error.retryable ? "yes" : "no"))),
          )
        : null,
      h("dl", { class: "facts" }, ...fact("Attempts", String(n.attempts)), ...fact("Started", when(n.started_at)), ...fact("Finished", when(n.finished_at)), ...fact("Took", n.started_at ? seconds(n.started_at, n.finished_at) : "—"), ...(n.reused ? fact("Reused", "output taken from the original run") : [])),
      h("h3", {}, "Input"),
      h("p", { class: "muted small" }, "What the node's expressions see: the run's input and its dependencies' outputs."),
      pretty(input),
      def && Object.keys(def.config || {}).length ? [h("h3", {}, "Config"), pretty(def.config)] : null,
      h("h3", {}, "Output"),
      pretty(n.output),
      n.usage ? [h("h3", {}, "Usage"), pretty(n.usage)] : null,
      h("h3", {}, "Logs"),
      logsBox,
    );
  };

  const drawActions = () => {
    const run = view.run;
    const can = [];
    if (!TERMINAL.has(run.status)) can.push(["Cancel", "cancel", {}, `Cancel run ${id}? Nodes still running are cancelled.`]);
    if (run.status === "running") can.push(["Pause", "pause", {}, `Pause run ${id}? Nothing new is dispatched until it is resumed.`]);
    if (run.status === "paused") can.push(["Resume", "resume", undefined, `Resume run ${id}?`]);
    if (run.status === "failed") can.push(["Rerun failed nodes", "rerun", { from: "failed" }, `Start a new run of ${id} that reuses the nodes that succeeded?`]);
    if (TERMINAL.has(run.status)) can.push(["Rerun from start", "rerun", { from: "start" }, `Start a new run of ${id} from the start?`]);
    actions.replaceChildren(
      ...can.map(([label, verb, body, question]) =>
        h(
          "button",
          {
            id: `action-${verb}${body && body.from ? `-${body.from}` : ""}`,
            class: verb === "cancel" ? "danger" : "",
            onclick: async () => {
              if (!(await confirmAction(question))) return;
              try {
                const answer = await api(`/api/executions/${encodeURIComponent(id)}/${verb}`, { method: "POST", body: body === undefined ? undefined : body });
                message.textContent = "";
                if (verb === "rerun" && answer && answer.id) navigate(`/ui/executions/${encodeURIComponent(answer.id)}`);
              } catch (err) {
                message.textContent = String(err.message || err);
              }
            },
          },
          label,
        ),
      ),
    );
  };

  const events = { busy: false, wanted: false, timer: null, last: 0, final: false };
  const loadEvents = async () => {
    try {
      const found = await api(`/api/executions/${encodeURIComponent(id)}/events`);
      if (stopped) return;
      view.events = found.events;
      if (!view.workflow) {
        const created = found.events.find((e) => e.type === "execution_created" && e.workflow);
        if (created) {
          view.workflow = created.workflow;
          draw();
        }
      }
      drawGantt(gantt, view.events, view.run && TERMINAL.has(view.run.status));
    } catch (err) {
      if (!stopped) gantt.replaceChildren(h("p", { class: "muted" }, `No timeline: ${err.message || err}`));
    }
  };
  /** The run changed: read its events again, when the rules at EVENTS_EVERY_MS allow. */
  const eventsSoon = () => {
    events.wanted = true;
    pumpEvents();
  };
  const pumpEvents = () => {
    if (stopped || !events.wanted || events.busy || document.hidden) return;
    const ended = view.run && TERMINAL.has(view.run.status);
    if (ended && events.final) {
      events.wanted = false;
      return;
    }
    const wait = ended ? 0 : events.last + EVENTS_EVERY_MS - Date.now();
    clearTimeout(events.timer);
    events.timer = null;
    if (wait > 0) {
      events.timer = setTimeout(pumpEvents, wait);
      return;
    }
    events.wanted = false;
    events.busy = true;
    if (ended) events.final = true; // the last read: every event of an ended run is in the log
    loadEvents().finally(() => {
      events.busy = false;
      events.last = Date.now();
      pumpEvents();
    });
  };
  // a hidden tab reads nothing; shown again, it catches up on what it missed
  const onVisible = () => {
    if (!document.hidden) {
      pumpEvents();
      pumpLogs();
    }
  };
  document.addEventListener("visibilitychange", onVisible);

  const loadWorkflow = async (run) => {
    try {
      view.workflow = await api(`/api/workflows/${encodeURIComponent(run.workflow_id)}?version=${run.workflow_version}`);
    } catch {
      view.workflow = null; // a version from before ADR 0048 may be compacted away: the run's first event has it
    }
  };

  const onBody = async (run) => {
    const first = !view.run;
    view.run = run;
    if (first) await loadWorkflow(run);
    draw();
    if (view.picked) logsSoon(); // the picked node's lines (or the failed node's, picked for the user)
    eventsSoon();
  };

  // the running bars of the timeline grow with the clock between events
  const ticking = setInterval(() => {
    if (view.run && !TERMINAL.has(view.run.status) && view.events.length && !document.hidden) {
      drawGantt(gantt, view.events, false);
    }
  }, 1000);

  let unfollow = () => {};
  (async () => {
    try {
      await onBody(await api(`/api/executions/${encodeURIComponent(id)}`));
    } catch (err) {
      message.textContent = String(err.message || err);
      app.replaceChildren(title, message); // no run to show: no empty panels either
      return;
    }
    if (stopped || TERMINAL.has(view.run.status)) {
      live.textContent = "ended";
      return;
    }
    unfollow = follow(`/api/executions/${encodeURIComponent(id)}/watch`, (body) => onBody(body), {
      finished: () => stopped || (view.run && TERMINAL.has(view.run.status)),
      onState: (s) => (live.textContent = s),
    });
  })();

  return () => {
    stopped = true;
    clearTimeout(events.timer);
    clearTimeout(logs.timer);
    document.removeEventListener("visibilitychange", onVisible);
    clearInterval(ticking);
    unfollow();
  };
}

function fact(name, ...value) {
  return [h("dt", {}, name), h("dd", {}, ...value)];
}

function runLink(runId) {
  return h("a", { href: `/ui/executions/${encodeURIComponent(runId)}`, class: "mono" }, runId, " ");
}
