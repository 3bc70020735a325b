// County health: towns and communities → a community's buildings → a building's households.
// Everything is aggregated and paged by the server (/county/...); no resident's name or phone reaches
// this page. The view is in the URL (?community=…&building=…), so back/forward and links work.

import { api, el, errorText, fmtAgo, fmtTime, markReady, mountNav } from "/ui/static/common.js";
import { sparkline, stackedBar } from "/ui/static/charts.js";

const $ = (id) => document.getElementById(id);

const PARTS = [
  ["monitored", "监测中"],
  ["offline", "离线/未知"],
  ["unprotected", "过期/未受保护"],
  ["lpg", "液化气 未接入监测"],
];

const HOUSEHOLD_STATUS = {
  monitored: ["监测中", "st-ok"],
  offline: ["离线/未知", "st-unknown"],
  unprotected: ["过期/未受保护", "st-bad"],
  lpg: ["液化气 未接入监测", "st-info"],
};

const DEVICE_STATUS = {
  normal: ["正常", "st-ok"],
  alarm: ["报警中", "st-bad"],
  fault: ["故障", "st-bad"],
  end_of_life: ["寿命到期", "st-bad"],
  unknown: ["离线/未知", "st-unknown"],
};

function barParts(c) {
  // NG households are monitored, offline or unprotected; LPG households are shown apart (never monitored).
  const ngUnprotected = c.unprotected - c.lpg_unprotected;
  return [
    { value: c.monitored, cls: "monitored", label: "监测中" },
    { value: c.offline, cls: "offline", label: "离线/未知" },
    { value: ngUnprotected + c.lpg_unprotected, cls: "unprotected", label: "过期/未受保护" },
    { value: c.lpg - c.lpg_unprotected, cls: "lpg", label: "液化气 未接入监测" },
  ];
}

function pct(part, whole) {
  return whole ? `${((100 * part) / whole).toFixed(1)}%` : "—";
}

function numCell(value, cls = "") {
  return el("td", { class: `num ${value === 0 ? "zero" : cls}` }, value.toLocaleString("zh-CN"));
}

function countCells(c) {
  return [
    numCell(c.households),
    numCell(c.ng),
    el("td", { class: "num" }, c.monitored.toLocaleString("zh-CN"), el("div", { class: "muted" }, pct(c.monitored, c.ng))),
    numCell(c.offline, "warn"),
    numCell(c.unprotected, "bad"),
    numCell(c.valve_faults, "bad"),
    numCell(c.lpg),
  ];
}

const COUNT_HEADERS = ["户数", "天然气", "监测中", "离线/未知", "过期/未受保护", "阀门故障", "液化气 未接入监测"];

function head(first, extra = []) {
  return el("thead", {}, el("tr", {}, el("th", {}, first),
    COUNT_HEADERS.map((h) => el("th", { class: "num" }, h)), extra.map((h) => el("th", {}, h))));
}

function renderStats(c) {
  const stat = (value, label, cls = "") => el("div", { class: `stat ${cls}` },
    el("div", { class: "num" }, value.toLocaleString("zh-CN")), el("div", { class: "label" }, label));
  $("stats").replaceChildren(
    stat(c.households, "在册户数"),
    stat(c.monitored, `监测中（天然气 ${pct(c.monitored, c.ng)}）`, "ok"),
    stat(c.offline, "离线/状态未知", "unknown"),
    stat(c.unprotected, "过期/未受保护", "critical"),
    stat(c.valve_faults, "切断阀故障", "warning"),
    stat(c.lpg, "液化气 未接入监测", "info"),
    stat(c.alarms, "近30天报警", "critical"),
  );
  $("legend").replaceChildren(...PARTS.map(([cls, label]) => el("span", {}, el("i", { class: cls }), label)),
    el("span", {}, "离线/未知：报警器超过1.5倍心跳周期未上报、从未上报或报告故障，不计为正常"));
}

function crumbs(items) {
  const nodes = [];
  items.forEach(([label, href], i) => {
    if (i) nodes.push(el("span", { class: "sep", "aria-hidden": "true" }, "›"));
    nodes.push(href ? el("a", { href, onclick: navigate }, label) : el("span", { "aria-current": "page" }, label));
  });
  $("crumbs").replaceChildren(...nodes);
}

function navigate(event) {
  if (event.ctrlKey || event.metaKey || event.shiftKey || event.button > 0) return;
  event.preventDefault();
  history.pushState(null, "", event.currentTarget.getAttribute("href"));
  show().catch(showError);
}

function placeRow(cls, href, name, counts, series, days) {
  const link = el("a", { href, onclick: navigate }, name);
  const row = el("tr", { class: `place ${cls}`, dataset: { href } },
    el("td", {}, link),
    countCells(counts),
    el("td", {}, sparkline(series, days), el("span", { class: "muted" }, `${counts.alarms}次`)),
    el("td", {}, stackedBar(barParts(counts))));
  // The whole row is a target for the mouse; the link inside it is the keyboard's (Tab, Enter).
  row.addEventListener("click", (event) => {
    if (event.target.closest("a")) return;
    link.click();
  });
  return row;
}

async function showCounty(townCode) {
  const data = await api("/county/health");
  const town = townCode ? data.towns.find((t) => t.code === townCode) : null;
  $("title").textContent = town ? `县域健康 · ${town.name}` : "县域健康 · 乌审旗";
  crumbs(town ? [["乌审旗", "/ui/county"], [town.name, null]] : [["乌审旗", null]]);
  renderStats(town ? town.counts : data.totals.counts);
  const rows = [];
  for (const t of town ? [town] : data.towns) {
    rows.push(placeRow("town", `/ui/county?town=${t.code}`, t.name, t.counts, t.alarms_per_day, data.days));
    for (const c of t.communities) {
      rows.push(placeRow("community", `/ui/county?community=${c.code}`, c.name, c.counts, c.alarms_per_day, data.days));
    }
  }
  $("content").replaceChildren(
    el("h2", {}, "各镇（苏木）与社区"),
    el("div", { class: "table-wrap" }, el("table", { id: "towns" }, head("镇 / 社区", ["近30天报警", "构成"]), el("tbody", {}, rows))),
  );
  $("as-of").textContent = `数据时间 ${fmtTime(data.as_of)}（统计每15秒更新，最多${data.max_age_s}秒前）；设备在线状态来自告警服务的健康巡检`;
}

async function showCommunity(code) {
  const data = await api(`/county/communities/${code}`, { query: { limit: 100 } });
  $("title").textContent = `${data.name} · ${data.town_name}`;
  crumbs([["乌审旗", "/ui/county"], [data.town_name, `/ui/county?town=${data.town_code}`], [data.name, null]]);
  renderStats(data.counts);
  const body = el("tbody", {});
  const more = el("button", { type: "button", class: "btn more hidden", id: "more" }, "加载更多楼栋");
  const add = (page) => {
    for (const b of page.buildings) {
      const href = `/ui/county?community=${code}&building=${encodeURIComponent(b.building)}`;
      const link = el("a", { href, onclick: navigate }, b.building);
      const row = el("tr", { class: "place building", dataset: { href } }, el("td", {}, link), countCells(b.counts),
        el("td", { class: "num" }, b.counts.alarms), el("td", {}, stackedBar(barParts(b.counts))));
      row.addEventListener("click", (event) => { if (!event.target.closest("a")) link.click(); });
      body.append(row);
    }
    more.classList.toggle("hidden", !page.next_cursor);
    more.onclick = async () => add(await api(`/county/communities/${code}`, { query: { limit: 100, cursor: page.next_cursor } }));
  };
  add(data);
  $("content").replaceChildren(
    el("h2", {}, "楼栋"),
    el("div", { class: "table-wrap" }, el("table", { id: "buildings" }, head("楼栋", ["近30天报警", "构成"]), body)),
    more,
  );
  $("as-of").textContent = `数据时间 ${fmtTime(new Date())}`;
}

function deviceBadge(status, lastSeen) {
  if (!status) return el("span", { class: "badge st-unknown" }, "从未上报");
  const [label, cls] = DEVICE_STATUS[status] || [status, "st-unknown"];
  return el("span", {}, el("span", { class: `badge ${cls}` }, label),
    lastSeen ? el("div", { class: "muted", title: fmtTime(lastSeen) }, `最后上报 ${fmtTime(lastSeen)}（${fmtAgo(lastSeen)}）`) : null);
}

async function showBuilding(code, building) {
  const path = `/county/communities/${code}/buildings/${encodeURIComponent(building)}/households`;
  const first = await api(path, { query: { limit: 100 } });
  $("title").textContent = `${first.community_name} ${building}`;
  crumbs([["乌审旗", "/ui/county"], [first.town_name, `/ui/county?town=${first.town_code}`],
    [first.community_name, `/ui/county?community=${code}`], [building, null]]);
  $("stats").replaceChildren();
  $("legend").replaceChildren(el("span", {}, "只显示地址与设备状态；住户姓名、电话不在此页显示"));
  const body = el("tbody", {});
  const more = el("button", { type: "button", class: "btn more hidden", id: "more" }, "加载更多住户");
  const add = (page) => {
    for (const h of page.items) {
      const [label, cls] = HOUSEHOLD_STATUS[h.status];
      body.append(el("tr", { class: "household", dataset: { id: h.id } },
        el("td", {}, `${h.building}${h.unit}${h.room}`),
        el("td", {}, h.gas_type === "NG" ? "天然气" : "液化气"),
        el("td", {}, el("span", { class: `badge ${cls}` }, label), h.expired ? el("div", { class: "muted" }, "有设备超过使用年限") : null),
        el("td", {}, h.gas_type === "LPG" && !h.alarm_status ? "—" : deviceBadge(h.alarm_status, h.alarm_last_seen_at)),
        el("td", {}, h.valve_status ? el("span", { class: `badge ${(DEVICE_STATUS[h.valve_status] || ["", "st-unknown"])[1]}` },
          h.valve_fault ? "故障" : (DEVICE_STATUS[h.valve_status] || [h.valve_status])[0]) : "—"),
        el("td", { class: `num ${h.alarms ? "bad" : "zero"}` }, h.alarms)));
    }
    more.classList.toggle("hidden", !page.next_cursor);
    more.onclick = async () => add(await api(path, { query: { limit: 100, cursor: page.next_cursor } }));
  };
  add(first);
  $("content").replaceChildren(
    el("h2", {}, "住户（按门牌）"),
    el("div", { class: "table-wrap" }, el("table", { id: "households" },
      el("thead", {}, el("tr", {}, ["地址", "燃气", "状态", "报警器", "切断阀", "近30天报警"].map((h) => el("th", {}, h)))), body)),
    more,
  );
  $("as-of").textContent = `数据时间 ${fmtTime(new Date())}`;
}

function showError(err) {
  const box = $("error");
  box.textContent = err?.status === 403 ? `${errorText(err)}：您只能查看本人管辖范围内的数据` : errorText(err);
  box.classList.remove("hidden");
  $("content").replaceChildren();
  $("stats").replaceChildren();
  $("legend").replaceChildren();
  markReady();
}

async function show() {
  $("error").classList.add("hidden");
  const params = new URLSearchParams(location.search);
  const community = params.get("community");
  const building = params.get("building");
  if (community && building) await showBuilding(community, building);
  else if (community) await showCommunity(community);
  else await showCounty(params.get("town"));
  markReady();
}

window.addEventListener("popstate", () => show().catch(showError));

mountNav("county")
  .then(show)
  .catch(showError);
