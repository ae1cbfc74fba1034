// Sign an operator in to the screen. The token comes in the URL's fragment
// (/screen/login#token=...), which a browser never sends to a server, so it
// stays out of every access log; it is wiped from the address bar and the
// history at once, traded for an HttpOnly session cookie, and forgotten.

import { bindLangSwitch, t } from "./i18n.js";

const SESSION_URL = "/v1/screen/session";
const SCREEN_PAGE = "/screen";
const TOKEN_LENGTH_MAX = 200;

const form = document.getElementById("login");
const input = document.getElementById("token");
const submit = document.getElementById("submit");
const message = document.getElementById("message");

function show(text, kind = "error") {
  message.textContent = text;
  message.dataset.kind = kind;
  message.hidden = false;
}

async function signIn(token) {
  submit.disabled = true;
  show(t("login_signing"), "info");
  try {
    const response = await fetch(SESSION_URL, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Lequan-CSRF": "1" },
      body: JSON.stringify({ token }),
    });
    if (response.status === 204 || response.ok) {
      window.location.replace(SCREEN_PAGE);
      return;
    }
    let detail = "";
    try {
      const body = await response.json();
      detail = body.message || body.code || "";
    } catch {
      // Not JSON: the status is all there is.
    }
    if (response.status === 401) {
      show(t("login_bad"));
    } else {
      show(`${t("login_failed")}: ${detail || `HTTP ${response.status}`}`);
    }
  } catch (error) {
    show(`${t("login_failed")}: ${error}`);
  } finally {
    submit.disabled = false;
  }
}

function tokenFromFragment() {
  const params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
  const token = params.get("token");
  if (window.location.hash) {
    window.history.replaceState(null, "", window.location.pathname);
  }
  return token && token.length <= TOKEN_LENGTH_MAX ? token : null;
}

bindLangSwitch(document.getElementById("lang-switch"));
form.addEventListener("submit", (event) => {
  event.preventDefault();
  const token = input.value.trim();
  input.value = "";
  if (token) {
    signIn(token);
  }
});
function signInFromFragment() {
  const token = tokenFromFragment();
  if (token) {
    signIn(token);
  } else {
    input.focus();
  }
}

// A link followed while the page is open changes only the fragment: no reload.
window.addEventListener("hashchange", signInFromFragment);
signInFromFragment();
