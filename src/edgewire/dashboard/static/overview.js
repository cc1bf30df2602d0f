// The overview: health, device, live traffic per protocol (SSE), models and aliases.
import { api, attempt, el, events, fmt, say } from "./app.js";

const text = (id, value) => {
  document.getElementById(id).textContent = value;
};

function duration(s) {
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function show(data) {
  text("ov-ready", data.ready ? "yes" : "no");
  text("ov-version", data.version);
  text("ov-uptime", duration(data.uptime_s));
  text("ov-rss", data.rss_mb === null ? "–" : `${data.rss_mb} MB`);
  text("ov-clients", String(data.clients));
  if (data.device) {
    const d = data.device;
    text("ov-platform", d.platform);
    text("ov-cpus", String(d.cpus));
    text("ov-memory", d.memory_mb ? `${d.memory_available_mb} of ${d.memory_mb} MB free` : "–");
    text("ov-accel", d.accelerators.join(", ") + (d.gpu ? " (GPU)" : " (no GPU)"));
    text("ov-board", d.board || "–");
  }
  const body = document.querySelector("#ov-protocols tbody");
  body.replaceChildren(
    ...Object.entries(data.protocols).map(([name, p]) =>
      el("tr", { "data-protocol": name },
        el("th", { scope: "row" }, name),
        el("td", { class: "num rps" }, fmt(p.rps)),
        el("td", { class: "num" }, fmt(p.p50_ms, 2)),
        el("td", { class: "num" }, fmt(p.p99_ms, 2)),
        el("td", { class: "num" }, String(p.errors)),
        el("td", { class: "num answered" }, String(p.requests)),
        el("td", { class: "num" }, String(p.connections)),
      ),
    ),
  );
}

async function models() {
  const data = await attempt("listing the models", () => api("GET", "/api/models"));
  if (!data) return;
  const body = document.querySelector("#ov-models tbody");
  body.replaceChildren(
    ...data.models.map((m) =>
      el("tr", {},
        el("th", { scope: "row" }, m.name),
        el("td", {}, m.versions.map((v) => v.version).join(", ")),
        el("td", {}, Object.entries(m.aliases).map(([a, v]) => `${a} → ${v}`).join(", ") || "–"),
        el("td", {}, m.serving ? `version ${m.serving.version}` : "no"),
      ),
    ),
  );
  if (!data.models.length) body.append(el("tr", {}, el("td", { colspan: 4 }, "No model yet: upload one on the Models page.")));
}

attempt("reading the overview", async () => show(await api("GET", "/api/overview")));
models();
events("/api/overview/events", {
  overview: (data) => show(data),
  error: () => say("the live overview stream dropped; it reconnects by itself", "error"),
});
