// The web UI: one page app over the JSON API. The path names the view; links inside /ui/ are
// followed without a reload. Every view stops its timers and sockets when it is left.

import { api, ApiError, apiKey, askForKey, follow, forgetKey } from "./api.js";
import { runsPage } from "./runs.js";
import { runPage } from "./run.js";
import { workflowsPage, workflowPage } from "./workflows.js";
import { opsPage } from "./ops.js";
import { h } from "./dom.js";

const app = document.getElementById("app");
let leave = () => {};

const ROUTES = [
  [/^\/ui\/?$/, () => navigate("/ui/executions", true)],
  [/^\/ui\/executions\/?$/, () => runsPage(app)],
  [/^\/ui\/executions\/([^/]+)$/, (m) => runPage(app, decoded(m[1]))],
  [/^\/ui\/workflows\/?$/, () => workflowsPage(app)],
  [/^\/ui\/workflows\/([^/]+)$/, (m) => workflowPage(app, decoded(m[1]))],
  [/^\/ui\/ops\/?$/, () => opsPage(app)],
];

/** A malformed %-escape in a pasted link is a bad link, not an uncaught error and a blank page. */
class BadLink extends Error {}

function decoded(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    throw new BadLink(part);
  }
}

export function navigate(url, replace = false) {
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  route();
}

function route() {
  leave();
  leave = () => {};
  const path = location.pathname;
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", path.startsWith(`/ui/${a.dataset.nav}`));
  }
  for (const [pattern, view] of ROUTES) {
    const m = path.match(pattern);
    if (m) {
      try {
        const stop = view(m);
        if (typeof stop === "function") leave = stop;
      } catch (err) {
        if (!(err instanceof BadLink)) throw err;
        app.replaceChildren(h("p", { class: "error", id: "bad-link" }, `Bad link: ${path} is not a well-formed address (a broken %-escape).`));
      }
      return;
    }
  }
  app.replaceChildren(h("p", { class: "error" }, `No page at ${path}.`));
}

document.addEventListener("click", (ev) => {
  const a = ev.target.closest("a[href]");
  if (!a || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || a.target) return;
  const url = new URL(a.href);
  if (url.origin === location.origin && url.pathname.startsWith("/ui/")) {
    ev.preventDefault();
    navigate(url.pathname + url.search);
  }
});
window.addEventListener("popstate", route);

function showWho() {
  const who = document.getElementById("who");
  const key = apiKey();
  who.replaceChildren();
  if (key) {
    who.append(
      h("span", { class: "muted" }, `key ${key.split("_")[1] || "?"}`),
      " ",
      h("button", { class: "link", id: "forget-key", onclick: () => { forgetKey(); location.reload(); } }, "forget key"),
    );
  }
}

document.getElementById("key-dialog").addEventListener("close", showWho);
showWho();
route();

export { api, ApiError, askForKey, follow };
