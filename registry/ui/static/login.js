// Login: POST /auth/login sets the session cookie; then go where the user wanted to go (same site only).
import { api, ApiError, markReady } from "/ui/static/common.js";

const form = document.getElementById("login-form");
const error = document.getElementById("login-error");
const submit = document.getElementById("login-submit");

function nextPath() {
  const next = new URLSearchParams(location.search).get("next") || "/ui/";
  // Only paths on this site: never "//evil.example" or "https://...".
  return next.startsWith("/") && !next.startsWith("//") ? next : "/ui/";
}

function showError(text) {
  error.textContent = text;
  error.classList.remove("hidden");
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const username = form.username.value.trim();
  const password = form.password.value;
  if (!username || !password) {
    showError("请输入用户名和密码");
    return;
  }
  submit.disabled = true;
  error.classList.add("hidden");
  try {
    await api("/auth/login", { method: "POST", body: { username, password } });
    location.assign(nextPath());
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) showError("用户名或密码错误");
    else if (err instanceof ApiError && err.status === 503) showError("服务暂时不可用，请稍后重试");
    else showError("登录失败，请稍后重试");
    form.password.value = "";
    form.password.focus();
  } finally {
    submit.disabled = false;
  }
});

markReady();
