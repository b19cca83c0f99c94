// Talking to the service, and the page-wide messages: the status line, the error banner, the API-key form.
// Relative URLs throughout, so the page also works behind a proxy that serves the service under a path prefix.

const KEY_STORE = "titok-api-key";
export const $ = (selector, root = document) => root.querySelector(selector);

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// fetch with the API key (when one was given), every failure turned into a sentence a person can read
export async function api(path, init = {}) {
  const headers = { ...(init.headers || {}) };
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers.Authorization = `Bearer ${key}`;
  let res;
  try {
    res = await fetch(path, { ...init, headers });
  } catch (e) {
    throw new ApiError(0, "network", `could not reach the service (${e.message})`);
  }
  if (res.ok) return res;
  let code = `http_${res.status}`;
  let message = res.statusText || "the request failed";
  try {
    const body = await res.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // not JSON (a proxy's error page, say): the status line is all there is
  }
  if (res.status === 401) {
    showAuth();
    message += "; enter the service's API key above";
  }
  const retry = res.headers.get("Retry-After");
  if (retry) message += `; retry in ${retry} s`;
  throw new ApiError(res.status, code, `${message} (HTTP ${res.status}, ${code})`);
}

export function setStatus(text) {
  $("#status").textContent = text;
}

export function showError(text) {
  const el = $("#error");
  el.textContent = text;
  el.hidden = !text;
}

function showAuth() {
  const form = $("#auth");
  if (!form.hidden) return;
  form.hidden = false;
  $("#api-key").focus();
}

// The key lives in this tab's session storage only: gone when the tab closes, never sent elsewhere.
export function useKey(key) {
  sessionStorage.setItem(KEY_STORE, key);
  $("#auth").hidden = true;
  showError("");
}
