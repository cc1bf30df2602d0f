// A live run: frames from this browser's camera (pushed) or the agent's own source,
// the predicted class, a score bar per class, and the pins drawn as LEDs.
import { api, attempt, el, events, fmt, grabJpeg, say } from "./app.js";

const form = document.getElementById("start");
const video = document.getElementById("run-camera");
const image = document.getElementById("run-frame");
let current = null; // {id, push, labels, pins: {pin: class}}
let follower = null;
let pushing = false;
let frameTimer = null;
let camera = null; // this browser's camera stream, stopped when the run ends

document.getElementById("run-from").addEventListener("change", (e) => {
  document.getElementById("run-source").disabled = e.target.value !== "agent";
});

async function models() {
  const data = await attempt("listing the models", () => api("GET", "/api/models"));
  if (!data) return;
  const pick = document.getElementById("run-model");
  const wanted = new URLSearchParams(location.search).get("model");
  pick.replaceChildren(...data.models.filter((m) => m.serving).map((m) =>
    el("option", { value: m.name, selected: m.name === wanted }, m.name)));
  if (!pick.options.length) say("no model is served: deploy one first", "error");
}

function bars(labels) {
  document.getElementById("run-bars").replaceChildren(...labels.map((name, i) =>
    el("div", { class: "bar", "data-class": name },
      el("span", {}, name),
      el("meter", { min: 0, max: 1, value: 0, id: `bar-${i}`, "aria-label": `score of ${name}` }),
      el("span", { class: "num", id: `bar-v-${i}` }, "–"))));
}

function leds(levels, pins) {
  const all = [...new Set([...Object.keys(levels), ...Object.keys(pins)])];
  document.getElementById("run-leds").replaceChildren(...all.sort((a, b) => a - b).map((pin) =>
    el("div", { class: "led", "data-pin": pin, "data-on": String(levels[pin] ? 1 : 0) },
      el("i", { "aria-hidden": "true" }),
      el("span", {}, pins[pin] ? `${pins[pin]} (pin ${pin})` : `pin ${pin}`),
      el("span", { class: "visually-hidden level" }, levels[pin] ? "high" : "low"))));
}

function setLed(pin, level) {
  const led = document.querySelector(`.led[data-pin="${pin}"]`);
  if (!led) return;
  led.dataset.on = String(level ? 1 : 0);
  led.querySelector(".level").textContent = level ? "high" : "low";
}

function onFrame(d) {
  const label = document.getElementById("run-label");
  label.textContent = `${d.label} ${d.score === null ? "" : `(${(100 * d.score).toFixed(0)}%)`}`;
  label.dataset.label = d.label;
  if (Array.isArray(d.scores)) {
    d.scores.forEach((s, i) => {
      const bar = document.getElementById(`bar-${i}`);
      if (bar) bar.value = s ?? 0;
      const v = document.getElementById(`bar-v-${i}`);
      if (v) v.textContent = s === null ? "–" : `${(100 * s).toFixed(0)}%`;
    });
  }
  for (const f of d.fired || []) if (f.kind === "pin") setLed(f.pin, f.level);
  document.getElementById("run-stats").textContent =
    `frame ${d.frame}, frame → answer ${fmt(d.latency_ms, 1)} ms${d.active ? `, active: ${d.active}` : ""}`;
}

async function pushLoop(rate) {
  const canvas = document.createElement("canvas");
  pushing = true;
  while (pushing && current) {
    const started = performance.now();
    if (video.videoWidth) {
      const blob = await grabJpeg(video, canvas, 160);
      try {
        await api("POST", `/api/runs/${encodeURIComponent(current.id)}/frame`, { body: blob, type: "image/jpeg" });
      } catch (err) {
        say(`sending a frame: ${err.message}`, "error");
        if (err.status === 404 || err.status === 409 || err.status === 400) break;
      }
    }
    const wait = 1000 / rate - (performance.now() - started);
    await new Promise((r) => setTimeout(r, Math.max(wait, 0)));
  }
  pushing = false;
}

async function watch(run, push, rate) {
  follower?.close();
  clearTimeout(frameTimer);
  const detail = await api("GET", `/api/runs/${encodeURIComponent(run.id)}`);
  const labels = detail.labels || [];
  const pins = {};
  for (const [cls, pin] of Object.entries(detail.class_pins || {})) if (pin !== null) pins[pin] = cls;
  current = { id: run.id, push, labels, pins };
  bars(labels);
  leds(detail.pin_levels || {}, pins);
  document.getElementById("run-stop").disabled = false;
  video.hidden = !push;
  image.hidden = push;
  if (!push) {
    // The agent's newest frame, the next asked for only once this one is shown.
    const next = async () => {
      if (!current || current.id !== run.id) return;
      const answer = await api("GET", `/api/runs/${encodeURIComponent(run.id)}/frame`, { raw: true }).catch(() => null);
      if (answer) {
        const url = URL.createObjectURL(await answer.blob());
        const old = image.src;
        image.src = url;
        if (old.startsWith("blob:")) URL.revokeObjectURL(old);
      }
      frameTimer = setTimeout(next, 500);
    };
    next();
  }
  follower = events(`/api/runs/${encodeURIComponent(run.id)}/events`, {
    frame: onFrame,
    summary: (d) => {
      // Every pin goes low when a run ends, whatever ended it.
      document.querySelectorAll(".led").forEach((led) => setLed(led.dataset.pin, 0));
      say(`run ended: ${d.reason || d.state} after ${d.frames} frames`, d.state === "failed" ? "error" : "ok");
      stopped();
    },
  });
  if (push) pushLoop(rate);
}

function stopCamera() {
  camera?.getTracks().forEach((t) => t.stop());
  camera = null;
}

function stopped() {
  pushing = false;
  follower?.close();
  clearTimeout(frameTimer);
  stopCamera();
  document.getElementById("run-stop").disabled = true;
  document.getElementById("run-start").disabled = false;
  current = null;
  listRuns();
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  const push = form.from.value === "push";
  const rate = Number(form.rate.value) || 5;
  if (push) {
    try {
      stopCamera();
      camera = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 320 }, height: { ideal: 240 } }, audio: false });
      video.srcObject = camera;
      await video.play().catch(() => {});
    } catch (err) {
      say(`no camera in this browser: ${err.message}`, "error");
      return;
    }
  }
  document.getElementById("run-start").disabled = true;
  const body = { model: form.model.value, source: push ? "push" : form.source.value.trim(), rate };
  const run = await attempt("starting the run", () => api("POST", "/api/runs", { body }));
  if (!run) {
    document.getElementById("run-start").disabled = false;
    return;
  }
  say(`run ${run.id} started`, "ok");
  try {
    await watch(run, push, rate);
  } catch (err) {
    say(`following run ${run.id}: ${err.message}`, "error");
    stopped();
  }
  listRuns();
});

document.getElementById("run-stop").addEventListener("click", async () => {
  if (!current) return;
  await attempt("stopping the run", () => api("POST", `/api/runs/${encodeURIComponent(current.id)}/stop`));
});

async function listRuns() {
  const data = await api("GET", "/api/runs").catch(() => null);
  if (!data) return;
  const runs = data.runs || [];
  document.getElementById("runs").replaceChildren(...runs.slice(0, 10).map((r) =>
    el("li", {}, `${r.id}: ${r.model} on ${r.source}, ${r.state}, ${r.frames} frames `,
      r.state === "running" && r.source !== "push" && (!current || current.id !== r.id)
        ? el("button", { type: "button", class: "secondary", "aria-label": `Watch run ${r.id}`,
          onclick: () => watch(r, false, r.rate).catch((err) => say(err.message, "error")) }, "Watch") : null)));
  if (!runs.length) document.getElementById("runs").append(el("li", {}, "None yet."));
}

models();
listRuns();
setInterval(listRuns, 5000);
