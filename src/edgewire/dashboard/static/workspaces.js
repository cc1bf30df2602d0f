// Workspaces: the projects on the agent acted on, and a new one with N classes.
import { api, attempt, el, say } from "./app.js";

const list = document.getElementById("workspaces");

async function refresh() {
  const data = await attempt("listing the workspaces", () => api("GET", "/api/workspaces"));
  if (!data) return;
  list.replaceChildren(...data.workspaces.map((w) =>
    el("li", {},
      el("a", { href: `/workspaces/${encodeURIComponent(w.name)}` }, w.name),
      ` — ${w.classes.map((c) => `${c}: ${w.counts[c] ?? 0}`).join(", ")}`,
      w.split ? ` (split ${w.split.train}/${w.split.val}/${w.split.test})` : "",
    )));
  if (!data.workspaces.length) list.append(el("li", {}, "None yet: create one above."));
}

document.getElementById("create").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = e.target;
  const name = form.name.value.trim();
  const classes = form.classes.value.split(",").map((c) => c.trim()).filter(Boolean);
  const made = await attempt(`creating ${name}`, () => api("POST", "/api/workspaces", { body: { name, classes } }));
  if (made) {
    say(`created ${name} with ${classes.length} classes`, "ok");
    location.href = `/workspaces/${encodeURIComponent(name)}`;
  }
});

refresh();
