// The UI's only way to the engine: JSON calls and WebSockets to this origin, with the API key
// (when keys are on) kept in localStorage and sent on every call. A 401 asks for a key and
// repeats the call with it.

const KEY_STORE = "linkflow.apiKey";
const WS_PROTOCOL = "linkflow";
const WS_KEY_PREFIX = "bearer."; // a browser cannot set Authorization on a WebSocket (ADR 0038)

export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && body.error ? `${body.error.type}: ${body.error.message}` : String(body);
    super(`${status} ${detail}`);
    this.status = status;
    this.body = body;
  }
}

export function apiKey() {
  return localStorage.getItem(KEY_STORE) || "";
}

export function forgetKey() {
  localStorage.removeItem(KEY_STORE);
}

let asking = null;

/** Show the key dialog; resolves once a key is saved. One dialog for many callers. */
export function askForKey(why) {
  if (asking) return asking;
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  document.getElementById("key-why").textContent =
    why || "This engine needs an API key. It is kept in this browser and sent with every call.";
  document.getElementById("key-error").textContent = "";
  input.value = "";
  asking = new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        const key = input.value.trim();
        if (key) localStorage.setItem(KEY_STORE, key);
        asking = null;
        resolve(key);
      },
      { once: true },
    );
  });
  dialog.showModal();
  return asking;
}

/** A JSON call; on 401 asks for a key and tries again with it. */
export async function api(path, { method = "GET", body, headers = {} } = {}) {
  for (let tries = 0; tries < 3; tries++) {
    const all = { ...headers };
    const key = apiKey();
    if (key) all.Authorization = `Bearer ${key}`;
    if (body !== undefined) all["Content-Type"] = "application/json";
    const resp = await fetch(path, {
      method,
      headers: all,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await resp.text();
    let parsed = text;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      /* not JSON: kept as text */
    }
    if (resp.status === 401) {
      const why = key
        ? "The engine refused this key (unknown or revoked). Give another one."
        : "This engine needs an API key. It is kept in this browser and sent with every call.";
      await askForKey(why);
      continue;
    }
    if (!resp.ok) throw new ApiError(resp.status, parsed);
    return parsed;
  }
  throw new ApiError(401, { error: { type: "unauthorized", message: "no accepted API key" } });
}

/** Prometheus text from /metrics (open: no key needed). */
export async function metricsText() {
  const resp = await fetch("/metrics");
  return resp.ok ? resp.text() : "";
}

/**
 * A WebSocket to `path` that hands each JSON message to `onMessage`, with the key offered as a
 * subprotocol. Reconnects (after `retryMs`) when the server closes it early, unless
 * `finished()` says the stream is over. Returns a function that closes it for good.
 */
export function follow(path, onMessage, { finished = () => false, retryMs = 2000, onState } = {}) {
  let socket = null;
  let stopped = false;
  let timer = null;
  const open = () => {
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
    const key = apiKey();
    socket = new WebSocket(url, key ? [WS_PROTOCOL, WS_KEY_PREFIX + key] : [WS_PROTOCOL]);
    socket.addEventListener("open", () => onState && onState("live"));
    socket.addEventListener("message", (msg) => onMessage(JSON.parse(msg.data)));
    socket.addEventListener("close", () => {
      if (stopped || finished()) {
        onState && onState("ended");
        return;
      }
      onState && onState("reconnecting");
      timer = setTimeout(open, retryMs);
    });
  };
  open();
  return () => {
    stopped = true;
    clearTimeout(timer);
    if (socket) socket.close();
  };
}
