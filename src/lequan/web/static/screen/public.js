// The public page: what a newspaper links to on release day. It polls the
// public figures (no login, no personal data) and draws each campaign's
// release, live stock per pool, sell-out and first redemption.

import { bindLangSwitch, t } from "./i18n.js";
import { formatClock, formatCount, formatDateTime, formatDuration } from "./format.js";

const LIVE_URL = "/v1/public/live";
const POLL_MS = 3000;
// Channel ids shown by their brand names; any other id is shown as it is.
const CHANNEL_NAMES = {
  zh: { wechat: "微信", alipay: "支付宝", unionpay: "云闪付", "*": "全渠道共享" },
  en: { wechat: "WeChat", alipay: "Alipay", unionpay: "UnionPay", "*": "all channels" },
};

let latest = null;

function esc(text) {
  return String(text ?? "").replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c],
  );
}

function channelName(id) {
  const lang = document.documentElement.dataset.lang === "en" ? "en" : "zh";
  return CHANNEL_NAMES[lang][id] ?? id;
}

function moment(at, afterSeconds) {
  if (!at) {
    return esc(t("not_yet"));
  }
  const after = afterSeconds === null || afterSeconds === undefined
    ? ""
    : esc(t("public_after", { duration: formatDuration(afterSeconds) }));
  return `${esc(formatClock(at))}${after}`;
}

function render() {
  const main = document.getElementById("campaigns");
  if (!latest) {
    return;
  }
  document.getElementById("updated").textContent = formatClock(latest.at);
  if (!latest.campaigns.length) {
    main.innerHTML = `<p class="empty">${esc(t("public_none"))}</p>`;
    return;
  }
  main.innerHTML = latest.campaigns
    .map((c) => {
      const releases = new Map((c.rounds ?? []).map((r) => [r.round_id, r.release_at]));
      let shownRound = null;
      const pools = c.pools
        .map((pool) => {
          let heading = "";
          if (pool.round_id !== shownRound) {
            shownRound = pool.round_id;
            const at = releases.get(pool.round_id);
            heading = `<h3 class="round" data-round="${esc(pool.round_id)}">${esc(t("public_round", { round: pool.round_id, at: at ? formatDateTime(at) : "—" }))}</h3>`;
          }
          const left = pool.remaining ?? Math.max(pool.stock_initial - pool.issued, 0);
          const pct = pool.stock_initial ? (100 * left) / pool.stock_initial : 0;
          const soldOut = pool.sold_out_at
            ? ` <span class="soldout">${esc(t("public_sold_out_at"))} ${esc(formatClock(pool.sold_out_at))}</span>`
            : "";
          return `${heading}<div class="pool${pool.sold_out_at ? " sold-out" : ""}" data-pool="${esc(pool.pool)}" data-remaining="${left}">
            <div class="label">
              <span>${esc(pool.template_name)} · ${esc(channelName(pool.channel_id))}</span>
              <span class="left">${esc(t("public_remaining", { left: formatCount(left), total: formatCount(pool.stock_initial) }))}${soldOut}</span>
            </div>
            <div class="progress" role="progressbar" aria-valuemin="0" aria-valuemax="${pool.stock_initial}" aria-valuenow="${left}"><div data-pct="${pct.toFixed(2)}"></div></div>
          </div>`;
        })
        .join("");
      return `<article class="campaign" data-campaign="${esc(c.id)}">
        <h2>${esc(c.name)} <span class="status" data-status="${esc(c.status)}">${esc(t(`status_${c.status}`))}</span></h2>
        <dl>
          <dt>${esc(t("public_release_at"))}</dt><dd>${esc(formatDateTime(c.release_at))}</dd>
          <dt>${esc(t("public_sold_out_at"))}</dt><dd data-field="sold_out">${moment(c.sold_out_at, c.sold_out_after_s)}</dd>
          <dt>${esc(t("public_first_redemption"))}</dt><dd data-field="first_redemption">${moment(c.first_redemption_at, c.first_redemption_after_s)}</dd>
        </dl>
        ${pools}
      </article>`;
    })
    .join("");
  for (const bar of main.querySelectorAll(".progress > div")) {
    bar.style.width = `${bar.dataset.pct}%`;
  }
}

async function poll() {
  try {
    const response = await fetch(LIVE_URL, { credentials: "omit" });
    if (!response.ok) {
      throw new Error(`HTTP ${response.status}`);
    }
    latest = await response.json();
    document.getElementById("offline").hidden = true;
    render();
  } catch {
    document.getElementById("offline").hidden = false;
  } finally {
    window.setTimeout(poll, POLL_MS);
  }
}

bindLangSwitch(document.getElementById("lang-switch"), render);
poll();
