// Drives api.js's follow() with a fake WebSocket, fetch, timers and key dialog, and prints what
// happened as JSON (tests/unit/test_ui_follow.py runs it with node and checks the result).
const [assetsDir, scenario] = process.argv.slice(2);

const store = new Map();
globalThis.localStorage = {
  getItem: (k) => (store.has(k) ? store.get(k) : null),
  setItem: (k, v) => store.set(k, String(v)),
  removeItem: (k) => store.delete(k),
};
globalThis.location = { protocol: "http:", host: "127.0.0.1:8084" };

const seen = { sockets: [], delays: [], states: [], fetches: [], dialogs: 0 };
const elements = {};
const element = (id) =>
  (elements[id] ||= {
    id,
    value: "",
    textContent: "",
    listeners: {},
    addEventListener(type, fn) {
      this.listeners[type] = fn;
    },
    showModal() {
      seen.dialogs += 1;
      elements["key-input"].value = "lfk_0123456789ab_new";
      setImmediate(() => this.listeners.close && this.listeners.close());
    },
  });
globalThis.document = { getElementById: element };

// the handshake's answer, asked over HTTP after a socket that never opened
const probes = { gone: [404], refused_then_key: [401, 400], down: [400, 400, 400, 400, 400] }[scenario] || [];
globalThis.fetch = async (path, init) => {
  seen.fetches.push({ path, auth: (init.headers || {}).Authorization || null });
  const status = probes.shift() ?? 400;
  return { status, ok: status < 300, text: async () => JSON.stringify({ error: { type: "x", message: "y" } }) };
};

const realSetTimeout = globalThis.setTimeout;
globalThis.setTimeout = (fn, ms) => {
  seen.delays.push(ms);
  return realSetTimeout(fn, 1);
};

// how each socket goes: opens then closes with a code, or fails before opening (1006)
const plans = {
  gone: ["fail"],
  refused_then_key: ["fail", "fail"],
  down: ["fail", "fail", "fail", "fail", "open-1006", "fail"],
  normal_close: ["open-1000"],
}[scenario];
class FakeSocket {
  constructor(url, protocols) {
    this.listeners = {};
    seen.sockets.push({ url, protocols });
    const plan = plans[seen.sockets.length - 1] || "hang";
    setImmediate(() => {
      if (plan === "hang") return;
      if (plan.startsWith("open")) this.listeners.open && this.listeners.open({});
      const code = plan === "fail" ? 1006 : Number(plan.split("-")[1]);
      this.listeners.close && this.listeners.close({ code });
    });
  }
  addEventListener(type, fn) {
    this.listeners[type] = fn;
  }
  close() {}
}
globalThis.WebSocket = FakeSocket;

const { follow } = await import(`${assetsDir}/api.js`);
const stop = follow("/api/executions/r1/watch", () => {}, { retryMs: 100, maxRetryMs: 400, onState: (s) => seen.states.push(s) });
await new Promise((ok) => realSetTimeout(ok, 300));
stop();
console.log(JSON.stringify(seen));
