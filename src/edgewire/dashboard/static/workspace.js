// One project: capture per class (this browser's camera or the agent's), thumbnails,
// split, training with live curves and the test report, deploy through the gate.
import { api, agent, attempt, base, el, events, fmt, grabJpeg, pct, say } from "./app.js";
import { draw } from "./chart.js";

const ws = document.getElementById("ws-name").dataset.ws;
const W = `/api/workspaces/${encodeURIComponent(ws)}`;
const video = document.getElementById("camera");
let stream = null;
let capturing = false;
let classes = [];
let run = null; // {agent: null|name, run_id}
let follower = null;

// --- classes, counts, thumbnails ------------------------------------------------------

const SHOWN = 60; // thumbnails per class: the newest

function thumb(cls, file) {
  const src = `${base()}${W}/images/${encodeURIComponent(cls)}/${encodeURIComponent(file)}?thumb=1`;
  return el("span", { class: "thumb" },
    el("img", { src, alt: `${cls} image ${file}`, loading: "lazy" }),
    el("button", { type: "button", "aria-label": `Delete image ${file} of ${cls}`, title: "Delete this image",
      onclick: async () => {
        const done = await attempt(`deleting ${file}`, () => api("DELETE", `${W}/images/${encodeURIComponent(cls)}/${encodeURIComponent(file)}`));
        if (done) refresh();
      } }, "×"));
}

async function refresh() {
  const data = await attempt("reading the project", () => api("GET", `${W}?limit=${SHOWN}`));
  if (!data) return;
  classes = data.classes;
  const pick = document.getElementById("agent-capture-class");
  if (pick.options.length !== classes.length) pick.replaceChildren(...classes.map((c) => el("option", { value: c }, c)));
  document.getElementById("classes").replaceChildren(...classes.map((c) =>
    el("article", { class: "card", "data-class": c },
      el("h3", {}, c, " ", el("span", { class: "count", "data-count": data.counts[c] ?? 0 }, `(${data.counts[c] ?? 0} images)`)),
      el("p", {}, el("button", { type: "button", class: "capture", "data-class": c, disabled: !stream,
        "aria-label": `Capture images of ${c} from this browser's camera`, onclick: () => captureBrowser(c) },
        `Capture ${c}`)),
      el("div", { class: "thumbs" }, (data.images[c] || []).map((f) => thumb(c, f))),
    )));
  if (data.split) showSplit(data.split);
}

// --- capture in the browser -----------------------------------------------------------

document.getElementById("camera-start").addEventListener("click", async () => {
  if (!navigator.mediaDevices?.getUserMedia) {
    say("this browser gives no camera here (it needs https, or http on localhost)", "error");
    return;
  }
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 320 }, height: { ideal: 240 } }, audio: false });
  } catch (err) {
    say(`no camera: ${err.message}`, "error");
    return;
  }
  video.srcObject = stream;
  await video.play().catch(() => {});
  say("camera on: pick a class and capture", "ok");
  document.querySelectorAll("button.capture").forEach((b) => { b.disabled = false; });
});

async function captureBrowser(cls) {
  if (capturing || !stream) return;
  capturing = true;
  const count = Number(document.getElementById("capture-count").value) || 30;
  const every = Number(document.getElementById("capture-every").value) || 100;
  const line = document.getElementById("capture-progress");
  const canvas = document.createElement("canvas");
  let saved = 0;
  let same = 0;
  try {
    for (let i = 0; i < count; i += 1) {
      const started = performance.now();
      // 160 px is what is uploaded: training resizes anyway, and small is fast.
      const blob = await grabJpeg(video, canvas, 160);
      const answer = await api("POST", `${W}/images/${encodeURIComponent(cls)}`, { body: blob, type: "image/jpeg" });
      if (answer.new) saved += 1; else same += 1;
      line.textContent = `${cls}: ${i + 1}/${count} captured (${saved} new${same ? `, ${same} the same as before` : ""})`;
      const wait = every - (performance.now() - started);
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
    say(`${cls}: ${saved} new images`, "ok");
  } catch (err) {
    say(`capturing ${cls}: ${err.message}`, "error");
  } finally {
    capturing = false;
    line.dataset.done = String(Number(line.dataset.done || 0) + 1);
    refresh();
  }
}

document.getElementById("agent-capture").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  say(`capturing ${f.count.value} images of ${f.class.value} on the agent…`);
  const done = await attempt("capturing on the agent", () => api("POST", `${W}/capture`,
    { body: { class: f.class.value, source: f.source.value.trim(), count: Number(f.count.value) } }));
  if (done) {
    say(`${f.class.value}: ${done.saved} saved, ${done.duplicates} duplicates, ${done.seen} frames seen`, "ok");
    refresh();
  }
});

// --- split ----------------------------------------------------------------------------

function showSplit(s) {
  document.getElementById("split-result").textContent =
    `Split: ${s.train} train, ${s.val} validation, ${s.test} test images.`;
}

document.getElementById("split").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  const ratios = [Number(f.train.value), Number(f.val.value), Number(f.test.value)];
  const done = await attempt("splitting", () => api("POST", `${W}/split`, { body: { ratios, seed: 0 } }));
  if (done) {
    showSplit(done);
    say("split done: train next", "ok");
  }
});

// --- train ----------------------------------------------------------------------------

const curves = { epochs: [], batches: [], perEpoch: 1 };
const chart = document.getElementById("chart");

const MAX_POINTS = 1000;
let drawing = false;

/** One redraw per animation frame however fast batches come. */
function scheduleRedraw() {
  if (drawing) return;
  drawing = true;
  requestAnimationFrame(() => {
    drawing = false;
    redraw();
  });
}

function redraw() {
  const e = curves.epochs;
  const series = [
    { name: "batch loss", color: "#9ab", thin: true, points: curves.batches },
    { name: "train loss", color: "#0b6bcb", points: e.map((x) => [x.epoch + 1, x.train.loss]) },
    { name: "val loss", color: "#a15c07", points: e.map((x) => [x.epoch + 1, x.val.loss]) },
    { name: "train accuracy", color: "#18794e", right: true, points: e.map((x) => [x.epoch + 1, x.train.accuracy]) },
    { name: "val accuracy", color: "#b42318", right: true, points: e.map((x) => [x.epoch + 1, x.val.accuracy]) },
  ];
  draw(chart, series);
  document.getElementById("chart-legend").replaceChildren(...series.map((s) => {
    const key = el("span", {}, s.name);
    key.style.color = s.color; // a style property, which the page's CSP allows
    return key;
  }));
}

function showReport(r) {
  const box = document.getElementById("report");
  const head = el("tr", {}, el("th", { scope: "col" }, "true \\ predicted"), ...r.classes.map((c) => el("th", { scope: "col" }, c)));
  const rows = r.confusion.map((row, i) => el("tr", {}, el("th", { scope: "row" }, r.classes[i]), ...row.map((n, j) => el("td", { class: `num${i === j ? " diag" : ""}` }, String(n)))));
  box.replaceChildren(
    el("h3", {}, "Test report"),
    el("p", { id: "test-accuracy", "data-accuracy": r.accuracy }, `Test accuracy ${pct(r.accuracy)} on ${r.samples} images`),
    el("div", { class: "scroll" }, el("table", { id: "per-class" },
      el("thead", {}, el("tr", {}, ...["Class", "Precision", "Recall", "Images"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, r.per_class.map((p) => el("tr", {}, el("th", { scope: "row" }, p.class), el("td", { class: "num" }, pct(p.precision)), el("td", { class: "num" }, pct(p.recall)), el("td", { class: "num" }, String(p.support))))))),
    el("div", { class: "scroll" }, el("table", { id: "confusion" }, el("caption", {}, "Confusion matrix: rows are the true class"), el("thead", {}, head), el("tbody", {}, rows))),
  );
}

async function fillTargets() {
  if (agent()) return; // through another agent's proxy there is no third agent to reach
  const data = await api("GET", "/api/agents").catch(() => ({ agents: [] }));
  const on = document.getElementById("train-on");
  const targets = document.getElementById("deploy-targets");
  for (const a of data.agents || []) {
    on.append(el("option", { value: a.name }, `${a.name} (${a.url})`));
    targets.append(el("label", {}, el("input", { type: "checkbox", name: "target", value: a.name }), ` ${a.name}`));
  }
}

function follow() {
  follower?.close();
  const state = document.getElementById("train-state");
  follower = events(`/api/train/${encodeURIComponent(run.run_id)}/events`, {
    batch_size: (d) => {
      state.textContent = `batch size ${d.batch_size} (${d.reason})`;
      curves.perEpoch = Math.max(1, Math.ceil(d.train_samples / d.batch_size));
    },
    feedback: (d) => {
      curves.batches.push([d.epoch + (d.seq + 1) / curves.perEpoch, d.loss]);
      // At most MAX_POINTS batch points: every other one goes when there are more.
      if (curves.batches.length > MAX_POINTS) curves.batches = curves.batches.filter((_, i) => i % 2 === 0);
      scheduleRedraw();
    },
    epoch: (d) => {
      curves.epochs.push(d);
      redraw();
      state.textContent = `epoch ${d.epoch + 1}: train loss ${fmt(d.train.loss, 3)}, val accuracy ${pct(d.val.accuracy)}`;
      state.dataset.epochs = String(curves.epochs.length);
    },
    early_stop: (d) => { state.textContent = `stopped early after epoch ${d.epoch + 1}: best epoch ${d.best_epoch + 1}`; },
    report: (d) => showReport(d),
    summary: (d) => {
      follower.close();
      const s = d.summary || {};
      state.textContent = `${d.state === "stopped" ? "stopped" : "done"} after ${s.history?.length ?? "?"} epochs in ${fmt(s.seconds, 1)} s (best epoch ${(s.best_epoch ?? -1) + 1}, val accuracy ${pct(s.best_val_accuracy)})`;
      state.dataset.done = "1";
      document.getElementById("train-stop").disabled = true;
      document.getElementById("train-start").disabled = false;
      document.getElementById("deploy-go").disabled = false;
      say("training done: deploy next", "ok");
    },
    error: (src) => {
      if (src && src.readyState === EventSource.CLOSED) say("the training stream closed", "error");
    },
  }, { agent: run.agent ?? (agent() || "") });
  follower.addEventListener("error", (e) => {
    if (e.data) {
      const d = JSON.parse(e.data);
      follower.close();
      state.textContent = `failed: ${d.error}`;
      say(`training failed: ${d.error}`, "error");
      document.getElementById("train-start").disabled = false;
    }
  });
}

document.getElementById("train").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  const on = f.on.value || null;
  const options = { model: f.model.value, epochs: Number(f.epochs.value), image_size: Number(f.image_size.value),
    lr: Number(f.lr.value), augment: f.augment.checked, flip: f.flip.checked };
  document.getElementById("train-start").disabled = true;
  const started = await attempt("starting the run", async () => {
    say(on ? `sending the data set to ${on}…` : "registering the data set…");
    const data = on
      ? await api("POST", `/api/agents/${encodeURIComponent(on)}/datasets`, { body: { workspace: ws }, agent: "" })
      : await api("POST", `${W}/dataset`);
    return api("POST", "/api/train", { body: { dataset: data.dataset, options }, agent: on ?? (agent() || "") });
  });
  if (!started) {
    document.getElementById("train-start").disabled = false;
    return;
  }
  run = { agent: on, run_id: started.run_id };
  sessionStorage.setItem(RUN_KEY, JSON.stringify(run)); // a reload finds it again
  curves.epochs = [];
  curves.batches = [];
  document.getElementById("report").replaceChildren();
  document.getElementById("train-stop").disabled = false;
  say(`training ${started.run_id}${on ? ` on ${on}` : ""}`, "ok");
  follow();
});

document.getElementById("train-stop").addEventListener("click", () => {
  if (run) attempt("stopping", () => api("POST", `/api/train/${encodeURIComponent(run.run_id)}/stop`, { agent: run.agent ?? (agent() || "") }));
});

// --- deploy ---------------------------------------------------------------------------

document.getElementById("deploy").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!run) return;
  const f = e.target;
  const targets = [...f.querySelectorAll('input[name="target"]:checked')].map((i) => i.value || null);
  const body = {
    workspace: ws, run, model: f.model.value.trim(), targets,
    min_accuracy: f.min_accuracy.value === "" ? null : Number(f.min_accuracy.value),
    no_worse_than: f.no_worse_than.value === "" ? null : Number(f.no_worse_than.value),
  };
  say("deploying…");
  const done = await attempt("deploying", () => api("POST", "/api/deploy", { body }));
  if (!done) return;
  const rows = done.results.map((r) => el("tr", { "data-ok": r.ok ? "1" : "0" },
    el("th", { scope: "row" }, r.agent || "this agent"),
    el("td", {}, r.ok ? `deployed, version ${r.version}` : "refused"),
    el("td", {}, r.gate ? gateText(r.gate) : "–"),
    el("td", { class: "error" }, r.error || "")));
  document.getElementById("deploy-result").replaceChildren(el("table", { id: "deploy-table" },
    el("thead", {}, el("tr", {}, ...["Agent", "Result", "Gate", ""].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows)),
    el("p", {}, el("a", { href: `/run?model=${encodeURIComponent(body.model)}` }, "Run it on the camera")));
  say(done.results.every((r) => r.ok) ? "deployed" : "some targets refused: see the table", done.results.every((r) => r.ok) ? "ok" : "error");
});

function gateText(g) {
  const parts = [];
  if (g.accuracy !== undefined) parts.push(`accuracy ${pct(g.accuracy)}`);
  if (g.current_accuracy !== undefined && g.current_accuracy !== null) parts.push(`current ${pct(g.current_accuracy)}`);
  if (g.samples !== undefined) parts.push(`${g.samples} samples`);
  return parts.join(", ") || JSON.stringify(g);
}

// --- after a reload: the run this tab started, followed again or ready to deploy -------

const RUN_KEY = `edgewire.run.${agent() || "-"}.${ws}`;

async function restore() {
  const saved = JSON.parse(sessionStorage.getItem(RUN_KEY) || "null");
  if (!saved) return;
  const who = saved.agent ?? (agent() || "");
  const status = await api("GET", `/api/train/${encodeURIComponent(saved.run_id)}`, { agent: who }).catch(() => null);
  if (!status) {
    sessionStorage.removeItem(RUN_KEY); // the agent restarted: its runs are gone
    return;
  }
  run = saved;
  if (status.state === "succeeded" || status.state === "stopped") {
    const s = status.summary || {};
    document.getElementById("train-state").textContent =
      `run ${run.run_id}: ${status.state} after ${s.history?.length ?? "?"} epochs (val accuracy ${pct(s.best_val_accuracy)})`;
    document.getElementById("deploy-go").disabled = false;
    const report = await api("GET", `/api/train/${encodeURIComponent(run.run_id)}/files/report.json`, { agent: who }).catch(() => null);
    if (report?.confusion) showReport(report);
  } else if (status.state !== "failed") {
    document.getElementById("train-start").disabled = true;
    document.getElementById("train-stop").disabled = false;
    follow(); // its events from the start: the curves are drawn again
  }
}

refresh();
fillTargets();
restore();
