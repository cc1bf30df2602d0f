// What every page shares: calls to an agent's API (this one, or another one through
// this agent's proxy), server-sent events, the status line, and small DOM helpers.
// No library: the pages are a teaching tool and should read plainly.

const KEY = "edgewire.agent";

export const csrf = document.querySelector('meta[name="csrf"]')?.content || "";

/** The agent the page acts on: "" is this one, else a name from /api/agents. */
export function agent() {
  return localStorage.getItem(KEY) || "";
}

/** The path prefix that reaches ``name``'s own API. */
export function base(name = agent()) {
  return name ? `/api/agents/${encodeURIComponent(name)}/proxy` : "";
}

/** An error of the agent's API, with its one-line message and code. */
export class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * Call the API. ``body``: an object (sent as JSON), or a Blob/ArrayBuffer (sent as is,
 * with ``type``). Answers JSON, or the Response itself with ``raw``.
 */
export async function api(method, path, { body, type, agent: name, raw = false, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && method !== "HEAD") headers["X-Edgewire-CSRF"] = csrf;
  let payload;
  if (body instanceof Blob || body instanceof ArrayBuffer) {
    payload = body;
    headers["Content-Type"] = type || body.type || "application/octet-stream";
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  const target = base(name === undefined ? agent() : name ?? "") + path;
  let answer;
  try {
    answer = await fetch(target, { method, headers, body: payload, credentials: "same-origin", signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(`cannot reach the agent: ${err.message}`, 0, "connect");
  }
  const own = !base(name === undefined ? agent() : name ?? "");
  if (answer.status === 401 && own && csrf) {
    // This agent's own session is gone (a restart, or 12 hours): log in again.
    location.href = `/login?next=${encodeURIComponent(location.pathname)}`;
    throw new ApiError("the session ended: log in again", 401, "auth");
  }
  if (!answer.ok) {
    let message = `${method} ${path}: HTTP ${answer.status}`;
    let code = "http";
    try {
      const data = await answer.json();
      if (data.error) message = data.error;
      if (data.code) code = data.code;
    } catch (_) {
      /* not JSON: the status says it */
    }
    throw new ApiError(message, answer.status, code);
  }
  if (raw) return answer;
  const text = await answer.text();
  return text ? JSON.parse(text) : {};
}

/** Follow an event stream; ``handlers`` maps event names to functions of their data. */
export function events(path, handlers, { agent: name } = {}) {
  const source = new EventSource(base(name === undefined ? agent() : name ?? "") + path);
  for (const [kind, handle] of Object.entries(handlers)) {
    if (kind === "error") continue;
    source.addEventListener(kind, (e) => {
      try {
        handle(JSON.parse(e.data), e);
      } catch (err) {
        say(`bad event ${kind}: ${err.message}`, "error");
      }
    });
  }
  source.onerror = () => handlers.error?.(source);
  return source;
}

/** One line in the status bar at the top of the page. */
export function say(text, kind = "info") {
  const line = document.getElementById("status");
  if (!line) return;
  line.textContent = text;
  line.className = kind;
  line.setAttribute("role", kind === "error" ? "alert" : "status");
}

/** Run ``work``, saying what went wrong in one line instead of throwing. */
export async function attempt(what, work) {
  try {
    const result = await work();
    return result;
  } catch (err) {
    say(`${what}: ${err.message}`, "error");
    return undefined;
  }
}

/** ``el("td", {class: "num"}, "3")``: an element with attributes and children. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** The video's current frame as a JPEG Blob, its longest side ``side`` px. */
export function grabJpeg(video, canvas, side = 160) {
  const scale = side / Math.max(video.videoWidth, video.videoHeight);
  canvas.width = Math.round(video.videoWidth * scale);
  canvas.height = Math.round(video.videoHeight * scale);
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.92));
}

export function fmt(value, digits = 1) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return value.toFixed(digits);
  return String(value);
}

export function pct(value) {
  return value === null || value === undefined ? "–" : `${(100 * value).toFixed(1)}%`;
}

async function fillAgents() {
  const pick = document.getElementById("agent-select");
  if (!pick) return;
  let list = [];
  try {
    list = (await api("GET", "/api/agents", { agent: "" })).agents || [];
  } catch (_) {
    list = [];
  }
  const chosen = agent();
  for (const a of list) {
    pick.append(el("option", { value: a.name, selected: a.name === chosen }, `${a.name} (${a.url})`));
  }
  if (chosen && !list.some((a) => a.name === chosen)) localStorage.removeItem(KEY);
  pick.addEventListener("change", () => {
    if (pick.value) localStorage.setItem(KEY, pick.value);
    else localStorage.removeItem(KEY);
    location.reload();
  });
}

fillAgents();
