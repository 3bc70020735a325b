// Programme progress: installations against the targets over time, per town and community, monthly
// verification and the quarterly settlement, 30% spot-check findings and overdue work. Aggregates only:
// /progress, /county/installations, /settlement/{year}/q{quarter}, /spot-checks/findings.

import { api, el, errorText, fmtDate, fmtTime, markReady, mountNav } from "/ui/static/common.js";
import { lineChart } from "/ui/static/charts.js";

const $ = (id) => document.getElementById(id);
const GAS = { NG: "天然气", LPG: "液化气" };
const FINDINGS = { match: ["相符", "st-ok"], discrepancy: ["不符", "st-warn"], missing: ["缺失", "st-bad"] };
const OVERDUE = { roster: "花名册未按时提交", installation: "安装未完成", signatures: "确认单签字不全" };
const BUREAU = ["admin", "housing_bureau"];
const CHECKERS = ["admin", "housing_bureau", "community_staff"];

const n = (value) => Number(value).toLocaleString("zh-CN");
const yuan = (fen) => (fen / 100).toLocaleString("zh-CN", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const pct = (part, whole) => (whole ? `${((100 * part) / whole).toFixed(1)}%` : "—");

function progressBar(part, whole) {
  const width = whole ? Math.min(100, (100 * part) / whole) : 0;
  return el("span", { class: "progress-bar", role: "img", "aria-label": `完成 ${pct(part, whole)}` },
    el("span", { style: `width:${width.toFixed(1)}%` }));
}

function renderStats(report) {
  const stat = (value, label, cls = "") => el("div", { class: `stat ${cls}` },
    el("div", { class: "num" }, value), el("div", { class: "label" }, label));
  const sum = (key) => report.communities.reduce((total, c) => total + c[key], 0);
  $("stats").replaceChildren(
    ...report.targets.map((t) => stat(`${n(t.installed)} / ${n(t.households)}`,
      `${GAS[t.gas_type]}已安装（${t.percent.toFixed(1)}%，目标截止 ${fmtDate(t.deadline)}）`, t.percent >= 100 ? "ok" : "info")),
    stat(n(sum("verified")), `已核验（占已安装 ${pct(sum("verified"), sum("installed"))}）`),
    stat(n(sum("expired")), "设备过期户数", "warning"),
    stat(n(sum("unprotected")), "未受保护户数", "critical"),
  );
}

function renderCharts(report, months) {
  const charts = report.targets.map((t) => {
    const own = months.filter((m) => m.gas_type === t.gas_type);
    const points = own.map((m) => ({ x: m.month, y: m.cumulative }));
    let verifiedSoFar = 0;
    const verified = own.map((m) => ({ x: m.month, y: (verifiedSoFar += m.verified) }));
    const name = GAS[t.gas_type];
    return el("figure", { class: "panel chart", dataset: { gas: t.gas_type } },
      el("figcaption", {}, el("strong", {}, `${name}累计安装`), el("span", { class: "muted" }, `（五方签字确认单，目标 ${n(t.households)} 户）`),
        el("span", { class: "legend" }, el("span", {}, el("i", { class: `key-${t.gas_type.toLowerCase()}` }), "已安装"), el("span", {}, el("i", { class: "key-verified" }), "已核验"))),
      lineChart([{ name: `${name}已安装`, cls: t.gas_type.toLowerCase(), points }, { name: "已核验", cls: "verified", points: verified }], {
        target: { y: t.households, x: t.deadline, label: "目标" },
        ariaLabel: `${name}累计安装 ${n(t.installed)} 户，目标 ${n(t.households)} 户`,
      }));
  });
  $("charts").replaceChildren(...charts);
}

function renderPlaces(report) {
  const towns = new Map();
  for (const c of report.communities) {
    const key = `${c.town_code}|${c.gas_type}`;
    const town = towns.get(key) ?? { name: c.town_name, gas_type: c.gas_type, households: 0, installed: 0, verified: 0, expired: 0, unprotected: 0, rows: [] };
    for (const k of ["households", "installed", "verified", "expired", "unprotected"]) town[k] += c[k];
    town.rows.push(c);
    towns.set(key, town);
  }
  const row = (cls, name, r) => el("tr", { class: cls },
    el("td", {}, name), el("td", {}, GAS[r.gas_type]), el("td", { class: "num" }, n(r.households)),
    el("td", { class: "num" }, n(r.installed)), el("td", {}, progressBar(r.installed, r.households), pct(r.installed, r.households)),
    el("td", { class: "num" }, n(r.verified)), el("td", { class: `num ${r.expired ? "warn" : "zero"}` }, n(r.expired)),
    el("td", { class: `num ${r.unprotected ? "bad" : "zero"}` }, n(r.unprotected)));
  const body = [];
  // Towns in code order, natural gas before LPG within a town.
  const ordered = [...towns.entries()].sort(([a], [b]) => a.replace("|NG", "|0").localeCompare(b.replace("|NG", "|0")));
  for (const [, town] of ordered) {
    body.push(row("town", town.name, town));
    for (const c of town.rows) body.push(row("community", c.community_name, c));
  }
  $("places").replaceChildren(
    el("thead", {}, el("tr", {}, ["镇 / 社区", "燃气", "户数", "已安装", "完成率", "已核验", "设备过期", "未受保护"]
      .map((h, i) => el("th", { class: i >= 2 && i !== 4 ? "num" : null }, h)))),
    el("tbody", {}, body));
}

function quarters(asOf) {
  const [year, month] = asOf.split("-").map(Number);
  const list = [];
  for (let y = 2024; y <= year; y++) {
    for (let q = 1; q <= 4; q++) if (y < year || (q - 1) * 3 + 1 <= month) list.push([y, q]);
  }
  return list.reverse();
}

function latestVerifiedQuarter(months) {
  const verified = months.filter((m) => m.verified > 0).map((m) => m.month).sort();
  if (!verified.length) return null;
  const [y, m] = verified.at(-1).split("-").map(Number);
  return `${y}/q${Math.floor((m - 1) / 3) + 1}`;
}

async function renderSettlement(user, report, months) {
  const box = $("settlement");
  const installed = report.communities.reduce((t, c) => t + c.installed, 0);
  const verified = report.communities.reduce((t, c) => t + c.verified, 0);
  const head = el("p", {}, `已核验 ${n(verified)} 户 / 已安装 ${n(installed)} 户 `, progressBar(verified, installed), pct(verified, installed));
  if (!BUREAU.includes(user.role)) {
    $("quarter").closest("label").classList.add("hidden");
    box.replaceChildren(head, el("p", { class: "muted" }, "季度结算单仅住建局可查看"));
    return;
  }
  const select = $("quarter");
  if (!select.options.length) {
    for (const [y, q] of quarters(report.as_of)) select.append(el("option", { value: `${y}/q${q}` }, `${y}年第${q}季度`));
    // Default to the latest quarter with verified installations; the current one is usually still empty.
    const latest = latestVerifiedQuarter(months);
    if (latest && [...select.options].some((o) => o.value === latest)) select.value = latest;
    select.onchange = () => renderSettlement(user, report, months).catch(showError);
  }
  const statement = await api(`/settlement/${select.value}`);
  const status = statement.frozen
    ? el("span", { class: "badge st-ok", id: "settled" }, `已结算（${fmtTime(statement.frozen_at)} 冻结${statement.differences?.length ? `，其后有${statement.differences.length}处变动` : ""}）`)
    : el("span", { class: "badge st-warn", id: "settled" }, "未结算（金额随核验和抽查变化）");
  box.replaceChildren(head, el("p", {}, "结算状态：", status),
    el("p", {}, `${select.selectedOptions[0].textContent}应付政府补贴（已核验、扣除抽查调整）：`, el("strong", { id: "payable" }, `${yuan(statement.payable_fen)} 元`)),
    el("table", { id: "statement" },
      el("thead", {}, el("tr", {}, el("th", {}, "供气企业"), el("th", {}, "燃气"), el("th", { class: "num" }, "应付（元）"))),
      el("tbody", {}, statement.suppliers.length
        ? statement.suppliers.map((s) => el("tr", {}, el("td", {}, s.supplier), el("td", {}, GAS[s.gas_type]), el("td", { class: "num" }, yuan(s.payable_fen))))
        : el("tr", {}, el("td", { colspan: 3, class: "muted" }, "本季度暂无已核验的安装")))));
}

async function renderSpotChecks(user, report) {
  const box = $("spot-checks");
  if (!CHECKERS.includes(user.role)) {
    box.replaceChildren(el("p", { class: "muted" }, "抽查结果仅住建局和社区可查看"));
    return;
  }
  const rows = await api("/spot-checks/findings");
  const names = new Map(report.communities.map((c) => [c.community_code, c.community_name]));
  const counts = { match: 0, discrepancy: 0, missing: 0, pending: 0 };
  for (const r of rows) counts[r.finding ?? "pending"] += 1;
  const adjusted = rows.reduce((t, r) => t + (r.government_fen - r.payable_government_fen), 0);
  const issues = rows.filter((r) => r.finding && r.finding !== "match");
  box.replaceChildren(
    el("div", { class: "stats" },
      ...[["抽查样本", rows.length, ""], ["相符", counts.match, "ok"], ["不符", counts.discrepancy, "warning"],
        ["缺失", counts.missing, "critical"], ["待查", counts.pending, "info"]]
        .map(([label, value, cls]) => el("div", { class: `stat ${cls}` }, el("div", { class: "num" }, n(value)), el("div", { class: "label" }, label)))),
    el("p", {}, `抽查调减政府补贴 ${yuan(adjusted)} 元`),
    issues.length ? el("table", { id: "findings" },
      el("thead", {}, el("tr", {}, ["确认单", "社区", "月份", "结果", "补贴（元）", "调整后（元）", "说明"].map((h) => el("th", {}, h)))),
      el("tbody", {}, issues.map((r) => el("tr", {},
        el("td", {}, `#${r.slip_id}`), el("td", {}, names.get(r.community_code) ?? r.community_code), el("td", {}, r.month.slice(0, 7)),
        el("td", {}, el("span", { class: `badge ${FINDINGS[r.finding][1]}` }, FINDINGS[r.finding][0])),
        el("td", { class: "num" }, yuan(r.government_fen)), el("td", { class: "num" }, yuan(r.payable_government_fen)),
        el("td", {}, r.note ?? ""))))) : el("p", { class: "muted" }, "暂无不符或缺失的抽查结果"));
}

function renderOverdue(report) {
  $("overdue").replaceChildren(report.overdue.length
    ? el("table", { id: "overdue-list" },
      el("thead", {}, el("tr", {}, ["责任单位", "事项", "数量", "说明"].map((h, i) => el("th", { class: i === 2 ? "num" : null }, h)))),
      el("tbody", {}, report.overdue.map((o) => el("tr", {},
        el("td", {}, o.unit), el("td", {}, el("span", { class: "badge st-warn" }, OVERDUE[o.kind] ?? o.kind)),
        el("td", { class: "num" }, n(o.count)), el("td", {}, o.detail)))))
    : el("p", { class: "muted" }, "暂无逾期事项"));
}

function showError(err) {
  const box = $("error");
  box.textContent = errorText(err);
  box.classList.remove("hidden");
  markReady();
}

async function show() {
  const user = await mountNav("progress");
  const [report, months] = await Promise.all([api("/progress"), api("/county/installations")]);
  $("as-of").textContent = `统计时间 ${fmtTime(report.counted_at)}（最多${report.max_age_s}秒前）`;
  renderStats(report);
  renderCharts(report, months);
  renderPlaces(report);
  renderOverdue(report);
  await Promise.all([renderSettlement(user, report, months), renderSpotChecks(user, report)]);
  markReady();
}

show().catch(showError);
