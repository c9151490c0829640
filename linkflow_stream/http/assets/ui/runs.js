// The runs list: filters (kept in the URL), newest first, cursor paging, and live status: the
// page on screen is read again every few seconds (ADR 0038: a list is a query over the store,
// so a cheap re-read of one page beats pushing every change to every filter).

import { api } from "./api.js";
import { badge, h, seconds, when } from "./dom.js";
import { navigate } from "./app.js";

const STATUSES = ["", "pending", "queued", "running", "paused", "success", "failed", "cancelled"];
const PRIORITIES = ["", "high", "normal", "low"];
const FILTERS = ["status", "workflow_id", "team", "priority", "created_after", "created_before"];
const REFRESH_MS = 2000;
const PAGE_SIZE = 20;

export function runsPage(app) {
  const params = new URLSearchParams(location.search);
  const cursors = params.get("cursors") ? params.get("cursors").split(",") : [];
  const cursor = cursors.length ? cursors[cursors.length - 1] : "";
  const limit = params.get("limit") || String(PAGE_SIZE);

  const field = (name, control) => h("label", {}, h("span", {}, name), control);
  const select = (name, values) =>
    h("select", { name, id: `f-${name}` }, values.map((v) => h("option", { value: v, selected: params.get(name) === v }, v || "any")));
  const text = (name, placeholder) => h("input", { name, id: `f-${name}`, value: params.get(name) || "", placeholder });
  const time = (name) => h("input", { name, id: `f-${name}`, type: "datetime-local", step: 1, value: toLocal(params.get(name)) });

  const form = h(
    "form",
    { class: "filters", id: "filters" },
    field("status", select("status", STATUSES)),
    field("workflow", text("workflow_id", "workflow id")),
    field("team", text("team", "team")),
    field("priority", select("priority", PRIORITIES)),
    field("created after", time("created_after")),
    field("created before", time("created_before")),
    h("button", { type: "submit" }, "Apply"),
    h("a", { href: "/ui/executions", class: "button-link" }, "Clear"),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const name of FILTERS) {
      let v = form.elements[name].value.trim();
      if (v && name.startsWith("created_")) v = new Date(v).toISOString();
      if (v) q.set(name, v);
    }
    navigate(`/ui/executions${q.toString() ? `?${q}` : ""}`);
  });

  const body = h("tbody", { id: "runs-body" });
  const table = h(
    "table",
    { class: "runs", id: "runs" },
    h("thead", {}, h("tr", {}, ["Run", "Workflow", "Team", "Status", "Priority", "Created", "Took"].map((t) => h("th", {}, t)))),
    body,
  );
  const live = h("span", { class: "live", id: "runs-live" }, "");
  const pager = h("div", { class: "pager" });
  const error = h("p", { class: "error", id: "runs-error" });
  app.replaceChildren(h("h1", {}, "Runs ", live), form, error, table, pager);

  const query = new URLSearchParams();
  for (const name of FILTERS) if (params.get(name)) query.set(name, params.get(name));
  query.set("limit", limit);
  query.set("view", "summary"); // a row shows no input or output: pages stay small whatever runs carry
  if (cursor) query.set("cursor", cursor);

  const pageUrl = (list) => {
    const q = new URLSearchParams();
    for (const name of FILTERS) if (params.get(name)) q.set(name, params.get(name));
    if (params.get("limit")) q.set("limit", params.get("limit"));
    if (list.length) q.set("cursors", list.join(","));
    return `/ui/executions${q.toString() ? `?${q}` : ""}`;
  };

  let shown = "";
  let timer = null;
  let stopped = false;
  const load = async () => {
    if (document.hidden && shown) {
      timer = setTimeout(load, REFRESH_MS); // a hidden tab reads nothing until it is looked at
      return;
    }
    try {
      const page = await api(`/api/executions?${query}`);
      error.textContent = "";
      const fingerprint = JSON.stringify(page.executions.map((r) => [r.id, r.status]));
      if (fingerprint !== shown) {
        shown = fingerprint;
        body.replaceChildren(...page.executions.map(row));
        if (!page.executions.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No runs match.")));
      }
      pager.replaceChildren(
        cursors.length
          ? h("a", { href: pageUrl(cursors.slice(0, -1)), id: "newer" }, "← Newer")
          : h("span", { class: "muted" }, "Newest"),
        h("span", { class: "muted" }, ` page ${cursors.length + 1} `),
        page.next_cursor
          ? h("a", { href: pageUrl([...cursors, page.next_cursor]), id: "older" }, "Older →")
          : h("span", { class: "muted" }, "Oldest"),
      );
      live.textContent = "live";
    } catch (err) {
      error.textContent = String(err.message || err);
      live.textContent = "";
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  };
  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function row(r) {
  return h(
    "tr",
    { "data-id": r.id, "data-status": r.status },
    h("td", {}, h("a", { href: `/ui/executions/${encodeURIComponent(r.id)}`, class: "run-link mono" }, r.id)),
    h("td", {}, h("a", { href: `/ui/workflows/${encodeURIComponent(r.workflow_id)}` }, r.workflow_id), ` v${r.workflow_version}`),
    h("td", {}, r.team || "—"),
    h("td", {}, badge(r.status)),
    h("td", {}, r.priority),
    h("td", { class: "mono" }, when(r.created_at)),
    h("td", {}, r.started_at ? seconds(r.started_at, r.finished_at) : "—"),
  );
}

function toLocal(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const local = new Date(d.getTime() - d.getTimezoneOffset() * 60000);
  return local.toISOString().slice(0, 19);
}
