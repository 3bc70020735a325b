// Incident page: facts, timeline, concentration around the alarm, devices, contacts, commands,
// notifications, on-site records, and the operators' actions. There is no control that opens a valve.
import { api, ApiError, el, errorText, fmtAgo, fmtDate, fmtTime, markReady, mountNav } from "/ui/static/common.js";
import {
  COMMAND_NAMES, COMMAND_STATE_NAMES, DEVICE_KIND_NAMES, DEVICE_STATUS_CLASS, DEVICE_STATUS_NAMES, DISPOSITION_NAMES,
  KIND_NAMES, NOTIFICATION_STATUS_NAMES, RECIPIENT_ROLE_NAMES, SEVERITY_NAMES, STATE_NAMES, TIMELINE_NAMES,
  VALVE_REPORT_CLASS, VALVE_REPORT_NAMES, escalationText, placeText,
} from "/ui/static/labels.js";

const id = Number(new URLSearchParams(location.search).get("id"));
const root = document.getElementById("incident");
const pageError = document.getElementById("incident-error");
const actionError = document.getElementById("action-error");
const actionOk = document.getElementById("action-ok");
let user = null;
let ready = false;

function show(box, text) {
  box.textContent = text || "";
  box.classList.toggle("hidden", !text);
}

function table(headers, rows) {
  if (!rows.length) return el("p", { class: "muted" }, "无");
  return el("div", { class: "table-wrap" },
    el("table", {},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c)))))));
}

function badge(text, cls) {
  return el("span", { class: `badge ${cls}` }, text);
}

function timelineText(entry) {
  const d = entry.detail || {};
  const name = TIMELINE_NAMES[entry.type] || entry.type;
  const extra = [];
  if (d.lel != null) extra.push(`浓度 ${d.lel}%LEL`);
  if (d.valve_id) extra.push(`阀门 ${d.valve_id}`);
  if (d.note) extra.push(`备注：${d.note}`);
  if (d.outcome) extra.push(`${d.reached ? "已联系上" : "未联系上"}：${d.outcome}`);
  if (d.crew) extra.push(`人员：${d.crew}${d.eta_minutes != null ? `，预计 ${d.eta_minutes} 分钟到达` : ""}`);
  if (d.technician) extra.push(`技术员：${d.technician}，检测 ${d.detector_lel}%LEL，现场${d.valve_reopened_on_site ? "已恢复开阀" : "未开阀"}`);
  if (d.disposition) extra.push(`结论：${DISPOSITION_NAMES[d.disposition] || d.disposition}`);
  if (d.to && d.from && d.to !== d.from) extra.push(`${STATE_NAMES[d.from] || d.from} → ${STATE_NAMES[d.to] || d.to}`);
  return name + (extra.length ? "（" + extra.join("；") + "）" : "");
}

function actorText(actor) {
  if (actor.startsWith("user:")) return actor.slice(5);
  if (actor === "alerting" || actor.startsWith("alerting")) return "系统（报警服务）";
  if (actor.startsWith("escalation")) return "系统（升级）";
  return actor;
}

function renderFacts(incident, context) {
  document.getElementById("incident-title").textContent =
    `${KIND_NAMES[incident.kind] || incident.kind} · 事件 #${incident.id}`;
  const place = incident.place
    ? placeText({ town_name: incident.place.town.name, community_name: incident.place.community.name,
      building: incident.place.building, unit: incident.place.unit, room: incident.place.room }, incident.scope)
    : incident.scope || "—";
  const valve = incident.commands.length ? incident.commands[incident.commands.length - 1] : null;
  const reported = valve ? (valve.state === "confirmed" || incident.valve_closed_at ? "closed"
    : valve.reported_position === "fault" ? "fault" : valve.state === "refused" ? "refused"
      : ["failed", "expired"].includes(valve.state) ? "unconfirmed" : "closing") : null;
  const esc = context.escalation;
  const facts = [
    ["级别", badge(SEVERITY_NAMES[incident.severity] || incident.severity, `sev-${incident.severity}`)],
    ["状态", el("span", { id: "incident-state" }, STATE_NAMES[incident.state] || incident.state)],
    ["位置", place],
    ["报警设备", incident.alarm_device_id || "—"],
    ["报警浓度", incident.alarm_lel == null ? "—" : `${incident.alarm_lel}%LEL`],
    ["报警时间", `${fmtTime(incident.alarm_received_at)}（${fmtAgo(incident.alarm_received_at)}）`],
    ["关阀指令", fmtTime(incident.command_sent_at)],
    ["阀门", valve ? el("span", { id: "incident-valve" }, `指令:${COMMAND_NAMES[valve.command] || valve.command} · 上报:`,
      badge(VALVE_REPORT_NAMES[reported], VALVE_REPORT_CLASS[reported])) : "无阀门指令"],
    ["阀门上报关闭", fmtTime(incident.valve_closed_at)],
    ["升级", esc ? escalationText(esc.steps_fired, esc.stopped_at != null) : "—"],
    ["办结", incident.closed_at ? `${fmtTime(incident.closed_at)}（${DISPOSITION_NAMES[incident.disposition] || ""}）` : "—"],
  ];
  document.getElementById("incident-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function renderTimeline(incident) {
  if (!incident.timeline.length) {
    document.getElementById("timeline").replaceChildren(el("li", { class: "muted" }, "暂无记录"));
    return;
  }
  document.getElementById("timeline").replaceChildren(...incident.timeline.map((entry) =>
    el("li", { dataset: { type: entry.type } },
      el("span", { class: "when" }, fmtTime(entry.at)),
      el("span", {}, timelineText(entry), el("span", { class: "muted" }, ` · ${actorText(entry.actor)}`)))));
}

function renderChart(chart) {
  const box = document.getElementById("chart");
  if (!chart.points.length) {
    box.replaceChildren(el("p", { class: "muted" }, chart.device_id ? "报警前后 30 分钟内没有浓度数据" : "该事件没有报警设备"));
    return;
  }
  const W = 560, H = 220, L = 40, B = 24, T = 10, R = 10;
  const t0 = Date.parse(chart.start), t1 = Date.parse(chart.end);
  const ymax = Math.max(30, chart.high_alarm_lel || 0, ...chart.points.map((p) => p.lel_max)) * 1.1;
  const x = (t) => L + ((Date.parse(t) - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - v / ymax) * (H - T - B);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "报警前后浓度曲线");
  svg.style.width = "100%";
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text) node.textContent = text;
    svg.append(node);
  };
  add("line", { x1: L, y1: y(0), x2: W - R, y2: y(0), stroke: "#8893a5" });
  for (const [level, color, name] of [[chart.low_alarm_lel, "#b76e00", "低报"], [chart.high_alarm_lel, "#c62828", "高报"]]) {
    if (level == null) continue;
    add("line", { x1: L, y1: y(level), x2: W - R, y2: y(level), stroke: color, "stroke-dasharray": "4 3" });
    add("text", { x: 2, y: y(level) + 4, "font-size": 11, fill: color }, `${name}${level}`);
  }
  add("line", { x1: x(chart.alarm_at), y1: T, x2: x(chart.alarm_at), y2: H - B, stroke: "#c62828" });
  add("text", { x: x(chart.alarm_at) + 3, y: T + 10, "font-size": 11, fill: "#c62828" }, "报警");
  add("polyline", { points: chart.points.map((p) => `${x(p.t).toFixed(1)},${y(p.lel_max).toFixed(1)}`).join(" "), fill: "none", stroke: "#2f6fde", "stroke-width": 2 });
  add("text", { x: L, y: H - 6, "font-size": 11, fill: "#5b6678" }, fmtTime(chart.start).slice(11, 16));
  add("text", { x: W - R - 30, y: H - 6, "font-size": 11, fill: "#5b6678" }, fmtTime(chart.end).slice(11, 16));
  box.replaceChildren(svg, el("p", { class: "muted" }, `每 ${chart.bucket_s} 秒取最大值，设备 ${chart.device_id}`));
}

function renderDevices(context) {
  document.getElementById("devices").replaceChildren(table(
    ["设备", "类型", "型号", "状态", "最后上报", "安装日期", "到期日期"],
    context.devices.map((d) => [
      d.id,
      DEVICE_KIND_NAMES[d.kind] || d.kind,
      `${d.model.manufacturer} ${d.model.model}`,
      el("span", {}, badge(DEVICE_STATUS_NAMES[d.status] || d.status, DEVICE_STATUS_CLASS[d.status] || "st-unknown"),
        d.low_battery ? badge("电量低", "st-warn") : "", d.mains_lost ? badge("市电中断", "st-warn") : "",
        d.valve_position ? ` 阀位:${VALVE_REPORT_NAMES[d.valve_position] || d.valve_position}` : ""),
      d.last_seen_at ? fmtTime(d.last_seen_at) : "从未上报",
      fmtDate(d.installed_on),
      d.expires_on ? el("span", {}, fmtDate(d.expires_on), d.expired ? badge("已过期", "st-bad") : "") : "—",
    ])));
}

async function renderContacts(incident, context) {
  const box = document.getElementById("contacts");
  if (incident.household_id == null) {
    box.replaceChildren(el("p", { class: "muted" }, "群发事件，没有单一住户"));
    return;
  }
  let household;
  try {
    household = await api(`/households/${incident.household_id}`);
  } catch (err) {
    box.replaceChildren(el("p", { class: "muted" }, errorText(err)));
    return;
  }
  if (household.resident_phone == null && household.resident_name == null) {
    box.replaceChildren(el("p", { class: "muted" }, "您的角色不查看住户个人信息"));
    return;
  }
  const phone = el("span", { id: "contact-phone" }, household.resident_phone || "—");
  const name = el("span", { id: "contact-name" }, household.resident_name || "—");
  const children = [el("dl", { class: "facts" }, el("dt", {}, "住户"), el("dd", {}, name), el("dt", {}, "电话"), el("dd", {}, phone))];
  if (context.may_read_phone && household.resident_phone) {
    const reveal = el("button", { type: "button", class: "btn", id: "reveal-phone" }, "显示完整号码（将记入审计）");
    reveal.addEventListener("click", async () => {
      try {
        const contact = await api(`/households/${incident.household_id}/contact`);
        phone.textContent = contact.resident_phone || "—";
        name.textContent = contact.resident_name || "—";
        reveal.remove();
      } catch (err) {
        show(actionError, errorText(err));
      }
    });
    children.push(reveal);
  }
  box.replaceChildren(...children);
}

function renderCommands(incident) {
  document.getElementById("commands").replaceChildren(table(
    ["阀门", "指令", "状态", "上报阀位", "下发时间", "下发次数", "确认关闭时间"],
    incident.commands.map((c) => [c.valve_id, COMMAND_NAMES[c.command] || c.command, COMMAND_STATE_NAMES[c.state] || c.state,
      c.reported_position ? VALVE_REPORT_NAMES[c.reported_position] || c.reported_position : "—",
      fmtTime(c.issued_at), String(c.attempts.length), fmtTime(c.confirmed_at)])));
}

function renderNotifications(incident) {
  document.getElementById("notifications").replaceChildren(table(
    ["对象", "号码", "状态", "尝试", "创建", "发送"],
    incident.notifications.map((n) => [RECIPIENT_ROLE_NAMES[n.recipient_role] || n.recipient_role, n.recipient,
      NOTIFICATION_STATUS_NAMES[n.status] || n.status, String(n.attempts), fmtTime(n.created_at), fmtTime(n.sent_at)])));
}

function renderOnSite(context) {
  document.getElementById("onsite-records").replaceChildren(table(
    ["技术员", "到场时间", "检测浓度", "原因", "处理", "现场是否恢复开阀", "住户在场", "记录人"],
    context.on_site_records.map((r) => [r.technician, fmtTime(r.arrived_at), `${r.detector_lel}%LEL`, r.cause, r.action,
      r.valve_reopened_on_site ? "是（现场开阀）" : "否", r.resident_present ? "是" : "否", actorText(r.recorded_by)])));
}

// datetime-local values are county wall-clock times: send them with the +08:00 offset.
function countyTime(value) {
  return value.length === 16 ? `${value}:00+08:00` : `${value}+08:00`;
}

function nowInCounty() {
  return fmtTime(new Date()).replace(" ", "T").slice(0, 16);
}

function field(label, input) {
  return el("label", {}, label, input);
}

function form(idName, title, fields, submitText, toBody, path) {
  const node = el("form", { class: "stack", id: idName, novalidate: true },
    el("h3", {}, title), ...fields, el("button", { type: "submit", class: "btn btn-primary" }, submitText));
  node.addEventListener("submit", async (event) => {
    event.preventDefault();
    show(actionError, "");
    show(actionOk, "");
    let body;
    try {
      body = toBody(node);
    } catch (err) {
      show(actionError, err.message);
      return;
    }
    try {
      await api(`/incidents/${id}/${path}`, { method: "POST", body });
      show(actionOk, `${title}：已保存`);
      node.reset();
      await load();
    } catch (err) {
      show(actionError, errorText(err));
    }
  });
  return el("details", { class: "action", "data-action": path }, el("summary", { class: "btn" }, title), node);
}

function required(node, name, label) {
  const value = node.elements[name].value.trim();
  if (!value) throw new Error(`请填写${label}`);
  return value;
}

function renderActions(incident, context) {
  const box = document.getElementById("actions");
  if (!context.may_act) {
    box.replaceChildren(el("p", { class: "muted" }, "您的角色只能查看，不能处置事件"));
    return;
  }
  if (incident.state === "CLOSED") {
    box.replaceChildren(el("p", { class: "muted" }, "事件已办结"));
    return;
  }
  if (box.dataset.state === incident.state) return; // keep half-filled forms across live refreshes
  box.dataset.state = incident.state;
  const dispositions = Object.entries(DISPOSITION_NAMES).map(([value, label]) => el("option", { value }, label));
  box.replaceChildren(
    form("form-acknowledge", "确认", [field("备注", el("input", { name: "note", maxlength: 500 }))], "确认接手",
      (f) => ({ note: f.elements.note.value.trim() || null }), "acknowledge"),
    form("form-callback", "回访结果", [
      el("label", { class: "inline" }, el("input", { type: "checkbox", name: "reached" }), "已联系上住户"),
      field("回访结果", el("textarea", { name: "outcome", maxlength: 500 })),
    ], "保存回访", (f) => ({ reached: f.elements.reached.checked, outcome: required(f, "outcome", "回访结果") }), "callback"),
    form("form-dispatch", "派单", [
      field("处置人员/班组", el("input", { name: "crew", maxlength: 200 })),
      field("预计到达（分钟）", el("input", { name: "eta", type: "number", min: 0, max: 1440 })),
    ], "派单", (f) => ({ crew: required(f, "crew", "处置人员"), eta_minutes: f.elements.eta.value === "" ? null : Number(f.elements.eta.value) }), "dispatch"),
    form("form-on-site", "到场记录", [
      field("技术员", el("input", { name: "technician", maxlength: 100 })),
      field("到场时间（北京时间）", el("input", { name: "arrived_at", type: "datetime-local", value: nowInCounty() })),
      field("现场检测浓度（%LEL）", el("input", { name: "detector_lel", type: "number", min: 0, max: 100, step: "0.1" })),
      field("原因", el("input", { name: "cause", maxlength: 500 })),
      field("处理措施", el("input", { name: "action", maxlength: 500 })),
      el("fieldset", {}, el("legend", {}, "阀门是否已在现场恢复开启（记录事实，不是指令）"),
        el("label", { class: "inline" }, el("input", { type: "radio", name: "reopened", value: "no", checked: true }), "否，保持关闭"),
        el("label", { class: "inline" }, el("input", { type: "radio", name: "reopened", value: "yes" }), "是，技术员已在现场开启")),
      el("label", { class: "inline" }, el("input", { type: "checkbox", name: "resident_present" }), "住户在场"),
      field("备注", el("textarea", { name: "notes", maxlength: 1000 })),
    ], "保存到场记录", (f) => {
      const technician = required(f, "technician", "技术员");
      const arrivedAt = countyTime(required(f, "arrived_at", "到场时间"));
      const lel = required(f, "detector_lel", "现场检测浓度");
      return {
        technician,
        arrived_at: arrivedAt,
        detector_lel: Number(lel),
        cause: required(f, "cause", "原因"),
        action: required(f, "action", "处理措施"),
        valve_reopened_on_site: f.elements.reopened.value === "yes",
        resident_present: f.elements.resident_present.checked,
        notes: f.elements.notes.value.trim() || null,
      };
    }, "on-site"),
    form("form-close", "办结", [
      field("处置结论", el("select", { name: "disposition" }, el("option", { value: "" }, "请选择"), dispositions)),
      field("备注", el("input", { name: "note", maxlength: 500 })),
    ], "办结", (f) => ({ disposition: required(f, "disposition", "处置结论"), note: f.elements.note.value.trim() || null }), "close"),
  );
}

async function load() {
  let incident, context, chart;
  try {
    [incident, context, chart] = await Promise.all([
      api(`/incidents/${id}`),
      api(`/ui/api/incidents/${id}/context`),
      api(`/ui/api/incidents/${id}/concentration`),
    ]);
  } catch (err) {
    show(pageError, errorText(err));
    if (!ready) {
      document.getElementById("incident-facts")?.remove();
      ready = true;
      markReady();
    }
    return;
  }
  root.classList.remove("hidden");
  renderFacts(incident, context);
  renderTimeline(incident);
  renderChart(chart);
  renderDevices(context);
  renderCommands(incident);
  renderNotifications(incident);
  renderOnSite(context);
  renderActions(incident, context);
  if (!ready) {
    await renderContacts(incident, context);
    ready = true;
    markReady();
  }
}

function listen() {
  const source = new EventSource("/ui/api/events");
  source.addEventListener("incident", (event) => {
    if (JSON.parse(event.data).id === id) load();
  });
  source.addEventListener("resync", () => load());
}

try {
  user = await mountNav("board");
  if (!Number.isInteger(id) || id < 1) {
    show(pageError, "缺少或无效的事件编号");
    document.getElementById("incident-facts").remove();
    markReady();
  } else {
    await load();
    if (["admin", "duty_operator", "emergency_management", "community_staff"].includes(user.role)) listen();
  }
} catch (err) {
  if (!(err instanceof ApiError && err.status === 401)) show(pageError, errorText(err));
}
