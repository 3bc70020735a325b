// Shared helpers of every page: authenticated API calls, the header, time formatting in the county's
// zone (Asia/Shanghai, whatever the browser's zone is), HTML escaping and a small DOM builder.

export const ROLE_NAMES = Object.freeze({
  admin: "系统管理员",
  emergency_management: "应急管理",
  duty_operator: "燃气公司值班员",
  installer: "安装人员",
  community_staff: "社区工作人员",
  housing_bureau: "住建局",
});

const NAV_LINKS = [
  { href: "/ui/board", label: "报警看板", key: "board", roles: ["admin", "duty_operator", "emergency_management", "community_staff"] },
  { href: "/ui/county", label: "县域健康", key: "county", roles: ["admin", "duty_operator", "emergency_management", "community_staff", "housing_bureau"] },
  { href: "/ui/progress", label: "项目进度", key: "progress", roles: ["admin", "emergency_management", "housing_bureau", "installer", "community_staff"] },
];

/** An HTTP error from the API: `status` is the HTTP status, `detail` the server's explanation. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
  }
}

function loginUrl() {
  const next = location.pathname + location.search;
  return "/ui/login?next=" + encodeURIComponent(next);
}

/** Call the API with the session cookie; JSON in and out. 401 goes to the login page. */
export async function api(path, { method = "GET", body, query } = {}) {
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      if (value === undefined || value === null) continue;
      for (const item of Array.isArray(value) ? value : [value]) params.append(key, String(item));
    }
    const qs = params.toString();
    if (qs) url += (url.includes("?") ? "&" : "?") + qs;
  }
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  if (response.status === 401 && !path.startsWith("/auth/login")) {
    location.assign(loginUrl());
    throw new ApiError(401, "未登录或登录已过期");
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) {
    const detail = data && typeof data === "object" && "detail" in data ? data.detail : data || response.statusText;
    throw new ApiError(response.status, detail);
  }
  return data;
}

/** A short Chinese explanation of an API error, for showing to the user. */
export function errorText(err) {
  if (!(err instanceof ApiError)) return "网络错误，请稍后重试";
  const detail = typeof err.detail === "string" ? err.detail : "";
  switch (err.status) {
    case 403: return "无权限：" + (detail.includes("scope") ? "超出您的管辖范围" : "您的角色不能执行此操作");
    case 404: return "未找到该记录";
    case 409:
      if (detail.includes("on-site")) return "办结被拒绝：阀门已关闭，必须先填写到场记录";
      return "当前状态不允许此操作（" + detail + "）";
    case 422: return "填写有误，请检查必填项（" + (Array.isArray(err.detail) ? err.detail.map((d) => d.loc?.slice(-1)[0] + "：" + d.msg).join("；") : detail) + "）";
    case 503: return "数据库暂时不可用，请稍后重试";
    default: return "操作失败（" + err.status + "）" + (detail ? "：" + detail : "");
  }
}

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** HTML-escape a value for use in markup. */
export function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

/** Build an element: el("a", {href: "/x", class: "btn", onclick: fn}, "text", child). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const ZONE = "Asia/Shanghai";
const TIME_FORMAT = new Intl.DateTimeFormat("en-CA", {
  timeZone: ZONE, year: "numeric", month: "2-digit", day: "2-digit",
  hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
});

function parts(iso) {
  const date = iso instanceof Date ? iso : new Date(iso);
  if (Number.isNaN(date.getTime())) return null;
  return Object.fromEntries(TIME_FORMAT.formatToParts(date).map((p) => [p.type, p.value]));
}

/** YYYY-MM-DD HH:mm:ss in Asia/Shanghai. */
export function fmtTime(iso) {
  if (!iso) return "—";
  const p = parts(iso);
  return p ? `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}` : "—";
}

/** YYYY-MM-DD in Asia/Shanghai (a plain date such as "2026-11-29" is shown as it is). */
export function fmtDate(iso) {
  if (!iso) return "—";
  if (/^\d{4}-\d{2}-\d{2}$/.test(iso)) return iso;
  const p = parts(iso);
  return p ? `${p.year}-${p.month}-${p.day}` : "—";
}

/** How long ago, in Chinese: "3分12秒前", "2小时5分前", "3天前". */
export function fmtAgo(iso, now = Date.now()) {
  if (!iso) return "—";
  const seconds = Math.max(0, Math.floor((now - new Date(iso).getTime()) / 1000));
  if (seconds < 60) return `${seconds}秒前`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}分${seconds % 60}秒前`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return `${hours}小时${minutes % 60}分前`;
  return `${Math.floor(hours / 24)}天前`;
}

let mePromise = null;

/** The logged-in user (/auth/me, fetched once per page). */
export function currentUser() {
  mePromise ??= api("/auth/me");
  return mePromise;
}

/** Render the header for the page `active` ("board", "county", ...); returns the /auth/me user. */
export async function mountNav(active) {
  const user = await currentUser();
  const nav = document.getElementById("nav");
  if (nav) {
    const links = NAV_LINKS.filter((link) => link.roles.includes(user.role)).map((link) =>
      el("a", { href: link.href, class: link.key === active ? "active" : null, "aria-current": link.key === active ? "page" : null }, link.label),
    );
    const logout = el("button", { type: "button", class: "btn btn-ghost", id: "logout", onclick: logoutNow }, "退出");
    nav.replaceChildren(
      el("a", { class: "brand", href: "/ui/" }, "燃气安全监管平台"),
      el("nav", { class: "links", "aria-label": "主导航" }, links),
      el("div", { class: "who" },
        el("span", { class: "who-name" }, user.display_name || user.username),
        el("span", { class: "who-role" }, ROLE_NAMES[user.role] || user.role),
        logout),
    );
  }
  return user;
}

async function logoutNow() {
  try {
    await api("/auth/logout", { method: "POST" });
  } finally {
    location.assign("/ui/login");
  }
}

/** Tell tests and benchmarks that the page's first data has rendered. */
export function markReady() {
  document.body.dataset.ready = "1";
}
