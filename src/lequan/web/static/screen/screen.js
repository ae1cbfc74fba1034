// The big screen: one ScreenOut snapshot a second (Server-Sent Events from
// /v1/screen/stream, http/screen_schemas.py), drawn with ECharts; operators
// with the maker or checker role act from here (pause claims, pause
// redemptions, suspend a merchant), each action confirmed first.

import { bindLangSwitch, localName, t } from "./i18n.js";
import {
  formatClock,
  formatClockMs,
  formatCount,
  formatDuration,
  formatLeverage,
  formatPercent,
  formatYuan,
} from "./format.js";
import { CITY_TILES, NATIONAL_TILES, tilesGeoJson } from "./tilemap.js";

const STREAM_URL = "/v1/screen/stream";
const SNAPSHOT_URL = "/v1/screen/snapshot";
const WHOAMI_URL = "/v1/screen/whoami";
const SESSION_URL = "/v1/screen/session";
const LOGIN_PAGE = "/screen/login";
// A snapshot comes every second; this long without one and the badge says so.
const STALE_AFTER_MS = 5000;
// EventSource retries by itself after a dropped stream, but gives up for good
// on an HTTP error (401, 429): then we try again ourselves, this much later.
const REOPEN_DELAY_MS = [1000, 2000, 5000, 10000];
const SOLD_OUT_MARKS_MAX = 6;
const OUTCOMES = ["issued", "sold_out", "ineligible", "throttled", "errors", "other"];
const OUTCOME_COLOURS = {
  issued: "#3ddc97",
  sold_out: "#37c6ff",
  ineligible: "#a48bff",
  throttled: "#ffb547",
  errors: "#ff5d6c",
  other: "#6b7c99",
};
const SERIES_COLOURS = { claims: "#37c6ff", issued: "#3ddc97", redemptions: "#ffb547" };
const AXIS = {
  axisLine: { lineStyle: { color: "#2a3f63" } },
  axisLabel: { color: "#7f93b3" },
  splitLine: { lineStyle: { color: "#16243d" } },
};

const state = {
  snapshot: null,
  operator: null,
  lastSnapshotMs: 0,
  connection: "connecting",
  reopenAttempts: 0,
  // Merchants suspended from this page: the snapshot does not say which are.
  suspended: new Set(),
  charts: {},
};

const $ = (selector) => document.querySelector(selector);

function esc(text) {
  return String(text ?? "").replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c],
  );
}

/** Replace a container's content only when it changed, so a button is not
 * swapped from under the operator's pointer every second. */
function setHtml(element, html) {
  if (element.dataset.rendered !== html) {
    element.innerHTML = html;
    element.dataset.rendered = html;
  }
}

function fontFamily() {
  return getComputedStyle(document.body).fontFamily;
}

// -- connection ------------------------------------------------------------

function setConnection(name) {
  state.connection = name;
  const badge = $("#connection");
  badge.dataset.state = name;
  badge.dataset.i18n = `conn_${name}`;
  badge.textContent = t(`conn_${name}`);
}

const SIGNED_OUT = Symbol("signed out");

/** The operator (``{operator_id, role}``), null when the server cannot say now,
 * or SIGNED_OUT once the page is on its way to the login page. */
async function checkSession() {
  const response = await fetch(WHOAMI_URL, { credentials: "same-origin" });
  if (response.status === 401 || response.status === 403) {
    window.location.replace(LOGIN_PAGE);
    return SIGNED_OUT;
  }
  if (!response.ok) {
    return null;
  }
  return response.json();
}

function openStream() {
  const source = new EventSource(STREAM_URL);
  source.addEventListener("snapshot", (event) => {
    state.reopenAttempts = 0;
    receive(JSON.parse(event.data));
  });
  source.addEventListener("open", () => {
    state.reopenAttempts = 0;
  });
  source.addEventListener("error", async () => {
    setConnection("reconnecting");
    if (source.readyState !== EventSource.CLOSED) {
      return; // the browser reconnects on its own
    }
    source.close();
    const delay = REOPEN_DELAY_MS[Math.min(state.reopenAttempts, REOPEN_DELAY_MS.length - 1)];
    state.reopenAttempts += 1;
    window.setTimeout(async () => {
      const who = await checkSession().catch(() => null);
      if (who !== SIGNED_OUT) {
        state.operator = who ?? state.operator;
        openStream();
      }
    }, delay);
  });
}

function receive(snapshot) {
  state.snapshot = snapshot;
  state.lastSnapshotMs = Date.now();
  setConnection("live");
  render();
}

function watchStaleness() {
  window.setInterval(() => {
    if (state.connection === "live" && Date.now() - state.lastSnapshotMs > STALE_AFTER_MS) {
      setConnection("stale");
    }
  }, 1000);
}

// -- actions ---------------------------------------------------------------

function canAct() {
  return state.operator !== null && ["maker", "checker"].includes(state.operator.role);
}

function confirmAction(text) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

let toastTimer = 0;
function toast(text, kind = "info") {
  const element = $("#toast");
  element.textContent = text;
  element.dataset.kind = kind;
  element.hidden = false;
  window.clearTimeout(toastTimer);
  toastTimer = window.setTimeout(() => {
    element.hidden = true;
  }, 6000);
}

async function post(url) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "X-Lequan-CSRF": "1" },
  });
  if (response.ok) {
    return { ok: true };
  }
  let message = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    message = body.message || body.code || message;
  } catch {
    // Not JSON (a proxy's page): the status says enough.
  }
  if (response.status === 401) {
    window.location.replace(LOGIN_PAGE);
  }
  return { ok: false, message };
}

const CAMPAIGN_ACTIONS = {
  "pause-claims": ["pause", "confirm_pause_claims"],
  "resume-claims": ["resume", "confirm_resume_claims"],
  "pause-redemptions": ["redemptions/pause", "confirm_pause_redemptions"],
  "resume-redemptions": ["redemptions/resume", "confirm_resume_redemptions"],
};
const MERCHANT_ACTIONS = {
  suspend: ["suspend", "confirm_suspend"],
  reinstate: ["reinstate", "confirm_reinstate"],
};

async function onAction(event) {
  const button = event.target.closest("button[data-action]");
  if (!button || button.disabled || !canAct()) {
    return;
  }
  const { action, id, name } = button.dataset;
  let url;
  let question;
  if (action in CAMPAIGN_ACTIONS) {
    const [path, key] = CAMPAIGN_ACTIONS[action];
    url = `/v1/admin/campaigns/${encodeURIComponent(id)}/${path}`;
    question = t(key, { name });
  } else if (action in MERCHANT_ACTIONS) {
    const [path, key] = MERCHANT_ACTIONS[action];
    url = `/v1/admin/merchants/${encodeURIComponent(id)}/${path}`;
    question = t(key, { name });
  } else {
    return;
  }
  if (!(await confirmAction(question))) {
    return;
  }
  button.disabled = true;
  const result = await post(url).catch((error) => ({ ok: false, message: String(error) }));
  button.disabled = false;
  if (!result.ok) {
    toast(`${t("action_failed")}: ${result.message}`, "error");
    return;
  }
  if (action === "suspend") state.suspended.add(id);
  if (action === "reinstate") state.suspended.delete(id);
  toast(`${t("action_done")}: ${button.textContent}`);
  render();
}

// -- drawing ---------------------------------------------------------------

function focusCampaign(campaigns) {
  const running = campaigns.filter((c) => c.status === "live" || c.status === "paused");
  const pick = (running.length ? running : campaigns).slice();
  pick.sort((a, b) => String(a.release_at ?? "").localeCompare(String(b.release_at ?? "")));
  return pick[0] ?? null;
}

function channelNames(snapshot) {
  const names = new Map();
  for (const row of snapshot.channels) names.set(row.key, localName(row));
  return names;
}

function poolChannel(channelId, names) {
  return channelId === "*" ? t("channel_shared") : names.get(channelId) ?? channelId;
}

const KPI_FONT_PX = [34, 30, 26, 22, 18];

/** The largest of KPI_FONT_PX at which the figure fits its card. */
function fitText(element) {
  for (const size of KPI_FONT_PX) {
    element.style.fontSize = `${size}px`;
    if (element.scrollWidth <= element.clientWidth) {
      return;
    }
  }
}

function setKpi(name, value, sub = "", raw = "") {
  const card = document.querySelector(`.kpi[data-kpi="${name}"]`);
  const figure = card.querySelector(".value");
  if (figure.textContent !== value) {
    figure.textContent = value;
    fitText(figure);
  }
  card.querySelector(".sub").textContent = sub;
  card.dataset.value = String(raw);
}

function renderKpis(snapshot) {
  const focus = focusCampaign(snapshot.campaigns);
  const issued = snapshot.campaigns
    .flatMap((c) => c.pools)
    .reduce((sum, pool) => sum + pool.issued, 0);
  const redemptions = snapshot.channels.reduce((sum, row) => sum + row.redemptions, 0);
  const claims = Object.values(snapshot.outcomes).reduce((sum, n) => sum + n, 0);
  const series = snapshot.series.claims;
  const rate = series.length ? series[series.length - 1] : 0;
  const focusName = focus ? focus.name : t("no_campaigns");
  setKpi(
    "sold_out_after",
    formatDuration(focus?.sold_out_after_s ?? null),
    focus?.sold_out_at ? `${formatClock(focus.sold_out_at)} · ${focusName}` : focusName,
    focus?.sold_out_after_s ?? "",
  );
  setKpi(
    "first_redemption_after",
    formatDuration(focus?.first_redemption_after_s ?? null),
    focus?.first_redemption_at ? `${formatClock(focus.first_redemption_at)} · ${focusName}` : focusName,
    focus?.first_redemption_after_s ?? "",
  );
  setKpi("issued", formatCount(issued), t("unit_vouchers"), issued);
  setKpi("redemptions", formatCount(redemptions), t("unit_times"), redemptions);
  setKpi("subsidy", formatYuan(snapshot.leverage.subsidy_fen), "", snapshot.leverage.subsidy_fen);
  setKpi(
    "leverage",
    formatLeverage(snapshot.leverage.ratio),
    t("leverage_sub", {
      order: formatYuan(snapshot.leverage.order_fen),
      subsidy: formatYuan(snapshot.leverage.subsidy_fen),
    }),
    snapshot.leverage.ratio ?? "",
  );
  setKpi("claims", formatCount(claims), "", claims);
  setKpi("claims_rate", formatCount(rate), "", rate);
}

function chart(name) {
  if (!state.charts[name]) {
    state.charts[name] = window.echarts.init(document.getElementById(`chart-${name}`), null, {
      renderer: "canvas",
    });
  }
  return state.charts[name];
}

function soldOutMarks(snapshot) {
  const seconds = new Map();
  for (const campaign of snapshot.campaigns) {
    for (const pool of campaign.pools) {
      if (pool.sold_out_at) {
        const ms = Math.floor(Date.parse(pool.sold_out_at) / 1000) * 1000;
        seconds.set(ms, pool.sold_out_at);
      }
    }
    if (campaign.sold_out_at) {
      const ms = Math.floor(Date.parse(campaign.sold_out_at) / 1000) * 1000;
      seconds.set(ms, campaign.sold_out_at);
    }
  }
  return [...seconds.keys()].sort((a, b) => a - b).slice(-SOLD_OUT_MARKS_MAX);
}

function renderSeries(snapshot) {
  const { start_s: start, claims, issued, redemptions } = snapshot.series;
  const points = (values) => values.map((v, i) => [(start + i) * 1000, v]);
  const firstMs = start * 1000;
  const lastMs = (start + Math.max(claims.length - 1, 0)) * 1000;
  const inWindow = (ms) => ms >= firstMs && ms <= lastMs + 1000;
  const soldOut = soldOutMarks(snapshot).filter(inWindow);
  const firstRedemptions = snapshot.campaigns
    .filter((c) => c.first_redemption_at)
    .map((c) => Date.parse(c.first_redemption_at))
    .filter(inWindow);
  // Pools sell out seconds apart: one line each, one label for the last of them.
  const marks = [
    ...soldOut.map((ms, i) => ({
      xAxis: ms,
      lineStyle: { color: "#ff5d6c" },
      label: {
        show: i === soldOut.length - 1,
        position: "end",
        formatter: `${t("mark_sold_out")} ${formatClockMs(ms)}`,
        color: "#ff5d6c",
      },
    })),
    ...firstRedemptions.map((ms) => ({
      xAxis: ms,
      lineStyle: { color: "#ffb547" },
      // A row above the sell-out's label: the two are often seconds apart.
      label: {
        position: "end",
        distance: 20,
        formatter: `${t("mark_first_redemption")} ${formatClockMs(ms)}`,
        color: "#ffb547",
      },
    })),
  ];
  document.getElementById("chart-series").dataset.soldOutMarks = String(soldOut.length);
  const area = (colour) => ({
    color: {
      type: "linear",
      x: 0,
      y: 0,
      x2: 0,
      y2: 1,
      colorStops: [
        { offset: 0, color: `${colour}66` },
        { offset: 1, color: `${colour}05` },
      ],
    },
  });
  const line = (key, values, extra = {}) => ({
    name: t(`s_${key}`),
    type: "line",
    showSymbol: false,
    sampling: "lttb",
    lineStyle: { width: 1.5, color: SERIES_COLOURS[key] },
    itemStyle: { color: SERIES_COLOURS[key] },
    areaStyle: area(SERIES_COLOURS[key]),
    data: points(values),
    animation: false,
    ...extra,
  });
  chart("series").setOption(
    {
      textStyle: { fontFamily: fontFamily() },
      grid: { left: 50, right: 70, top: 46, bottom: 50 },
      legend: { bottom: 0, textStyle: { color: "#dce6f5" } },
      tooltip: {
        trigger: "axis",
        formatter: (items) =>
          [formatClockMs(items[0].value[0]), ...items.map((i) => `${esc(i.seriesName)}: ${formatCount(i.value[1])}`)].join("<br>"),
      },
      xAxis: {
        type: "time",
        min: firstMs,
        max: lastMs,
        ...AXIS,
        // Beijing time whatever the machine's zone; ticks fall on whole minutes in both.
        axisLabel: { color: "#7f93b3", formatter: (ms) => formatClockMs(ms).slice(0, 5) },
        splitLine: { show: false },
      },
      yAxis: { type: "value", minInterval: 1, ...AXIS },
      series: [
        line("claims", claims, {
          markLine: {
            symbol: "none",
            animation: false,
            label: { fontSize: 12 },
            data: marks,
          },
        }),
        line("issued", issued),
        line("redemptions", redemptions),
      ],
    },
    { replaceMerge: ["series"] },
  );
}

function renderPools(snapshot) {
  const names = channelNames(snapshot);
  if (!snapshot.campaigns.length) {
    setHtml($("#pools"), `<p class="empty">${esc(t("no_campaigns"))}</p>`);
    return;
  }
  const html = snapshot.campaigns
    .map((campaign) => {
      const rows = campaign.pools
        .map((pool) => {
          const issuedPct = pool.stock_initial ? (100 * pool.issued) / pool.stock_initial : 0;
          const left = pool.remaining === null ? t("pool_not_loaded") : formatCount(pool.remaining);
          const soldOut = pool.sold_out_at
            ? `<span class="soldout">${esc(t("pool_sold_out_at"))} ${esc(formatClock(pool.sold_out_at))}</span>`
            : "";
          return `<div class="pool${pool.sold_out_at ? " sold-out" : ""}" data-pool="${esc(pool.pool)}"
              data-template="${esc(pool.template_id)}" data-remaining="${pool.remaining ?? ""}"
              data-issued="${pool.issued}" data-sold-out-at="${esc(pool.sold_out_at ?? "")}">
            <div class="label">
              <span class="name">${esc(pool.template_name)} · ${esc(pool.round_id)} · ${esc(poolChannel(pool.channel_id, names))}</span>
              <span class="figures">${esc(t("pool_left"))} <b>${esc(left)}</b> / ${esc(formatCount(pool.stock_initial))}
                · ${esc(t("pool_issued"))} ${esc(formatCount(pool.issued))} ${soldOut}</span>
            </div>
            <div class="bar"><div class="issued" data-pct="${issuedPct.toFixed(2)}"></div></div>
          </div>`;
        })
        .join("");
      const title = snapshot.campaigns.length > 1 ? `<div class="pool-campaign">${esc(campaign.name)}</div>` : "";
      return title + rows;
    })
    .join("");
  setHtml($("#pools"), html);
  // Widths set through the CSSOM, not style attributes: a strict CSP allows it.
  for (const bar of document.querySelectorAll("#pools .bar .issued")) {
    bar.style.width = `${bar.dataset.pct}%`;
  }
}

function renderControls(snapshot) {
  const disabled = canAct() ? "" : "disabled";
  $("#readonly-note").hidden = canAct();
  if (!snapshot.campaigns.length) {
    setHtml($("#controls"), `<p class="empty">${esc(t("no_campaigns"))}</p>`);
    return;
  }
  const html = snapshot.campaigns
    .map((c) => {
      const actionable = c.status === "live" || c.status === "paused";
      const off = actionable ? disabled : "disabled";
      const switchFor = (kind, paused) => {
        const verb = paused ? "resume" : "pause";
        return `<div class="switch">
            <span>${esc(t(kind))}${esc(t("colon"))}<span class="state" data-paused="${paused}">${esc(t(paused ? "state_paused" : "state_running"))}</span></span>
            <button type="button" class="${paused ? "resume" : "danger"}" ${off}
              data-action="${verb}-${kind}" data-id="${esc(c.id)}" data-name="${esc(c.name)}"
              title="${canAct() ? "" : esc(t("viewer_readonly"))}">${esc(t(`btn_${verb}_${kind}`))}</button>
          </div>`;
      };
      return `<div class="campaign" data-campaign="${esc(c.id)}" data-status="${esc(c.status)}"
          data-claims-paused="${c.claims_paused}" data-redemptions-paused="${c.redemptions_paused}">
        <div class="name">${esc(c.name)}<span class="pill" data-status="${esc(c.status)}">${esc(t(`status_${c.status}`))}</span></div>
        <div></div>
        <div class="switches">${switchFor("claims", c.claims_paused)}${switchFor("redemptions", c.redemptions_paused)}</div>
      </div>`;
    })
    .join("");
  setHtml($("#controls"), html);
}

function renderMap(snapshot) {
  const national = snapshot.scope === "national";
  const tiles = national ? NATIONAL_TILES : CITY_TILES;
  const mapName = national ? "lequan-national" : "lequan-city";
  $("#map-title").dataset.i18n = national ? "panel_map_national" : "panel_map_city";
  $("#map-title").textContent = t($("#map-title").dataset.i18n);
  const byCode = new Map(snapshot.regions.map((row) => [row.key, row]));
  const max = Math.max(1, ...snapshot.regions.map((row) => row.redemptions));
  const english = document.documentElement.dataset.lang === "en";
  const label = (code) => {
    const tile = tiles[code];
    if (!tile) return code;
    return english ? tile[1] : tile[2];
  };
  chart("map").setOption({
    textStyle: { fontFamily: fontFamily() },
    tooltip: {
      formatter: (p) => {
        const row = byCode.get(p.name);
        const tile = tiles[p.name];
        const name = tile ? (english ? tile[1] : tile[0]) : p.name;
        return `${esc(name)}<br>${esc(t("col_redemptions"))}: ${esc(formatCount(row?.redemptions ?? 0))}<br>${esc(t("col_subsidy"))}: ${esc(formatYuan(row?.subsidy_fen ?? 0))}<br>${esc(t("col_order"))}: ${esc(formatYuan(row?.order_fen ?? 0))}`;
      },
    },
    visualMap: {
      min: 0,
      max,
      show: true,
      orient: "horizontal",
      left: 10,
      bottom: 0,
      itemWidth: 12,
      itemHeight: 140,
      calculable: false,
      text: [formatCount(max), "0"],
      textStyle: { color: "#7f93b3" },
      inRange: { color: ["#15294a", "#1f5c8f", "#37c6ff", "#ffe08a"] },
    },
    series: [
      {
        type: "map",
        map: mapName,
        aspectScale: 1,
        roam: false,
        top: 6,
        bottom: 40,
        selectedMode: false,
        itemStyle: { borderColor: "#0e1a2f", borderWidth: 3, areaColor: "#15294a" },
        emphasis: { label: { color: "#fff" }, itemStyle: { areaColor: "#2b7bbf" } },
        label: {
          show: true,
          color: "#eaf2ff",
          fontSize: national ? 11 : 14,
          lineHeight: national ? 13 : 18,
          formatter: (p) => {
            const row = byCode.get(p.name);
            const count = formatCount(row?.redemptions ?? 0);
            return `${label(p.name)}\n${count}\n${formatYuan(row?.subsidy_fen ?? 0)}`;
          },
        },
        data: Object.keys(tiles).map((code) => {
          const value = byCode.get(code)?.redemptions ?? 0;
          // The brightest tiles are pale: dark text reads on them.
          return { name: code, value, label: { color: value / max > 0.6 ? "#0b1220" : "#eaf2ff" } };
        }),
        animation: false,
      },
    ],
  });
}

function renderOutcomes(snapshot) {
  const data = OUTCOMES.map((key) => ({
    name: t(`outcome_${key}`),
    value: snapshot.outcomes[key] ?? 0,
    itemStyle: { color: OUTCOME_COLOURS[key] },
  }));
  chart("outcomes").setOption({
    textStyle: { fontFamily: fontFamily() },
    tooltip: { trigger: "item", formatter: "{b}: {c} ({d}%)" },
    legend: {
      orient: "vertical",
      left: 0,
      bottom: 0,
      itemWidth: 10,
      itemHeight: 10,
      textStyle: { color: "#dce6f5", fontSize: 12 },
      formatter: (name) => {
        const row = data.find((d) => d.name === name);
        return `${name} ${formatCount(row?.value ?? 0)}`;
      },
    },
    series: [
      {
        type: "pie",
        radius: ["38%", "66%"],
        center: ["62%", "42%"],
        label: { show: false },
        data,
        animation: false,
      },
    ],
  });
}

/** ECharts' title, used as a "no data yet" note over an empty chart. */
function emptyNote(rows) {
  return {
    show: rows.length === 0,
    text: t("no_data"),
    left: "center",
    top: "middle",
    textStyle: { color: "#7f93b3", fontSize: 14, fontWeight: 400 },
  };
}

function renderChannels(snapshot) {
  const rows = snapshot.channels;
  const bar = (key, field) => ({
    name: t(`s_${key}`),
    type: "bar",
    itemStyle: { color: SERIES_COLOURS[key] },
    data: rows.map((row) => row[field]),
    animation: false,
  });
  chart("channels").setOption(
    {
      textStyle: { fontFamily: fontFamily() },
      title: emptyNote(rows),
      tooltip: { trigger: "axis" },
      legend: { top: 0, textStyle: { color: "#dce6f5", fontSize: 12 }, itemWidth: 10, itemHeight: 10 },
      grid: { left: 46, right: 8, top: 30, bottom: 24 },
      xAxis: { type: "category", data: rows.map(localName), ...AXIS },
      yAxis: { type: "value", minInterval: 1, ...AXIS },
      series: [bar("claims", "claims"), bar("issued", "issued"), bar("redemptions", "redemptions")],
    },
    { replaceMerge: ["series"] },
  );
}

function renderCategories(snapshot) {
  const rows = [...snapshot.categories].sort((a, b) => a.redemptions - b.redemptions);
  chart("categories").setOption(
    {
      textStyle: { fontFamily: fontFamily() },
      title: emptyNote(rows),
      tooltip: {
        trigger: "axis",
        axisPointer: { type: "shadow" },
        formatter: (items) => {
          const row = rows[items[0].dataIndex];
          return `${esc(localName(row))}<br>${esc(t("col_redemptions"))}: ${esc(formatCount(row.redemptions))}<br>${esc(t("col_subsidy"))}: ${esc(formatYuan(row.subsidy_fen))}`;
        },
      },
      grid: { left: 110, right: 150, top: 4, bottom: 20 },
      xAxis: { type: "value", minInterval: 1, ...AXIS },
      yAxis: { type: "category", data: rows.map(localName), ...AXIS },
      series: [
        {
          type: "bar",
          barMaxWidth: 18,
          itemStyle: { color: "#ffb547" },
          label: {
            show: true,
            position: "right",
            color: "#dce6f5",
            formatter: (p) => `${formatCount(rows[p.dataIndex].redemptions)} · ${formatYuan(rows[p.dataIndex].subsidy_fen)}`,
          },
          data: rows.map((row) => row.redemptions),
          animation: false,
        },
      ],
    },
    { replaceMerge: ["series"] },
  );
}

function renderMerchants(snapshot) {
  const disabled = canAct() ? "" : "disabled";
  const body = $("#merchants tbody");
  if (!snapshot.top_merchants.length) {
    setHtml(body, `<tr><td colspan="6" class="empty">${esc(t("no_data"))}</td></tr>`);
    return;
  }
  const html = snapshot.top_merchants
    .slice(0, 10)
    .map((row, i) => {
      const suspended = state.suspended.has(row.key) || row.suspended === true;
      const verb = suspended ? "reinstate" : "suspend";
      return `<tr data-merchant="${esc(row.key)}" class="${suspended ? "suspended" : ""}">
        <td>${i + 1}</td>
        <td title="${esc(localName(row))}">${esc(localName(row))}</td>
        <td class="num">${esc(formatCount(row.redemptions))}</td>
        <td class="num">${esc(formatYuan(row.subsidy_fen))}</td>
        <td class="num">${esc(formatYuan(row.order_fen))}</td>
        <td><button type="button" class="${suspended ? "resume" : "danger"}" ${disabled}
          data-action="${verb}" data-id="${esc(row.key)}" data-name="${esc(row.name)}">${esc(t(`btn_${verb}`))}</button></td>
      </tr>`;
    })
    .join("");
  setHtml(body, html);
}

function renderApps(snapshot) {
  const names = channelNames(snapshot);
  if (!snapshot.apps_erroring.length) {
    setHtml($("#apps"), `<p class="empty">${esc(t("apps_none"))}</p>`);
    return;
  }
  const html = snapshot.apps_erroring
    .map(
      (app) => `<div class="row" data-app="${esc(app.app_id)}">
        <span><b>${esc(names.get(app.app_id) ?? app.app_id)}</b> · ${esc(t(`kind_${app.kind}`))}</span>
        <span class="ratio">${esc(formatPercent(app.error_ratio))}</span>
        <span class="detail">${esc(t("col_errors"))} ${esc(formatCount(app.errors))}/${esc(formatCount(app.requests))}
          · ${esc(t("col_top_code"))} <code>${esc(app.top_code ?? t("dash"))}</code></span>
      </div>`,
    )
    .join("");
  setHtml($("#apps"), `<div class="apps">${html}</div>`);
}

function renderAlerts(snapshot) {
  if (!snapshot.alerts.length) {
    setHtml($("#alerts"), `<li class="empty" data-severity="none">${esc(t("alerts_none"))}</li>`);
    return;
  }
  const english = document.documentElement.dataset.lang === "en";
  const html = [...snapshot.alerts]
    .sort((a, b) => (a.severity === b.severity ? 0 : a.severity === "page" ? -1 : 1))
    .map(
      (alert) => `<li data-severity="${esc(alert.severity)}" data-alert="${esc(alert.name)}">
        <span class="sev">${esc(t(`sev_${alert.severity}`))}</span>${esc(english ? alert.summary_en : alert.summary)}
        <span class="since">${esc(alert.name)} · ${esc(t("since"))} ${esc(formatClock(alert.since))}</span>
      </li>`,
    )
    .join("");
  setHtml($("#alerts"), html);
}

function renderHeader(snapshot) {
  $("#snapshot-at").textContent = formatClock(snapshot.at);
  $("#scope").textContent = t(snapshot.scope === "national" ? "scope_national" : "scope_city");
  const operator = $("#operator");
  if (state.operator) {
    operator.textContent = `${state.operator.operator_id} · ${t(`role_${state.operator.role}`)}`;
    operator.dataset.role = state.operator.role;
  }
}

function render() {
  const snapshot = state.snapshot;
  if (!snapshot || !window.echarts) {
    return;
  }
  renderHeader(snapshot);
  renderKpis(snapshot);
  renderSeries(snapshot);
  renderPools(snapshot);
  renderControls(snapshot);
  renderMap(snapshot);
  renderOutcomes(snapshot);
  renderChannels(snapshot);
  renderCategories(snapshot);
  renderMerchants(snapshot);
  renderApps(snapshot);
  renderAlerts(snapshot);
}

async function logout() {
  await fetch(SESSION_URL, {
    method: "DELETE",
    credentials: "same-origin",
    headers: { "X-Lequan-CSRF": "1" },
  }).catch(() => null);
  window.location.replace(LOGIN_PAGE);
}

async function start() {
  window.echarts.registerMap("lequan-city", tilesGeoJson(CITY_TILES));
  window.echarts.registerMap("lequan-national", tilesGeoJson(NATIONAL_TILES));
  bindLangSwitch($("#lang-switch"), () => {
    setConnection(state.connection);
    render();
  });
  $("#logout").addEventListener("click", logout);
  document.body.addEventListener("click", onAction);
  window.addEventListener("resize", () => Object.values(state.charts).forEach((c) => c.resize()));
  // Charts draw on canvas: once the web font is in, draw again with it.
  document.fonts.ready.then(render);
  watchStaleness();
  const who = await checkSession().catch(() => null);
  if (who === SIGNED_OUT) {
    return;
  }
  state.operator = who;
  const first = await fetch(SNAPSHOT_URL, { credentials: "same-origin" }).catch(() => null);
  if (first && first.ok) {
    receive(await first.json());
  }
  openStream();
}

start();
