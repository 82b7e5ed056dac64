// The aiobroker web console: reads the node's /api every POLL_MS and posts its operator actions to /api/actions.
// Plain script, no framework and no build step (it ships inside the Python package). Every name that comes from
// the node is put in the page as text (textContent), never as HTML: a service may be called anything.
"use strict";

const POLL_MS = 2000;
const RING = 150; // samples of each queue's depth kept by the page: 5 minutes at POLL_MS
const RATE_WINDOW = 30; // samples the rate is taken over: the last minute
const PAGE_SIZE = 50; // conversations a page: the node never sends more than a page, however many it has
const MAX_DIAGNOSED = 10; // far services of a page whose dynamic routing request is looked up at each refresh
const TOKEN_KEY = "aiobroker.token";

const state = {
  page: "queues",
  token: sessionStorage.getItem(TOKEN_KEY),
  who: null,
  history: new Map(), // queue name -> [{t, depth}], oldest first, at most RING
  conv: { filters: {}, cursors: [null], index: 0, next: null },
  service: null,
  timer: null,
  busy: false,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function seconds(value) {
  if (value === null || value === undefined) return "";
  const s = Math.abs(value);
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${Math.round(s % 60)}s`;
  return `${Math.floor(s / 3600)}h ${Math.round((s % 3600) / 60)}m`;
}

// ------------------------------------------------------------------------------------------------ talking to it

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  } catch (err) {
    live(false, `the node does not answer (${err.message})`);
    return { ok: false, status: 0, body: { message: "the node does not answer" } };
  }
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = { message: `${response.status} ${response.statusText}` };
  }
  if (response.status === 401) askToken(body.message);
  live(true);
  return { ok: response.ok, status: response.status, body };
}

async function act(path, payload) {
  const result = await api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(payload),
  });
  if (result.ok) notice(result.body.message, "ok");
  else notice(`refused (${result.status}): ${result.body.message}`, "error");
  await refresh();
  return result;
}

function notice(text, kind) {
  const box = $("notice");
  box.textContent = text;
  box.className = kind;
  box.hidden = false;
}

function live(up, why) {
  $("live").textContent = up ? `live, every ${POLL_MS / 1000}s` : why;
  $("live").className = up ? "muted" : "error";
}

function askToken(message) {
  $("login").hidden = false;
  $("login-error").textContent = state.token ? message : "";
}

function actionButton(label, path, payload, confirmText) {
  const button = el("button", { type: "button", class: "action" }, label);
  if (state.who && !state.who.admin) {
    button.classList.add("not-admin");
    button.title = `identity ${state.who.identity} is not admin: the node will likely refuse this`;
  }
  button.addEventListener("click", async () => {
    if (confirmText && !window.confirm(confirmText)) return;
    button.disabled = true;
    try {
      await act(path, payload);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

function fill(tbody, rows, empty) {
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 9, class: "muted" }, empty))]));
}

// ------------------------------------------------------------------------------------------------------- pages

async function showQueues(queues) {
  const rows = queues.map((q) => {
    const samples = state.history.get(q.name) || [];
    const disabled = q.status !== "on";
    return el("tr", { "data-queue": q.name, class: disabled ? "disabled" : "" },
      el("td", {}, q.name),
      el("td", { class: "status" }, disabled ? `off: ${q.disabled_reason || "disabled"}` : "on"),
      el("td", { class: "num" }, q.waiting),
      el("td", { class: "num" }, q.locked),
      el("td", { class: "num" }, q.oldest_age_seconds ? seconds(q.oldest_age_seconds) : ""),
      el("td", {}, sparkline(samples)),
      el("td", { class: "num" }, rate(samples)),
      el("td", {}, disabled ? actionButton("enable", "/api/actions/enable-queue", { queue: q.name }) : null));
  });
  fill($("queues").tBodies[0], rows, "no queues");
}

function record(queues) {
  const now = Date.now() / 1000;
  const seen = new Set();
  for (const q of queues) {
    seen.add(q.name);
    const ring = state.history.get(q.name) || [];
    ring.push({ t: now, depth: q.waiting + q.locked });
    if (ring.length > RING) ring.shift();
    state.history.set(q.name, ring);
  }
  for (const name of [...state.history.keys()]) if (!seen.has(name)) state.history.delete(name);
}

function rate(samples) {
  if (samples.length < 2) return "";
  const recent = samples.slice(-RATE_WINDOW);
  const first = recent[0];
  const last = recent[recent.length - 1];
  const perSecond = (last.depth - first.depth) / Math.max(last.t - first.t, 1e-9);
  return `${perSecond >= 0 ? "+" : ""}${perSecond.toFixed(1)}`;
}

function sparkline(samples) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", `0 0 ${RING} 20`);
  svg.setAttribute("preserveAspectRatio", "none");
  if (samples.length > 1) {
    const top = Math.max(1, ...samples.map((s) => s.depth));
    const offset = RING - samples.length;
    const points = samples.map((s, i) => `${offset + i},${(20 - (s.depth / top) * 18 - 1).toFixed(1)}`);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    svg.append(line);
  }
  const title = document.createElementNS(ns, "title");
  title.textContent = samples.length ? `now ${samples[samples.length - 1].depth}, most ${Math.max(...samples.map((s) => s.depth))}` : "";
  svg.append(title);
  return svg;
}

async function showConversations() {
  const c = state.conv;
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  for (const [key, value] of Object.entries(c.filters)) if (value) query.set(key, value);
  if (c.cursors[c.index]) query.set("after", c.cursors[c.index]);
  const result = await api(`/api/conversations?${query}`);
  if (!result.ok) {
    $("conv-summary").textContent = result.body.message;
    return;
  }
  const page = result.body;
  c.next = page.next;
  const from = c.index * PAGE_SIZE + 1;
  $("conv-summary").textContent = page.conversations.length
    ? `showing ${from}–${from + page.conversations.length - 1} of the matching ones (the node has ${page.total.toLocaleString()} conversations)`
    : `none match (the node has ${page.total.toLocaleString()} conversations)`;
  $("prev").disabled = c.index === 0;
  $("next").disabled = !page.next;
  const waits = await requestsFor(page.conversations.filter((x) => x.delayed).map((x) => x.far_service));
  const links = await sendingOf(page.conversations.filter((x) => !x.delayed).map((x) => x.handle));
  const rows = page.conversations.map((conv) => {
    const why = conv.delayed ? [el("div", { class: "reason" }, conv.delayed), waitDetails(waits.get(conv.far_service))] : [];
    const link = links[conv.handle];
    const retrying = Boolean(link && link.last_error && link.next_attempt_in !== null);
    if (link) why.push(el("div", { class: retrying ? "reason" : "muted" }, link.state));
    if (retrying) why.push(el("div", { class: "muted wait" }, `next attempt in ${seconds(link.next_attempt_in)}`));
    if (conv.error) why.push(el("div", { class: "error" }, `error ${conv.error[0]}: ${conv.error[1]}`));
    return el("tr", { "data-handle": conv.handle, class: conv.delayed ? "delayed" : retrying ? "retrying" : "" },
      el("td", { class: "handle", title: conv.handle }, conv.handle.slice(0, 8)),
      el("td", {}, conv.service),
      el("td", {}, serviceLink(conv.far_service)),
      el("td", {}, `${conv.state_desc} (${conv.state})`),
      el("td", { class: "num" }, `${conv.send_seq} / ${conv.recv_seq}`),
      el("td", {}, ...why),
      el("td", { class: "buttons" },
        conv.delayed ? actionButton("ask again", "/api/actions/ask-again", { service: conv.far_service }) : null,
        conv.state !== "CD" ? actionButton("end", "/api/actions/end-conversation", { handle: conv.handle, cleanup: false },
          `End conversation ${conv.handle}? The far side is told.`) : null,
        actionButton("end with cleanup", "/api/actions/end-conversation", { handle: conv.handle, cleanup: true },
          `Remove conversation ${conv.handle} from this node without telling the far side? Its unsent messages are dropped.`)));
  });
  fill($("conversations").tBodies[0], rows, "no conversations");
}

async function requestsFor(services) {
  // the resolver's last answer and the next attempt, per far service of the page's DELAYED conversations
  const unique = [...new Set(services)].slice(0, MAX_DIAGNOSED);
  const found = new Map();
  await Promise.all(unique.map(async (service) => {
    const result = await api(`/api/diagnose/${encodeURIComponent(service)}`);
    if (result.ok) found.set(service, result.body.request);
  }));
  return found;
}

async function sendingOf(handles) {
  // how the page's conversations fare on their links (retrying: why, and when the node tries again)
  if (!handles.length) return {};
  const query = new URLSearchParams(handles.map((h) => ["handle", h]));
  const result = await api(`/api/console/sending?${query}`);
  return result.ok ? result.body : {};
}

function waitDetails(request) {
  if (!request) return null;
  const parts = [];
  if (request.in_flight) parts.push(`asked ${request.in_flight.via} ${seconds(request.in_flight.age_seconds)} ago; waiting for its answer`);
  if (request.last) parts.push(`last answer ${seconds(request.last.age_seconds)} ago: ${request.last.text}`);
  if (request.next_retry_in !== null && request.next_retry_in !== undefined) {
    parts.push(`next attempt in ${seconds(Math.max(0, request.next_retry_in))}`);
  }
  if (request.failures) parts.push(`${request.failures} failure(s) in a row`);
  return el("div", { class: "muted wait" }, parts.join(" · "));
}

function serviceLink(name) {
  return el("a", { href: `#service/${encodeURIComponent(name)}` }, name);
}

async function showResolving() {
  const result = await api("/api/resolving");
  if (!result.ok) return;
  const r = result.body;
  const whom = r.resolver === "BCN service" ? "the Broker Configuration Notice service" : `the ${r.resolver} resolver`;
  $("resolver").textContent = r.resolver ? `Dynamic routing asks ${whom}.` : "Dynamic routing is off on this node (no resolver, no BCN service).";
  fill($("delayed").tBodies[0], r.delayed.map((d) => el("tr", { "data-service": d.service },
    el("td", {}, serviceLink(d.service)),
    el("td", {}, d.reason.replace("_", " ")),
    el("td", { class: "num" }, d.conversations),
    el("td", { class: "num" }, d.messages),
    el("td", {}, actionButton("ask again", "/api/actions/ask-again", { service: d.service })))), "nothing is DELAYED");
  fill($("in-flight").tBodies[0], r.in_flight.map((q) => el("tr", {},
    el("td", {}, serviceLink(q.service)),
    el("td", {}, q.kind),
    el("td", {}, q.via),
    el("td", { class: "num" }, seconds(q.age_seconds)),
    el("td", { class: "num" }, q.waiting_conversations ?? ""))), "no request in flight");
  fill($("resolvers").tBodies[0], Object.entries(r.resolvers).map(([name, c]) => el("tr", {},
    el("td", {}, name),
    el("td", { class: "num" }, c.requests),
    el("td", { class: "num" }, c.answers),
    el("td", {}, Object.entries(c.failures).map(([kind, n]) => `${kind}: ${n}`).join(", ")))), "no resolver asked yet");
}

async function showLinks() {
  const result = await api("/api/links");
  if (!result.ok) return;
  const l = result.body;
  fill($("links").tBodies[0], l.links.map((link) => el("tr", { class: link.state_kind },
    el("td", {}, link.address),
    el("td", {}, link.state_kind.replace("_", " ")),
    el("td", { class: "num" }, link.attempts),
    el("td", { class: "num" }, link.unacknowledged),
    el("td", { class: "num" }, link.last_ack_seconds === null ? "" : `${(link.last_ack_seconds * 1000).toFixed(1)} ms`),
    // an instant of the node's clock, shown as a time of day ("in 3s" would be wrong by any skew of this browser's clock)
    el("td", {}, link.next_attempt ? `at ${new Date(link.next_attempt * 1000).toLocaleTimeString()}` : ""),
    el("td", {}, link.state))), "no links: this node has sent nothing to another node");
  $("inbound").textContent = `${l.inbound_peers} peer node(s) connected to this one.`;
}

async function showService() {
  const name = state.service;
  $("diagnosis").hidden = !name;
  if (!name) return;
  if ($("service-name") !== document.activeElement) $("service-name").value = name;
  const result = await api(`/api/diagnose/${encodeURIComponent(name)}`);
  if (!result.ok) {
    $("decision").textContent = result.body.message;
    return;
  }
  const d = result.body;
  const waiting = d.delayed_conversations
    ? ` ${d.delayed_conversations} conversation(s), ${d.delayed_messages} message(s) DELAYED: ${d.delayed_reason}`
    : "";
  $("decision").textContent = `Decision: ${d.decision}${d.local ? " (the service is on this node)" : ""}.${waiting}`;
  $("steps").replaceChildren(...d.steps.map((line) => el("li", {}, line)));
  const r = d.request;
  const facts = [
    ["asks", d.asks || "nobody: dynamic routing is off"],
    ["in flight", r.in_flight ? `${r.in_flight.via}, for ${seconds(r.in_flight.age_seconds)}` : "no"],
    ["last answer", r.last ? `${r.last.ok ? "" : "failed: "}${r.last.text} (${seconds(r.last.age_seconds)} ago)` : "none yet"],
    ["next attempt", r.next_retry_in === null ? "none scheduled" : `in ${seconds(Math.max(0, r.next_retry_in))}`],
    ["failures in a row", r.failures],
  ];
  $("request").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  $("service-ask").hidden = !d.delayed_conversations;
  fill($("routes").tBodies[0], d.routes.map((route) => el("tr", { "data-route": route.name },
    el("td", {}, route.name),
    el("td", {}, route.service_name ?? "(any)"),
    el("td", {}, route.address),
    el("td", {}, route.broker_instance ?? ""),
    el("td", {}, route.origin ?? ""),
    el("td", {}, route.expires_at ? new Date(route.expires_at * 1000).toLocaleTimeString() : "never"),
    el("td", {}, actionButton("drop", "/api/actions/drop-route", { route: route.name }, `Drop route ${route.name}?`)))),
    "no route names this service");
}

// ---------------------------------------------------------------------------------------------- the main loop

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    const status = await api("/api/queues");
    if (!status.ok) return;
    $("login").hidden = true;
    record(status.body);
    if (state.page === "queues") await showQueues(status.body);
    else if (state.page === "conversations") await showConversations();
    else if (state.page === "resolving") await showResolving();
    else if (state.page === "links") await showLinks();
    else if (state.page === "service") await showService();
  } finally {
    state.busy = false;
  }
}

async function identify() {
  const index = await api("/api");
  if (index.ok) $("node").textContent = `node ${index.body.broker_instance} · ${index.body.listen}`;
  const who = await api("/api/actions");
  state.who = who.ok ? who.body : null;
  $("who").textContent = !state.who ? "" : !state.who.authorization ? "authorization off: every action allowed"
    : `identity ${state.who.identity}${state.who.admin ? " (admin)" : " (read only: actions need admin)"}`;
  $("logout").hidden = !state.token;
}

function route() {
  // #service/NAME, the name percent-encoded: split at the first slash, then decode (a name has slashes of its own)
  const hash = location.hash.slice(1) || "queues";
  const cut = hash.indexOf("/");
  const page = cut < 0 ? hash : hash.slice(0, cut);
  state.page = ["queues", "conversations", "resolving", "links", "service"].includes(page) ? page : "queues";
  if (state.page === "service" && cut >= 0) state.service = decodeURIComponent(hash.slice(cut + 1));
  for (const section of document.querySelectorAll(".page")) section.hidden = section.id !== `page-${state.page}`;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("current", link.dataset.page === state.page);
  refresh();
}

function loop() {
  clearTimeout(state.timer);
  state.timer = setTimeout(async () => {
    await refresh();
    loop();
  }, POLL_MS);
}

function wire() {
  $("login").addEventListener("submit", async (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    $("token").value = "";
    await identify();
    await refresh();
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    location.reload();
  });
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    state.conv = {
      filters: { service: $("f-service").value.trim(), state: $("f-state").value, delayed: $("f-delayed").value },
      cursors: [null], index: 0, next: null,
    };
    refresh();
  });
  $("next").addEventListener("click", () => {
    const c = state.conv;
    if (!c.next) return;
    c.cursors = c.cursors.slice(0, c.index + 1).concat([c.next]);
    c.index += 1;
    refresh();
  });
  $("prev").addEventListener("click", () => {
    if (state.conv.index > 0) state.conv.index -= 1;
    refresh();
  });
  $("service-form").addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `service/${encodeURIComponent($("service-name").value.trim())}`;
  });
  $("service-ask").addEventListener("click", () => act("/api/actions/ask-again", { service: state.service }));
  window.addEventListener("hashchange", route);
}

document.addEventListener("DOMContentLoaded", async () => {
  wire();
  await identify();
  route();
  loop();
});
