// The Syncra dashboard: polls /api/status and /api/streams, follows /api/events, and posts
// actions. Every value from the runtime goes into the page as text, never as markup.
"use strict";

const EVENTS_KEPT = 200;
const REFRESH_MS = 1000;

// The token: from the link `syncra dashboard` prints (#token=…, never sent to a server), or
// ?token=…; kept for this tab only.
const token = (() => {
  const from = (s) => new URLSearchParams(s.replace(/^[#?]/, "")).get("token");
  const t = from(location.hash) || from(location.search) || sessionStorage.getItem("syncra-token");
  if (t) sessionStorage.setItem("syncra-token", t);
  return t;
})();

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}

async function api(path, method = "GET") {
  const res = await fetch(path, { method, headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error ? body.error.message : `${res.status} ${res.statusText}`);
  return body;
}

// Whether the message shown is refresh()'s own error, which its next success takes away.
let refreshFailed = false;

function say(text, isError) {
  const m = $("#message");
  m.hidden = false;
  m.textContent = text;
  m.className = isError ? "error" : "";
  refreshFailed = false;
}

function duration(ms) {
  if (ms == null) return "";
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
}

function figure(v) {
  // JSON has no NaN or infinity: a node's figure that is one arrives as null.
  if (typeof v !== "number") return "—";
  return Number.isInteger(v) ? String(v) : v.toFixed(2);
}

function renderStatus(status) {
  const rt = status.runtime;
  $("#runtime").textContent =
    `v${rt.version} · pid ${rt.pid} · up ${duration(rt.uptime_ms)} · ${status.nodes.length} nodes` +
    (rt.shutting_down ? " · shutting down" : "");
  const body = $("#nodes tbody");
  const rows = status.nodes.map((n) => {
    const actions = el("td", {},
      ...["restart", "stop", "start"].map((a) =>
        el("button", {
          "data-action": a, "data-node": n.name, type: "button",
          // Start only what is not running; stop only what is.
          disabled: (a === "start" && !["stopped", "failed"].includes(n.state)) ||
            (a === "stop" && n.state === "stopped"),
        }, a)),
      el("button", { "data-crashes": n.name, type: "button" }, "crashes"));
    return el("tr", { "data-node": n.name },
      el("td", {}, n.name + (n.host ? `@${n.host}` : "")),
      el("td", { class: `state-${n.state}`, "data-state": n.state }, n.state),
      el("td", { class: "num" }, n.pid ?? ""),
      el("td", { class: "num", "data-incarnation": n.incarnation }, n.incarnation),
      el("td", { class: "num" }, n.restarts),
      el("td", { class: "num" }, duration(n.uptime_ms)),
      el("td", { class: "num" }, n.tick ?? ""),
      el("td", {}, (n.figures || []).map((f) => `${f.name} ${figure(f.value)}`).join(" · ")),
      el("td", { class: "muted" }, n.note || n.detail || ""),
      actions);
  });
  body.replaceChildren(...rows);
}

function renderStreams(streams) {
  const rows = streams.map((s) =>
    el("tr", { "data-stream": s.name },
      el("td", {}, s.name + (s.producer_host ? `@${s.producer_host} [bridged]` : "")),
      el("td", { class: "muted" }, s.type_tag),
      el("td", {}, s.producer + (s.producer_live ? "" : " (gone)")),
      el("td", { class: "num" }, `${s.rate_hz.toFixed(1)} Hz`),
      el("td", { class: "num" }, s.published),
      el("td", {}, s.consumers.map((c) => `${c.node} ${c.lag} / ${c.dropped}`).join(" · "))));
  $("#streams tbody").replaceChildren(...rows);
}

function describe(ev) {
  const w = ev.what;
  switch (w.event) {
    case "up": return `up in ${w.startup_ms.toFixed(1)} ms`;
    case "hung": return `hung: silent ${w.silent_ms} ms`;
    case "down": {
      const e = w.exit;
      const how = e.signal ? e.signal : `exit ${e.code}`;
      return `down (${e.reason}, ${how})`;
    }
    case "restarting": return `restarting in ${w.delay_ms} ms: ${w.cause}`;
    case "failed": return `failed: ${w.message}`;
    default: return w.event;
  }
}

function showEvent(ev) {
  const time = new Date(ev.unix_ms).toLocaleTimeString();
  const li = el("li", {
    class: `kind-${ev.what.event}`,
    "data-node": ev.node,
    "data-event": ev.what.event,
    "data-incarnation": ev.incarnation,
    // When the page showed it (ms since the Unix epoch, sub-millisecond): `just bench` reads it.
    "data-shown-at": String(performance.timeOrigin + performance.now()),
  }, `${time} ${ev.node} #${ev.incarnation}${ev.pid ? ` (pid ${ev.pid})` : ""} ${describe(ev)}`);
  const list = $("#events");
  list.prepend(li);
  while (list.children.length > EVENTS_KEPT) list.lastElementChild.remove();
}

let refreshing = null;
let again = false;
async function refresh() {
  if (refreshing) { again = true; return refreshing; }
  refreshing = (async () => {
    try {
      const [status, streams] = await Promise.all([api("/api/status"), api("/api/streams")]);
      renderStatus(status);
      renderStreams(streams);
      if (crashesOf) await showCrashes(crashesOf);
      if (refreshFailed) {
        $("#message").hidden = true;
        refreshFailed = false;
      }
    } catch (e) {
      say(`cannot read the runtime's state: ${e.message}`, true);
      refreshFailed = true;
    }
  })();
  await refreshing;
  refreshing = null;
  if (again) { again = false; refresh(); }
}

// The node whose crash records are open: read again with the status, since a record gains
// its stack a moment after the crash (the dump is read after the restart).
let crashesOf = null;
let crashesShown = null;

async function showCrashes(node) {
  if (node !== crashesOf) crashesShown = null;
  crashesOf = node;
  $("#crashes-of").textContent = `of ${node}`;
  const box = $("#crashes");
  try {
    const entries = await api(`/api/crashes?node=${node}&limit=10`);
    const seen = JSON.stringify(entries);
    if (seen === crashesShown) return;
    crashesShown = seen;
    if (entries.length === 0) {
      box.replaceChildren(el("p", { class: "muted" }, `${node} has no crash record in this session.`));
      return;
    }
    box.replaceChildren(...entries.reverse().map(({ path, record: r }) => {
      const lines = [];
      if (r.panic) lines.push(`panic: ${r.panic.message}${r.panic.location ? ` at ${r.panic.location}` : ""}`);
      if (r.dump) {
        if (r.dump.crash) lines.push(r.dump.crash);
        if (r.dump.path) lines.push(`minidump: ${r.dump.path} (${r.dump.bytes} bytes)`);
        r.dump.stack.forEach((f, i) => {
          const where = f.file ? ` at ${f.file}${f.line ? `:${f.line}` : ""}` : "";
          lines.push(`#${i} ${f.function || `0x${f.address.toString(16)}`}${where}`);
        });
        if (r.dump.error) lines.push(`dump: ${r.dump.error}`);
      }
      if (r.stderr_tail.length) lines.push("stderr:", ...r.stderr_tail);
      return el("div", { class: "crash", "data-incarnation": r.incarnation },
        el("div", {}, `${r.timestamp} · incarnation ${r.incarnation} · ${r.reason}` +
          (r.signal ? ` · ${r.signal}` : r.exit_code != null ? ` · exit ${r.exit_code}` : "")),
        el("div", {}, r.detail),
        el("pre", {}, lines.join("\n")),
        el("div", { class: "muted" }, path));
    }));
  } catch (e) {
    box.replaceChildren(el("p", {}, `cannot read the crash records: ${e.message}`));
  }
}

document.addEventListener("click", async (e) => {
  const b = e.target.closest("button");
  if (!b) return;
  if (b.dataset.crashes) return showCrashes(b.dataset.crashes);
  const { action, node } = b.dataset;
  if (!action) return;
  b.disabled = true;
  try {
    const r = await api(`/api/nodes/${node}/${action}`, "POST");
    say(r.ok, false);
  } catch (err) {
    say(`${action} ${node}: ${err.message}`, true);
  } finally {
    b.disabled = false;
    refresh();
  }
});

function follow() {
  const link = $("#link");
  const source = new EventSource(`/api/events?token=${encodeURIComponent(token)}`);
  source.onopen = () => { link.textContent = "live"; link.className = "pill live"; refresh(); };
  source.onerror = () => { link.textContent = "reconnecting…"; link.className = "pill lost"; };
  source.addEventListener("lifecycle", (m) => {
    showEvent(JSON.parse(m.data));
    refresh();
  });
  source.addEventListener("lagged", (m) => {
    say(`missed ${JSON.parse(m.data).missed} events (the page was too slow)`, true);
  });
}

// A link with another token opened in this tab: start again with it.
window.addEventListener("hashchange", () => {
  if (new URLSearchParams(location.hash.slice(1)).get("token")) location.reload();
});

if (!token) {
  $("#no-token").hidden = false;
  $("#link").textContent = "no token";
} else {
  follow();
  refresh();
  setInterval(refresh, REFRESH_MS);
}
