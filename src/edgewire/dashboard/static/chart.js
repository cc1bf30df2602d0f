// A small SVG line chart: series of (x, y) on one x axis, losses on the left scale,
// accuracies (0..1) on the right one.
const NS = "http://www.w3.org/2000/svg";

function node(tag, attrs) {
  const n = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  return n;
}

/** Draw ``series`` ({name, color, points: [[x, y]], right: bool}) into ``svg``. */
export function draw(svg, series, { xLabel = "epoch" } = {}) {
  const w = svg.clientWidth || 600;
  const h = svg.clientHeight || 200;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.replaceChildren();
  const pad = { l: 40, r: 40, t: 10, b: 24 };
  const all = series.flatMap((s) => s.points);
  if (!all.length) return;
  const xMax = Math.max(1, ...all.map((p) => p[0]));
  const left = series.filter((s) => !s.right).flatMap((s) => s.points.map((p) => p[1]));
  const yMax = Math.max(1e-6, ...left);
  const X = (x) => pad.l + (x / xMax) * (w - pad.l - pad.r);
  const YL = (y) => h - pad.b - (y / yMax) * (h - pad.t - pad.b);
  const YR = (y) => h - pad.b - y * (h - pad.t - pad.b);
  svg.append(node("line", { x1: pad.l, y1: h - pad.b, x2: w - pad.r, y2: h - pad.b, stroke: "#999" }));
  for (const [text, x, y, anchor] of [
    [yMax.toFixed(2), 4, pad.t + 10, "start"], ["loss", 4, h / 2, "start"],
    ["100%", w - 4, pad.t + 10, "end"], ["acc.", w - 4, h / 2, "end"],
    [`${xLabel} ${xMax.toFixed(0)}`, w - pad.r, h - 6, "end"],
  ]) {
    const t = node("text", { x, y, "font-size": 11, fill: "#555", "text-anchor": anchor });
    t.textContent = text;
    svg.append(t);
  }
  for (const s of series) {
    if (!s.points.length) continue;
    const Y = s.right ? YR : YL;
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ");
    svg.append(node("path", { d, fill: "none", stroke: s.color, "stroke-width": s.thin ? 1 : 2, opacity: s.thin ? 0.5 : 1 }));
  }
}
