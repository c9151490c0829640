// Workflows: the list, and one workflow's versions, the DAG of each, and a form that starts a
// run of it with a JSON input and a priority.

import { api } from "./api.js";
import { h, pretty, when } from "./dom.js";
import { drawDag } from "./dag.js";
import { navigate } from "./app.js";

export function workflowsPage(app) {
  const body = h("tbody", { id: "workflows-body" });
  const error = h("p", { class: "error" });
  app.replaceChildren(
    h("h1", {}, "Workflows"),
    error,
    h("table", { class: "runs" }, h("thead", {}, h("tr", {}, ["Workflow", "Name", "Latest version", "Team", ""].map((t) => h("th", {}, t)))), body),
  );
  api("/api/workflows")
    .then(({ workflows }) => {
      workflows.sort((a, b) => a.id.localeCompare(b.id));
      body.replaceChildren(
        ...workflows.map((w) =>
          h(
            "tr",
            { "data-id": w.id },
            h("td", {}, h("a", { href: `/ui/workflows/${encodeURIComponent(w.id)}`, class: "mono" }, w.id)),
            h("td", {}, w.name || ""),
            h("td", {}, `v${w.version}`),
            h("td", {}, w.team || "—"),
            h("td", {}, h("a", { href: `/ui/executions?workflow_id=${encodeURIComponent(w.id)}` }, "runs")),
          ),
        ),
      );
      if (!workflows.length) body.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No workflows registered yet.")));
    })
    .catch((err) => (error.textContent = String(err.message || err)));
}

export function workflowPage(app, id) {
  const params = new URLSearchParams(location.search);
  const error = h("p", { class: "error", id: "wf-error" });
  const versions = h("ol", { class: "versions", id: "wf-versions" });
  const dagHost = h("div", { class: "dag-host", id: "dag" });
  const definition = h("details", {}, h("summary", {}, "Definition (JSON)"));
  const input = h("textarea", { id: "start-input", rows: 6, cols: 60, spellcheck: false }, "{}");
  const priority = h("select", { id: "start-priority" }, ["normal", "high", "low"].map((p) => h("option", { value: p }, p)));
  const startError = h("p", { class: "error", id: "start-error" });
  const form = h(
    "form",
    { class: "start", id: "start-form" },
    h("label", {}, h("span", {}, "Input (JSON)"), input),
    h("label", {}, h("span", {}, "Priority"), priority),
    h("button", { type: "submit", id: "start-run" }, "Start a run"),
    startError,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    let data;
    try {
      data = JSON.parse(input.value || "null");
    } catch (err) {
      startError.textContent = `The input is not JSON: ${err.message}`;
      return;
    }
    try {
      const answer = await api("/api/executions", {
        method: "POST",
        headers: { "X-Priority": priority.value },
        body: { workflow_id: id, input_data: data },
      });
      navigate(`/ui/executions/${encodeURIComponent(answer.id)}`);
    } catch (err) {
      startError.textContent = String(err.message || err);
    }
  });
  app.replaceChildren(
    h("h1", {}, "Workflow ", h("span", { class: "mono" }, id)),
    error,
    h("p", {}, h("a", { href: `/ui/executions?workflow_id=${encodeURIComponent(id)}` }, "Runs of this workflow")),
    h(
      "section",
      { class: "split" },
      h("div", { class: "panel" }, h("h2", { id: "wf-version-title" }, "DAG"), dagHost, definition),
      h("aside", { class: "detail" }, h("h2", {}, "Versions"), versions, h("h2", {}, "Start"), form),
    ),
  );

  const show = async (version) => {
    try {
      const wf = await api(`/api/workflows/${encodeURIComponent(id)}${version ? `?version=${version}` : ""}`);
      document.getElementById("wf-version-title").textContent = `DAG of version ${wf.version}`;
      drawDag(dagHost, wf, {});
      definition.replaceChildren(h("summary", {}, "Definition (JSON)"), pretty(wf));
      for (const li of versions.children) li.classList.toggle("active", li.dataset.version === String(wf.version));
    } catch (err) {
      error.textContent = String(err.message || err);
    }
  };
  api(`/api/workflows/${encodeURIComponent(id)}/versions`)
    .then((found) => {
      versions.replaceChildren(
        ...found.versions.map((v) =>
          h(
            "li",
            { "data-version": v.version },
            h("a", { href: `/ui/workflows/${encodeURIComponent(id)}?version=${v.version}`, onclick: (ev) => { ev.preventDefault(); history.replaceState(null, "", `?version=${v.version}`); show(v.version); } }, `v${v.version}`),
            h("span", { class: "muted" }, ` ${when(v.created_at)} · ${v.nodes} nodes`),
          ),
        ),
      );
      show(params.get("version") || found.latest);
    })
    .catch((err) => (error.textContent = String(err.message || err)));
}
