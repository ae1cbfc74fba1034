// Every label of the screen, the login page and the public page, in both
// languages. Chinese is the default; the choice is kept in localStorage so an
// operator's screen comes back in the language they left it in.

const STORAGE_KEY = "lequan.lang";

export const LABELS = {
  zh: {
    brand: "乐券",
    screen_title: "实时交易监测大屏",
    lang_switch: "English",
    conn_connecting: "连接中…",
    conn_live: "实时",
    conn_reconnecting: "已断开，重连中…",
    conn_stale: "数据延迟",
    scope_city: "全市",
    scope_national: "全国",
    role_viewer: "观察员",
    role_maker: "经办",
    role_checker: "复核",
    logout: "退出",
    updated_at: "更新于",
    not_yet: "尚未",
    dash: "—",
    colon: "：",
    seconds: "秒",
    minutes: "分",
    hours: "时",
    kpi_sold_out_after: "售罄用时",
    kpi_first_redemption_after: "首笔核销",
    kpi_issued: "累计发放",
    kpi_redemptions: "累计核销",
    kpi_subsidy: "补贴支付",
    kpi_leverage: "撬动比",
    kpi_claims: "领取请求（15分钟）",
    kpi_claims_rate: "当前领取/秒",
    kpi_after_release: "自开抢起",
    leverage_sub: "带动消费 {order} ÷ 补贴 {subsidy}",
    unit_vouchers: "张",
    unit_times: "笔",
    panel_series: "每秒领取、发放与核销（近15分钟，1秒粒度）",
    s_claims: "领取",
    s_issued: "发放",
    s_redemptions: "核销",
    mark_sold_out: "售罄",
    mark_first_redemption: "首笔核销",
    panel_pools: "券池库存",
    pool_left: "剩余",
    pool_issued: "已发",
    pool_of: "共",
    pool_sold_out_at: "售罄于",
    pool_not_loaded: "未加载",
    pool_selling: "发放中",
    channel_shared: "全渠道共享",
    round: "轮次",
    panel_map_city: "各区核销与补贴",
    panel_map_national: "各省核销与补贴",
    map_credit: "示意方块图：按大致地理位置手工排布，非地图",
    map_metric: "颜色：核销笔数；标注：补贴",
    panel_outcomes: "领取结果（15分钟）",
    outcome_issued: "发放成功",
    outcome_sold_out: "已抢光",
    outcome_ineligible: "不符合条件",
    outcome_throttled: "限流",
    outcome_errors: "错误",
    outcome_other: "其他",
    panel_channels: "各渠道",
    panel_categories: "商户类别",
    panel_merchants: "核销前十商户",
    col_rank: "排名",
    col_merchant: "商户",
    col_redemptions: "核销",
    col_subsidy: "补贴",
    col_order: "带动消费",
    col_action: "操作",
    btn_suspend: "停用",
    btn_reinstate: "恢复",
    merchant_suspended: "已停用",
    panel_apps: "异常应用（近1分钟）",
    col_app: "应用",
    col_kind: "类型",
    kind_channel: "渠道",
    kind_acquirer: "收单机构",
    col_error_ratio: "错误率",
    col_errors: "错误/请求",
    col_top_code: "主要错误码",
    apps_none: "暂无异常",
    panel_alerts: "实时告警",
    alerts_none: "暂无告警",
    sev_page: "紧急",
    sev_warn: "警告",
    since: "起于",
    panel_controls: "活动控制",
    claims: "领取",
    redemptions: "核销",
    state_running: "进行中",
    state_paused: "已暂停",
    btn_pause_claims: "暂停领取",
    btn_resume_claims: "恢复领取",
    btn_pause_redemptions: "暂停核销",
    btn_resume_redemptions: "恢复核销",
    status_draft: "草稿",
    status_approved: "已审批",
    status_live: "进行中",
    status_paused: "已暂停",
    status_ended: "已结束",
    viewer_readonly: "观察员只读：操作需经办或复核角色",
    confirm_title: "请确认",
    confirm_ok: "确认",
    confirm_cancel: "取消",
    confirm_pause_claims: "暂停活动「{name}」的领取？此后每个领取请求都将被拒绝。",
    confirm_resume_claims: "恢复活动「{name}」的领取？",
    confirm_pause_redemptions: "暂停活动「{name}」的核销？此后每笔核销都将被拒绝。",
    confirm_resume_redemptions: "恢复活动「{name}」的核销？",
    confirm_suspend: "停用商户「{name}」？其核销将被拒绝。",
    confirm_reinstate: "恢复商户「{name}」？",
    action_done: "已完成",
    action_failed: "操作失败",
    no_campaigns: "暂无活动",
    no_data: "暂无数据",
    credits: "字体：Noto Sans SC（SIL OFL 1.1）· 图表：Apache ECharts（Apache-2.0）· 区划方块图为手工示意",
    login_title: "运营人员登录",
    login_token: "操作员令牌",
    login_submit: "登录",
    login_signing: "正在登录…",
    login_bad: "令牌无效或已停用",
    login_failed: "登录失败",
    login_hint: "令牌只用于建立会话，页面不会保存它。",
    public_title: "消费券实时发放",
    public_release_at: "开抢时间",
    public_sold_out_at: "售罄时间",
    public_first_redemption: "首笔核销",
    public_after: "（用时 {duration}）",
    public_remaining: "剩余 {left} / {total} 张",
    public_round: "场次 {round} · 开抢 {at}",
    public_note: "数据每 3 秒自动刷新，不含任何个人信息。",
    public_none: "暂无活动",
    public_offline: "暂时无法更新，稍后自动重试",
    public_credits: "字体：Noto Sans SC（SIL OFL 1.1）",
  },
  en: {
    brand: "Lequan",
    screen_title: "Live Transaction Monitor",
    lang_switch: "中文",
    conn_connecting: "Connecting…",
    conn_live: "Live",
    conn_reconnecting: "Disconnected, reconnecting…",
    conn_stale: "Data delayed",
    scope_city: "City",
    scope_national: "National",
    role_viewer: "viewer",
    role_maker: "maker",
    role_checker: "checker",
    logout: "Log out",
    updated_at: "Updated",
    not_yet: "Not yet",
    dash: "—",
    colon: ": ",
    seconds: "s",
    minutes: "min",
    hours: "h",
    kpi_sold_out_after: "Time to sell-out",
    kpi_first_redemption_after: "First redemption",
    kpi_issued: "Vouchers issued",
    kpi_redemptions: "Redemptions",
    kpi_subsidy: "Subsidy paid",
    kpi_leverage: "Leverage",
    kpi_claims: "Claims (15 min)",
    kpi_claims_rate: "Claims/s now",
    kpi_after_release: "after release",
    leverage_sub: "Purchases {order} ÷ subsidy {subsidy}",
    unit_vouchers: "",
    unit_times: "",
    panel_series: "Claims, issued and redemptions per second (last 15 min, 1 s)",
    s_claims: "Claims",
    s_issued: "Issued",
    s_redemptions: "Redemptions",
    mark_sold_out: "Sold out",
    mark_first_redemption: "First redemption",
    panel_pools: "Stock by pool",
    pool_left: "left",
    pool_issued: "issued",
    pool_of: "of",
    pool_sold_out_at: "Sold out at",
    pool_not_loaded: "not loaded",
    pool_selling: "selling",
    channel_shared: "shared",
    round: "round",
    panel_map_city: "Redemptions and subsidy by district",
    panel_map_national: "Redemptions and subsidy by province",
    map_credit: "Schematic tiles laid out by hand in rough geographic positions, not a map",
    map_metric: "Colour: redemptions; label: subsidy",
    panel_outcomes: "Claim answers (15 min)",
    outcome_issued: "Issued",
    outcome_sold_out: "Sold out",
    outcome_ineligible: "Ineligible",
    outcome_throttled: "Throttled",
    outcome_errors: "Errors",
    outcome_other: "Other",
    panel_channels: "By channel",
    panel_categories: "By merchant category",
    panel_merchants: "Top 10 merchants",
    col_rank: "#",
    col_merchant: "Merchant",
    col_redemptions: "Redemptions",
    col_subsidy: "Subsidy",
    col_order: "Purchases",
    col_action: "Action",
    btn_suspend: "Suspend",
    btn_reinstate: "Reinstate",
    merchant_suspended: "suspended",
    panel_apps: "Apps erroring (last minute)",
    col_app: "App",
    col_kind: "Kind",
    kind_channel: "channel",
    kind_acquirer: "acquirer",
    col_error_ratio: "Error ratio",
    col_errors: "Errors/requests",
    col_top_code: "Top code",
    apps_none: "None erroring",
    panel_alerts: "Live alerts",
    alerts_none: "No alerts firing",
    sev_page: "page",
    sev_warn: "warn",
    since: "since",
    panel_controls: "Campaign controls",
    claims: "Claims",
    redemptions: "Redemptions",
    state_running: "running",
    state_paused: "paused",
    btn_pause_claims: "Pause claims",
    btn_resume_claims: "Resume claims",
    btn_pause_redemptions: "Pause redemptions",
    btn_resume_redemptions: "Resume redemptions",
    status_draft: "draft",
    status_approved: "approved",
    status_live: "live",
    status_paused: "paused",
    status_ended: "ended",
    viewer_readonly: "Viewers only read: actions need the maker or checker role",
    confirm_title: "Please confirm",
    confirm_ok: "Confirm",
    confirm_cancel: "Cancel",
    confirm_pause_claims: "Pause claims of “{name}”? Every claim will be refused.",
    confirm_resume_claims: "Resume claims of “{name}”?",
    confirm_pause_redemptions: "Pause redemptions of “{name}”? Every redemption will be refused.",
    confirm_resume_redemptions: "Resume redemptions of “{name}”?",
    confirm_suspend: "Suspend merchant “{name}”? Its redemptions will be refused.",
    confirm_reinstate: "Reinstate merchant “{name}”?",
    action_done: "Done",
    action_failed: "Failed",
    no_campaigns: "No campaigns",
    no_data: "No data yet",
    credits: "Font: Noto Sans SC (SIL OFL 1.1) · Charts: Apache ECharts (Apache-2.0) · district tiles drawn by hand",
    login_title: "Operator sign-in",
    login_token: "Operator token",
    login_submit: "Sign in",
    login_signing: "Signing in…",
    login_bad: "The token is invalid or revoked",
    login_failed: "Sign-in failed",
    login_hint: "The token only opens a session; the page does not keep it.",
    public_title: "Consumption vouchers, live",
    public_release_at: "Release",
    public_sold_out_at: "Sold out",
    public_first_redemption: "First redemption",
    public_after: " (after {duration})",
    public_remaining: "{left} of {total} left",
    public_round: "Round {round} · released {at}",
    public_note: "Refreshed every 3 seconds; no personal data.",
    public_none: "No campaigns yet",
    public_offline: "Cannot refresh now; retrying shortly",
    public_credits: "Font: Noto Sans SC (SIL OFL 1.1)",
  },
};

export function currentLang() {
  let stored = null;
  try {
    stored = window.localStorage.getItem(STORAGE_KEY);
  } catch {
    // Storage refused (private mode): the default language it is.
  }
  return stored === "en" ? "en" : "zh";
}

export function setLang(lang) {
  try {
    window.localStorage.setItem(STORAGE_KEY, lang);
  } catch {
    // Not remembered, but still switched for this page.
  }
  applyLang(lang);
}

/** A label in the current language, its {placeholders} filled from ``values``. */
export function t(key, values = {}) {
  const lang = document.documentElement.dataset.lang === "en" ? "en" : "zh";
  const text = LABELS[lang][key] ?? LABELS.zh[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(values[name] ?? ""));
}

/** A row's name in the current language (rows carry ``name`` and ``name_en``). */
export function localName(row) {
  if (document.documentElement.dataset.lang === "en" && row.name_en) {
    return row.name_en;
  }
  return row.name;
}

/** Relabel every element marked ``data-i18n`` (text) or ``data-i18n-title`` (tooltip). */
export function applyLang(lang) {
  const root = document.documentElement;
  root.dataset.lang = lang;
  root.lang = lang === "en" ? "en" : "zh-CN";
  for (const element of document.querySelectorAll("[data-i18n]")) {
    element.textContent = t(element.dataset.i18n);
  }
  for (const element of document.querySelectorAll("[data-i18n-placeholder]")) {
    element.placeholder = t(element.dataset.i18nPlaceholder);
  }
  for (const element of document.querySelectorAll("[data-i18n-title]")) {
    element.title = t(element.dataset.i18nTitle);
  }
}

/** Wire a button that flips the language; ``onChange`` redraws what JS wrote. */
export function bindLangSwitch(button, onChange = () => {}) {
  applyLang(currentLang());
  button.addEventListener("click", () => {
    setLang(currentLang() === "zh" ? "en" : "zh");
    onChange();
  });
}
