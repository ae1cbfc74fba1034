// How figures are written on the pages: money arrives in integer fen and is
// shown as yuan with two decimals, computed on integers so no float rounding
// ever shows a wrong cent; times are shown in Beijing time (UTC+8), the
// campaigns' own clock, whatever the operator's machine is set to.

import { t } from "./i18n.js";

const TIME_ZONE = "Asia/Shanghai";

const grouped = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

export function formatCount(value) {
  return value === null || value === undefined ? t("dash") : grouped.format(value);
}

/** 123456 fen → "¥1,234.56". */
export function formatYuan(fen) {
  if (fen === null || fen === undefined) {
    return t("dash");
  }
  const sign = fen < 0 ? "-" : "";
  const whole = Math.abs(fen);
  const yuan = Math.floor(whole / 100);
  const cents = String(whole % 100).padStart(2, "0");
  return `${sign}¥${grouped.format(yuan)}.${cents}`;
}

/** 14.23 → "14.2 秒"; 192 → "3 分 12 秒"; null → "尚未". */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) {
    return t("not_yet");
  }
  if (seconds < 60) {
    return `${seconds.toFixed(1)} ${t("seconds")}`;
  }
  const whole = Math.round(seconds);
  const h = Math.floor(whole / 3600);
  const m = Math.floor((whole % 3600) / 60);
  const s = whole % 60;
  const parts = [];
  if (h) parts.push(`${h} ${t("hours")}`);
  if (h || m) parts.push(`${m} ${t("minutes")}`);
  parts.push(`${s} ${t("seconds")}`);
  return parts.join(" ");
}

const clock = new Intl.DateTimeFormat("en-GB", {
  timeZone: TIME_ZONE,
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hour12: false,
});

const dated = new Intl.DateTimeFormat("en-CA", {
  timeZone: TIME_ZONE,
  year: "numeric",
  month: "2-digit",
  day: "2-digit",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hour12: false,
});

/** An ISO 8601 instant → "10:00:14" (Beijing time); null → "尚未". */
export function formatClock(iso) {
  if (!iso) {
    return t("not_yet");
  }
  return clock.format(new Date(iso));
}

/** Unix milliseconds → "10:00:14" (Beijing time). */
export function formatClockMs(ms) {
  return clock.format(new Date(ms));
}

/** An ISO 8601 instant → "2024-05-01 10:00:00" (Beijing time). */
export function formatDateTime(iso) {
  if (!iso) {
    return t("not_yet");
  }
  return dated.format(new Date(iso)).replace(",", "");
}

export function formatPercent(ratio) {
  return `${(ratio * 100).toFixed(1)}%`;
}

/** Purchases driven per yuan of subsidy: 3.567 → "1 : 3.57". */
export function formatLeverage(ratio) {
  return ratio === null || ratio === undefined ? t("dash") : `1 : ${ratio.toFixed(2)}`;
}
