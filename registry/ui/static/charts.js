// Small SVG charts for the county and progress pages: a stacked bar, a daily sparkline and a line chart
// with a target. Hand-written rather than a vendored library (uPlot ~50 KB, ECharts ~1 MB) because the
// pages need only these three shapes, there is no build step, and this file is a few KB. Every chart has
// a text alternative (role="img" + aria-label, <title> per part) and takes its colours from CSS classes.

const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const title = (text) => svg("title", {}, text);

/**
 * A horizontal bar split into parts, e.g. monitored / offline / unprotected households.
 * parts: [{value, cls, label}]; the bar spans their sum. Returns an <svg>.
 */
export function stackedBar(parts, { width = 180, height = 14 } = {}) {
  const total = parts.reduce((sum, p) => sum + p.value, 0);
  const label = parts.map((p) => `${p.label} ${p.value}`).join("，");
  const root = svg("svg", { class: "chart-bar", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
  if (total === 0) {
    root.append(svg("rect", { x: 0, y: 0, width, height, class: "bar-empty" }, title("无数据")));
    return root;
  }
  let x = 0;
  for (const part of parts) {
    if (part.value <= 0) continue;
    const w = (part.value / total) * width;
    const pct = ((100 * part.value) / total).toFixed(1);
    root.append(svg("rect", { x: x.toFixed(2), y: 0, width: Math.max(w, 0.5).toFixed(2), height, class: part.cls },
      title(`${part.label}：${part.value}（${pct}%）`)));
    x += w;
  }
  return root;
}

/** Daily counts as small columns (oldest first); days are the labels of the columns. */
export function sparkline(values, days, { width = 120, height = 22, label = "近30天报警" } = {}) {
  const max = Math.max(1, ...values);
  const step = width / Math.max(values.length, 1);
  const total = values.reduce((a, b) => a + b, 0);
  const root = svg("svg", { class: "chart-spark", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${label}：共${total}次` });
  root.append(svg("line", { x1: 0, x2: width, y1: height - 0.5, y2: height - 0.5, class: "spark-base" }));
  values.forEach((value, i) => {
    if (value <= 0) return;
    const h = Math.max(2, (value / max) * (height - 2));
    root.append(svg("rect", { x: (i * step + 0.5).toFixed(2), y: (height - h).toFixed(2), width: Math.max(step - 1, 1).toFixed(2),
      height: h.toFixed(2), class: "spark-bar" }, title(`${days[i] ?? ""}：${value}次`)));
  });
  return root;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * magnitude >= value) return m * magnitude;
  return 10 * magnitude;
}

/**
 * A line chart over months: series [{name, cls, points: [{x: "YYYY-MM-DD", y}]}], an optional target
 * {y, x, label} drawn as a dashed line with its deadline. x values are ISO dates; the axis runs from the
 * first point (or target start) to the later of the last point and the deadline.
 */
export function lineChart(series, { target = null, width = 560, height = 240, yLabel = "户", ariaLabel = "" } = {}) {
  const pad = { left: 56, right: 16, top: 16, bottom: 30 };
  const xs = series.flatMap((s) => s.points.map((p) => Date.parse(p.x)));
  if (target?.x) xs.push(Date.parse(target.x));
  const ys = series.flatMap((s) => s.points.map((p) => p.y));
  if (target) ys.push(target.y);
  const root = svg("svg", { class: "chart-line", width: "100%", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": ariaLabel, preserveAspectRatio: "xMidYMid meet" });
  if (xs.length === 0) {
    root.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "axis" }, "暂无数据"));
    return root;
  }
  const x0 = Math.min(...xs);
  const x1 = Math.max(...xs, x0 + 86400000 * 28);
  const yMax = niceMax(Math.max(...ys, 1));
  const px = (t) => pad.left + ((t - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const py = (v) => height - pad.bottom - (v / yMax) * (height - pad.top - pad.bottom);

  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4;
    root.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: py(v), y2: py(v), class: "grid" }));
    root.append(svg("text", { x: pad.left - 6, y: py(v) + 4, "text-anchor": "end", class: "axis" }, Math.round(v).toLocaleString("zh-CN")));
  }
  root.append(svg("text", { x: 4, y: pad.top - 4, class: "axis" }, yLabel));
  // Month ticks: at most ~8 labels.
  const start = new Date(x0);
  const months = [];
  for (let d = new Date(Date.UTC(start.getUTCFullYear(), start.getUTCMonth(), 1)); d.getTime() <= x1; d.setUTCMonth(d.getUTCMonth() + 1)) {
    if (d.getTime() >= x0) months.push(d.getTime());
  }
  const every = Math.max(1, Math.ceil(months.length / 8));
  months.forEach((t, i) => {
    if (i % every) return;
    const d = new Date(t);
    root.append(svg("text", { x: px(t), y: height - 10, "text-anchor": "middle", class: "axis" },
      `${d.getUTCFullYear()}-${String(d.getUTCMonth() + 1).padStart(2, "0")}`));
  });

  if (target) {
    root.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: py(target.y), y2: py(target.y), class: "target" },
      title(`${target.label}：${target.y.toLocaleString("zh-CN")}`)));
    root.append(svg("text", { x: width - pad.right, y: py(target.y) - 4, "text-anchor": "end", class: "target-label" },
      `${target.label} ${target.y.toLocaleString("zh-CN")}`));
    if (target.x) {
      const tx = px(Date.parse(target.x));
      root.append(svg("line", { x1: tx, x2: tx, y1: pad.top, y2: height - pad.bottom, class: "deadline" }, title(`截止 ${target.x}`)));
    }
  }
  for (const s of series) {
    if (s.points.length === 0) continue;
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${px(Date.parse(p.x)).toFixed(1)},${py(p.y).toFixed(1)}`).join(" ");
    root.append(svg("path", { d, class: `series ${s.cls}`, "data-series": s.name }));
    for (const p of s.points) {
      root.append(svg("circle", { cx: px(Date.parse(p.x)).toFixed(1), cy: py(p.y).toFixed(1), r: 3, class: `dot ${s.cls}` },
        title(`${s.name} ${p.x.slice(0, 7)}：${p.y.toLocaleString("zh-CN")}`)));
    }
  }
  return root;
}
