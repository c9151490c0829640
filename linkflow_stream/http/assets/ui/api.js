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
 * subprotocol. Ends for good when `finished()` says the stream is over, when the server closes it
 * normally (1000: it meant to), or when the path answers 403 or 404. A socket refused before it
 * opened is asked about over HTTP (a browser does not say why a handshake failed): a 401 asks for
 * a key, as any call does, and then tries again. Otherwise it reconnects after `retryMs`, doubled
 * on each failure in a row up to `maxRetryMs` (an engine that is down is not hammered), and back
 * to `retryMs` once a socket opens. Returns a function that closes it for good.
 */
export function follow(path, onMessage, { finished = () => false, retryMs = 2000, maxRetryMs = 30000, onState } = {}) {
  let socket = null;
  let stopped = false;
  let timer = null;
  let delay = retryMs;
  const state = (s) => onState && onState(s);
  const end = () => {
    stopped = true;
    state("ended");
  };
  const again = () => {
    state("reconnecting");
    timer = setTimeout(open, delay);
    delay = Math.min(delay * 2, maxRetryMs);
  };
  /** Why the handshake failed, asked over HTTP: true when it is final (no such run, not allowed). */
  const refusedForGood = async () => {
    try {
      await api(path); // a WebSocket route answers 400 to a plain GET it may serve; 401 is asked here
      return false;
    } catch (err) {
      return err instanceof ApiError && (err.status === 403 || err.status === 404 || err.status === 401);
    }
  };
  const open = () => {
    if (stopped) return;
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
    const key = apiKey();
    let opened = false;
    socket = new WebSocket(url, key ? [WS_PROTOCOL, WS_KEY_PREFIX + key] : [WS_PROTOCOL]);
    socket.addEventListener("open", () => {
      opened = true;
      delay = retryMs;
      state("live");
    });
    socket.addEventListener("message", (msg) => onMessage(JSON.parse(msg.data)));
    socket.addEventListener("close", async (ev) => {
      if (stopped || finished() || ev.code === 1000) return end();
      if (!opened) {
        state("reconnecting");
        if (await refusedForGood()) return end();
        if (stopped) return;
      }
      again();
    });
  };
  open();
  return () => {
    stopped = true;
    clearTimeout(timer);
    if (socket) socket.close();
  };
}
