// Models: upload, activate, roll back, delete; a TensorRT build's progress.
import { api, attempt, el, say } from "./app.js";

const list = document.getElementById("models");

function engine(status) {
  const e = status?.edgewire?.engine;
  if (!e) return null;
  const secs = e.elapsed_s === null || e.elapsed_s === undefined ? "" : ` ${Math.round(e.elapsed_s)} s`;
  return el("p", { class: "muted engine" }, `TensorRT engine: ${e.state}${secs}`);
}

async function act(what, work) {
  const done = await attempt(what, work);
  if (done !== undefined) {
    say(`${what}: done`, "ok");
    await refresh();
  }
}

function versionRow(m, v) {
  const serving = m.serving && m.serving.version === v.version;
  const aliases = Object.entries(m.aliases).filter(([, n]) => n === v.version).map(([a]) => a);
  return el("tr", { "data-version": v.version },
    el("td", {}, String(v.version)),
    el("td", {}, v.format),
    el("td", { class: "num" }, `${(v.size / 1024).toFixed(0)} KiB`),
    el("td", {}, aliases.join(", ") || "–"),
    el("td", {}, serving ? "serving" : ""),
    el("td", {},
      el("button", { type: "button", class: "secondary", disabled: serving,
        "aria-label": `Activate version ${v.version} of ${m.name}`,
        onclick: () => act(`activating ${m.name} version ${v.version}`,
          () => api("POST", `/api/models/${encodeURIComponent(m.name)}/activate`, { body: { version: v.version, alias: "production" } })) },
        "Activate"),
      " ",
      el("button", { type: "button", class: "danger",
        "aria-label": `Delete version ${v.version} of ${m.name}`,
        onclick: () => confirm(`Delete version ${v.version} of ${m.name}?`) &&
          act(`deleting ${m.name} version ${v.version}`,
            () => api("DELETE", `/api/models/${encodeURIComponent(m.name)}/versions/${v.version}?force=1`)) },
        "Delete"),
    ),
  );
}

async function refresh() {
  const data = await attempt("listing the models", () => api("GET", "/api/models"));
  if (!data) return;
  if (!data.models.length) {
    list.replaceChildren(el("p", {}, "No model yet."));
    return;
  }
  const parts = [];
  for (const m of data.models) {
    let status = null;
    if (m.serving) status = await api("GET", `/v2/models/${encodeURIComponent(m.name)}`).catch(() => null);
    parts.push(el("article", { class: "model", "data-model": m.name },
      el("h3", {}, m.name),
      engine(status),
      el("div", { class: "scroll" }, el("table", {},
        el("thead", {}, el("tr", {}, ...["Version", "Format", "Size", "Aliases", "", "Actions"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, m.versions.map((v) => versionRow(m, v))),
      )),
      el("p", { class: "row" },
        el("button", { type: "button", class: "secondary", "aria-label": `Roll back ${m.name}`,
          onclick: () => act(`rolling back ${m.name}`, () => api("POST", `/api/models/${encodeURIComponent(m.name)}/rollback`, { body: { alias: "production" } })) },
          "Roll back production"),
        el("button", { type: "button", class: "danger", "aria-label": `Delete model ${m.name}`,
          onclick: () => confirm(`Delete ${m.name} and all its versions?`) &&
            act(`deleting ${m.name}`, () => api("DELETE", `/api/models/${encodeURIComponent(m.name)}`)) },
          "Delete model"),
      ),
    ));
  }
  list.replaceChildren(...parts);
  if (data.models.some((m) => m.serving)) setTimeout(pollEngines, 3000);
}

async function pollEngines() {
  // Only while a build runs: a page left open does not poll for nothing.
  if (document.querySelector(".engine")?.textContent.includes("building")) await refresh();
}

document.getElementById("upload").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = e.target;
  const file = form.file.files[0];
  if (!file) return;
  const name = form.name.value.trim();
  const alias = form.alias.value.trim() || "production";
  say(`uploading ${file.name} (${(file.size / 1024).toFixed(0)} KiB)…`);
  const done = await attempt(`uploading ${name}`, () =>
    api("PUT", `/api/models/${encodeURIComponent(name)}?alias=${encodeURIComponent(alias)}&filename=${encodeURIComponent(file.name)}`,
      { body: file, type: "application/octet-stream" }));
  if (done) {
    say(`${name} version ${done.version} stored and serving as ${alias}`, "ok");
    form.reset();
    await refresh();
  }
});

refresh();
