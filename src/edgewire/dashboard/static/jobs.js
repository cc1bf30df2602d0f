// Automation jobs (webhooks and polling) and the split heads this agent serves.
import { api, el, say } from "./app.js";

let poll = null;

async function jobs() {
  let data;
  try {
    data = await api("GET", "/api/jobs?limit=50");
  } catch (err) {
    if (err.status === 404) clearInterval(poll); // no automation: nothing will come
    document.getElementById("job-counts").textContent = err.status === 404
      ? "Automation is not configured on this agent (an [automation] table in its config)."
      : `Jobs: ${err.message}`;
    return;
  }
  document.getElementById("job-counts").textContent =
    Object.entries(data.counts).map(([s, n]) => `${n} ${s}`).join(", ") || "No jobs yet.";
  document.querySelector("#jobs tbody").replaceChildren(...data.jobs.map((j) =>
    el("tr", { "data-state": j.state },
      el("td", {}, String(j.id)), el("td", {}, j.kind), el("td", {}, j.state),
      el("td", { class: "num" }, `${j.attempts}/${j.max_attempts}`), el("td", {}, j.model || "–"),
      el("td", {}, new Date(j.updated_at * 1000).toLocaleString()), el("td", { class: "error" }, j.error || ""))));
}

async function split() {
  const data = await api("GET", "/api/overview").catch((err) => say(err.message, "error"));
  if (!data) return;
  const heads = data.models.filter((m) => m.split);
  document.getElementById("split-models").replaceChildren(...heads.map((m) =>
    el("li", {}, `${m.name} (version ${m.version}): tail ${m.split.tail} at ${m.split.at}, coded with ${m.split.coder}`)));
  if (!heads.length) document.getElementById("split-models").append(el("li", {}, "No split head is served here."));
}

jobs();
split();
poll = setInterval(jobs, 5000);
