// Live alarm board: active incidents (most severe, then oldest first), pushed by /ui/api/events.
import { api, ApiError, errorText, esc, fmtAgo, fmtTime, markReady, mountNav } from "/ui/static/common.js";
import {
  COMMAND_NAMES, KIND_NAMES, SEVERITY_NAMES, STATE_NAMES, VALVE_REPORT_CLASS, VALVE_REPORT_NAMES,
  escalationText, placeText,
} from "/ui/static/labels.js";

const PAGE = 500;
const SEVERITY_RANK = { critical: 0, warning: 1, info: 2 };

const rowsById = new Map();
let order = [];
let selectedId = null;
let loaded = false;
let pending = new Set();
let flushTimer = null;
let mayAct = false;

const tbody = document.getElementById("board-rows");
const banner = document.getElementById("banner");
const errorBox = document.getElementById("board-error");
const liveStatus = document.getElementById("live-status");
const soundButton = document.getElementById("sound-on");

function showError(text) {
  errorBox.textContent = text;
  errorBox.classList.toggle("hidden", !text);
}

function compare(a, b) {
  return (SEVERITY_RANK[a.severity] - SEVERITY_RANK[b.severity])
    || (Date.parse(a.alarm_received_at) - Date.parse(b.alarm_received_at))
    || (a.id - b.id);
}

function valveCell(valve) {
  if (!valve) return '<span class="muted">—</span>';
  const reported = VALVE_REPORT_NAMES[valve.reported] || valve.reported;
  return `<span class="valve" data-reported="${esc(valve.reported)}">指令:${esc(COMMAND_NAMES[valve.commanded] || valve.commanded)}`
    + ` · 上报:<span class="badge ${VALVE_REPORT_CLASS[valve.reported] || "st-unknown"}">${esc(reported)}</span></span>`
    + (valve.attempts > 1 ? ` <span class="muted">（第${valve.attempts}次下发）</span>` : "");
}

function rowHtml(row) {
  const stateClass = row.state === "NEW" || row.state === "NOTIFIED" ? "st-bad" : "st-info";
  return `<tr data-id="${row.id}" class="row-${esc(row.severity)}${row.id === selectedId ? " selected" : ""}" tabindex="-1">`
    + `<td><span class="badge sev-${esc(row.severity)}">${esc(SEVERITY_NAMES[row.severity] || row.severity)}</span></td>`
    + `<td><a href="/ui/incident?id=${row.id}">${esc(KIND_NAMES[row.kind] || row.kind)}</a></td>`
    + `<td class="place">${esc(placeText(row.place, row.scope))}</td>`
    + `<td><span class="badge state ${stateClass}">${esc(STATE_NAMES[row.state] || row.state)}</span></td>`
    + `<td>${valveCell(row.valve)}</td>`
    + `<td>${esc(escalationText(row.escalation_step, row.escalation_stopped))}</td>`
    + `<td class="num">${row.alarm_lel == null ? "—" : esc(row.alarm_lel.toFixed(1)) + "%LEL"}</td>`
    + `<td class="when">${esc(fmtTime(row.alarm_received_at))}</td>`
    + `<td class="ago" data-since="${esc(row.alarm_received_at)}">${esc(fmtAgo(row.alarm_received_at))}</td>`
    + "</tr>";
}

// One string, one innerHTML: a few hundred rows render in milliseconds, so a change re-renders the
// visible page instead of patching cells one by one.
function render() {
  order = [...rowsById.values()].sort(compare).map((row) => row.id);
  const shown = order.slice(0, PAGE);
  tbody.innerHTML = shown.length
    ? shown.map((id) => rowHtml(rowsById.get(id))).join("")
    : '<tr><td colspan="9" class="muted">当前没有处理中的报警</td></tr>';
  document.getElementById("board-footer").textContent =
    order.length > PAGE ? `显示前 ${PAGE} 条，共 ${order.length} 条（按级别和报警时间排序）` : "";
}

function renderCounts(counts) {
  for (const key of ["critical", "warning", "info", "unowned", "total"]) {
    document.getElementById(`count-${key}`).textContent = String(counts[key]);
  }
}

async function loadAll() {
  const data = await api("/ui/api/board", { query: { limit: 1000 } });
  rowsById.clear();
  for (const row of data.items) rowsById.set(row.id, row);
  renderCounts(data.counts);
  render();
  showError("");
  if (!loaded) {
    loaded = true;
    markReady();
  }
}

let audio = null;

function beep() {
  try {
    audio ??= new AudioContext();
    if (audio.state === "suspended") {
      soundButton.classList.remove("hidden");
      audio.resume();
    }
    const now = audio.currentTime;
    for (const [start, freq] of [[0, 880], [0.25, 660], [0.5, 880]]) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.frequency.value = freq;
      osc.type = "square";
      gain.gain.setValueAtTime(0.2, now + start);
      gain.gain.exponentialRampToValueAtTime(0.001, now + start + 0.22);
      osc.connect(gain).connect(audio.destination);
      osc.start(now + start);
      osc.stop(now + start + 0.23);
    }
  } catch {
    // No audio device: the banner and the flashing row still show it.
  }
}

soundButton.addEventListener("click", () => {
  audio ??= new AudioContext();
  audio.resume().then(() => soundButton.classList.add("hidden"));
});

function announce(row) {
  banner.textContent = `新的紧急报警：${KIND_NAMES[row.kind] || row.kind} · ${placeText(row.place, row.scope)} · ${fmtTime(row.alarm_received_at)}`;
  banner.classList.remove("hidden", "flash");
  void banner.offsetWidth; // restart the animation
  banner.classList.add("flash");
  beep();
}

let flushing = false;

async function flush() {
  flushTimer = null;
  if (flushing) {
    // One request at a time, so an older answer never overwrites a newer one.
    flushTimer = setTimeout(flush, 50);
    return;
  }
  flushing = true;
  try {
    await flushOnce();
  } finally {
    flushing = false;
  }
}

async function flushOnce() {
  const ids = [...pending].slice(0, 200);
  for (const id of ids) pending.delete(id);
  if (pending.size) flushTimer ??= setTimeout(flush, 0);
  let data;
  try {
    data = await api("/ui/api/board", { query: { ids } });
  } catch (err) {
    showError(errorText(err));
    return;
  }
  const fresh = [];
  const newlyCritical = [];
  const seen = new Set();
  for (const row of data.items) {
    seen.add(row.id);
    if (row.state === "CLOSED") {
      rowsById.delete(row.id);
      continue;
    }
    const before = rowsById.get(row.id);
    if (!before) fresh.push(row);
    // New, or raised to critical (a leak often starts as a low alarm and rises).
    if (row.severity === "critical" && before?.severity !== "critical") newlyCritical.push(row);
    rowsById.set(row.id, row);
  }
  for (const id of ids) if (!seen.has(id)) rowsById.delete(id); // no longer in this user's scope
  renderCounts(data.counts);
  render();
  for (const row of [...fresh, ...newlyCritical]) {
    const tr = tbody.querySelector(`tr[data-id="${row.id}"]`);
    if (tr) tr.classList.add("flash");
  }
  if (newlyCritical.length) announce(newlyCritical[0]);
}

function queue(id) {
  pending.add(id);
  // Coalesce bursts (one alarm touches an incident several times) into one request.
  flushTimer ??= setTimeout(flush, 80);
}

let stopped = false; // a role that may not watch the board: no reconnecting

function connect() {
  const source = new EventSource("/ui/api/events");
  source.addEventListener("hello", () => {
    liveStatus.textContent = "实时";
    liveStatus.className = "badge st-ok";
    loadAll().catch((err) => showError(errorText(err)));
  });
  source.addEventListener("resync", () => {
    liveStatus.textContent = "实时（已重新同步）";
    liveStatus.className = "badge st-ok";
    pending = new Set();
    loadAll().catch((err) => showError(errorText(err)));
  });
  source.addEventListener("incident", (event) => {
    if (!loaded) return; // the full load after hello includes it
    queue(JSON.parse(event.data).id);
  });
  source.addEventListener("error", async () => {
    liveStatus.textContent = "连接中断，正在重连…";
    liveStatus.className = "badge st-bad";
    if (source.readyState === EventSource.CLOSED && !stopped) {
      // The server refused the stream (session over, or the database away): check, then retry.
      try {
        await api("/auth/me");
      } catch {
        return; // api() already went to the login page on 401
      }
      if (!stopped) setTimeout(connect, 3000);
    }
  });
  return source;
}

function select(id, scroll = true) {
  selectedId = id;
  for (const tr of tbody.querySelectorAll("tr.selected")) tr.classList.remove("selected");
  const tr = id == null ? null : tbody.querySelector(`tr[data-id="${id}"]`);
  if (tr) {
    tr.classList.add("selected");
    if (scroll) tr.scrollIntoView({ block: "nearest" });
  }
}

function move(delta) {
  const shown = order.slice(0, PAGE);
  if (!shown.length) return;
  const index = shown.indexOf(selectedId);
  const next = index < 0 ? (delta > 0 ? 0 : shown.length - 1) : Math.min(shown.length - 1, Math.max(0, index + delta));
  select(shown[next]);
}

async function acknowledgeSelected() {
  if (selectedId == null) return;
  if (!mayAct) {
    showError("您的角色不能确认事件");
    return;
  }
  try {
    await api(`/incidents/${selectedId}/acknowledge`, { method: "POST", body: {} });
    queue(selectedId);
  } catch (err) {
    showError(errorText(err));
  }
}

document.addEventListener("keydown", (event) => {
  if (event.target.closest && event.target.closest("input, textarea, select, dialog")) return;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  switch (event.key) {
    case "j": case "ArrowDown": move(1); break;
    case "k": case "ArrowUp": move(-1); break;
    case "Enter": if (selectedId != null) location.assign(`/ui/incident?id=${selectedId}`); break;
    case "a": acknowledgeSelected(); break;
    case "?": document.getElementById("shortcuts").showModal(); break;
    default: return;
  }
  event.preventDefault();
});

tbody.addEventListener("click", (event) => {
  const tr = event.target.closest("tr[data-id]");
  if (tr) select(Number(tr.dataset.id), false);
});

// Ages tick every second without re-rendering the rows.
setInterval(() => {
  const now = Date.now();
  for (const cell of tbody.querySelectorAll("td.ago")) cell.textContent = fmtAgo(cell.dataset.since, now);
}, 1000);

// The stream opens while the header loads: the board's first data waits only for the stream's hello.
const stream = connect();
try {
  const user = await mountNav("board");
  mayAct = user.role === "admin" || user.role === "duty_operator";
  if (!["admin", "duty_operator", "emergency_management", "community_staff"].includes(user.role)) {
    stopped = true;
    stream.close();
    showError("您的角色无权查看报警看板");
    markReady();
  }
} catch (err) {
  if (!(err instanceof ApiError && err.status === 401)) showError(errorText(err));
}
