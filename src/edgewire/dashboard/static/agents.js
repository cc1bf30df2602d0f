// The agents this one acts on: add by address and token, check, remove, act on.
import { api, attempt, el, say } from "./app.js";

async function health(name, cell) {
  try {
    const data = await api("GET", "/api/overview", { agent: name });
    cell.textContent = `${data.ready ? "ready" : "not ready"}, version ${data.version}, ${data.models.length} models`;
  } catch (err) {
    cell.textContent = `unreachable: ${err.message}`;
    cell.className = "error";
  }
}

async function refresh() {
  const data = await attempt("listing the agents", () => api("GET", "/api/agents", { agent: "" }));
  if (!data) return;
  const body = document.querySelector("#agents tbody");
  body.replaceChildren(...data.agents.map((a) => {
    const cell = el("td", {}, "checking…");
    health(a.name, cell);
    return el("tr", { "data-agent": a.name },
      el("th", { scope: "row" }, a.name), el("td", {}, a.url), cell,
      el("td", {},
        el("button", { type: "button", class: "secondary", "aria-label": `Act on ${a.name}`,
          onclick: () => { localStorage.setItem("edgewire.agent", a.name); location.href = "/"; } }, "Act on it"),
        " ",
        el("button", { type: "button", class: "danger", "aria-label": `Remove ${a.name}`,
          onclick: async () => {
            if (await attempt(`removing ${a.name}`, () => api("DELETE", `/api/agents/${encodeURIComponent(a.name)}`, { agent: "" }))) refresh();
          } }, "Remove")));
  }));
  if (!data.agents.length) body.append(el("tr", {}, el("td", { colspan: 4 }, "None yet.")));
}

document.getElementById("add").addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target;
  const body = { name: f.name.value.trim(), url: f.url.value.trim(), token: f.token.value };
  if (await attempt(`adding ${body.name}`, () => api("POST", "/api/agents", { body, agent: "" }))) {
    say(`${body.name} added`, "ok");
    f.reset();
    refresh();
  }
});

refresh();
