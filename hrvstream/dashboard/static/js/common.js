/* hrvstream therapist dashboard: shared code (API, live socket, formatting, header).
 *
 * Plain ES2020 modules, no build step, nothing fetched from other origins (the server's
 * Content-Security-Policy forbids it). Pages: index.html + overview.js, patient.html +
 * patient.js, admin.html + admin.js, login.html (no script).
 *
 * Stable test hooks (data-testid), for browser tests:
 *
 *   Sign-in page (/login)
 *     login-form, login-username, login-password, login-submit
 *     login-error            the refusal message ("Wrong username or password")
 *   Every signed-in page (header)
 *     home-link, nav-patients, admin-link (admins only), current-user, logout-button
 *     conn-status            text "live" / "connecting…" / "reconnecting…";
 *                            attribute data-state = live | connecting | reconnecting
 *     load-error             shown when the data could not be loaded
 *   Overview (/)
 *     alerts-strip, open-alerts, open-alert-count
 *     open-alert-<alert_id>  one open alert in the strip; inside: open-alert-link,
 *                            alert-severity, alert-patient, alert-rule, alert-state,
 *                            alert-time, alert-explanation
 *     tiles, no-patients
 *     tile-<patient>         one tile; attributes data-patient, data-online, data-alert
 *                            (highest open severity or absent); inside:
 *       patient-link, online (data-state online|offline|unknown), last-seen, battery,
 *       tile-alerts, hr, rmssd, lf_hf (the big numbers; "–" when missing),
 *       stress (chip; data-state = assessment state), stress-score, sparkline,
 *       quality, contact, coverage, artifacts
 *   Patient page (/patients/<patient>)
 *     back-link, patient-title, online, last-seen, battery, hr, rmssd, lf_hf, stress,
 *     stress-score, stress-message, quality, contact, coverage, artifacts, baseline,
 *     chart-rr, chart-rmssd, chart-lf_hf,
 *     range-15m, range-1h, range-6h, range-24h, range-7d (aria-pressed on the chosen one)
 *     alert-history (table), no-alerts
 *     alert-<alert_id>       one alert row; attributes data-open, data-state; inside:
 *       alert-time, alert-severity, alert-rule, alert-explanation, alert-details,
 *       alert-state, alert-ack-info (who acknowledged, when, the note),
 *       ack-form (only for open, unacknowledged alerts), ack-note, ack-button, ack-error
 *     settings-form          the alert settings of the patient; inside:
 *       settings-acute-enabled, settings-trend-enabled (checkboxes: the two rules),
 *       settings-raise-score, settings-clear-score (stress scores),
 *       settings-min-duration, settings-cooldown (minutes),
 *       settings-quiet-hours ("HH:MM-HH:MM" or "off"), settings-timezone,
 *       settings-save, settings-saved ("Saved." after a save),
 *       settings-error         the server's (or the form's) message when refused
 *     settings-updated       "last changed by <user>, <time>", or the clinic's settings
 *                            (not changed for this patient); the form is disabled
 *                            until the settings are loaded
 *   Admin page (/admin)
 *     admin-error, assign-form, assign-user, assign-patient, assign-button, users-table,
 *     user-<username>        one row; inside: user-role, user-patients,
 *       unassign-<patient>   the remove button of one assignment
 *   Error pages: not-found, forbidden (each with back-link)
 */

/** The element with data-testid=id under root (or null). */
export function byTestId(root, id) {
  return root.querySelector(`[data-testid="${CSS.escape(id)}"]`);
}

/** Set an element's text if it changed (no needless layout work). */
export function setText(el, text) {
  if (el && el.textContent !== text) el.textContent = text;
}

/** Run fn at most once per `ms`, trailing. */
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(() => {
      timer = null;
      fn(...args);
    }, ms);
  };
}

/* -- time --------------------------------------------------------------------------- */

/** The server's clock, estimated from the `now_unix_s` it sends (tablets drift). */
export const clock = {
  offsetS: 0,
  sync(serverNowS) {
    if (typeof serverNowS === "number" && isFinite(serverNowS)) {
      this.offsetS = serverNowS - Date.now() / 1000;
    }
  },
  now() {
    return Date.now() / 1000 + this.offsetS;
  },
};

export function fmtTime(tUnixS) {
  if (tUnixS == null) return "–";
  return new Date(tUnixS * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export function fmtDateTime(tUnixS) {
  if (tUnixS == null) return "–";
  const d = new Date(tUnixS * 1000);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (sameDay) return time;
  return `${d.toLocaleDateString([], { day: "numeric", month: "short" })} ${time}`;
}

/** "just now", "45 s ago", "12 min ago", "3 h ago", "2 d ago". */
export function fmtAgo(tUnixS) {
  if (tUnixS == null) return "never seen";
  const s = Math.max(0, clock.now() - tUnixS);
  if (s < 10) return "just now";
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** A number with `digits` decimals, or "–" for a missing value. */
export function fmtNum(v, digits = 0) {
  if (v == null || !isFinite(v)) return "–";
  return Number(v).toFixed(digits);
}

export const STATE_LABELS = {
  calm: "Calm",
  elevated: "Elevated",
  stressed: "Stressed",
  no_baseline: "No baseline yet",
  poor_quality: "Poor signal",
  activity: "Activity",
};

export const RULE_LABELS = {};

export function ruleLabel(rule) {
  return RULE_LABELS[rule] || String(rule).replace(/[_.-]+/g, " ");
}

/** One human line for an alert's explanation. */
export function explanationText(explanation) {
  if (!explanation) return "";
  if (typeof explanation.message === "string" && explanation.message) return explanation.message;
  const parts = [];
  if (explanation.metric != null) parts.push(String(explanation.metric));
  if (explanation.value != null) parts.push(`value ${fmtNum(explanation.value, 2)}`);
  if (explanation.baseline != null) parts.push(`baseline ${fmtNum(explanation.baseline, 2)}`);
  if (explanation.z != null) parts.push(`z ${fmtNum(explanation.z, 1)}`);
  return parts.join(", ");
}

/* -- API ---------------------------------------------------------------------------- */

let csrfToken = null;
let leaving = false; // signing out: no more redirects or reconnects

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function toLogin() {
  if (leaving) return;
  leaving = true;
  const next = location.pathname + location.search;
  location.assign(`/login?next=${encodeURIComponent(next)}`);
}

/** Call the JSON API; a 401 sends the browser to the sign-in page. */
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (method !== "GET") {
    headers["X-CSRF-Token"] = csrfToken || "";
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (_) {
    throw new ApiError(0, "the server cannot be reached (retrying)");
  }
  if (resp.status === 401) {
    toLogin();
    throw new ApiError(401, "not signed in");
  }
  let data = null;
  try {
    data = await resp.json();
  } catch (_) {
    data = null;
  }
  if (!resp.ok) {
    throw new ApiError(resp.status, (data && data.error) || `${resp.status} ${resp.statusText}`);
  }
  return data;
}

/** Load the signed-in user, fill the header, wire "Sign out". */
export async function setupPage() {
  const me = await api("/api/me");
  csrfToken = me.csrf_token;
  clock.sync(me.now_unix_s);
  setText(byTestId(document, "current-user"), me.username);
  const adminLink = byTestId(document, "admin-link");
  if (adminLink) adminLink.hidden = me.role !== "admin";
  const logout = byTestId(document, "logout-button");
  if (logout) {
    logout.addEventListener("click", async () => {
      logout.disabled = true;
      leaving = true;
      try {
        await fetch("/logout", {
          method: "POST",
          headers: { "X-CSRF-Token": csrfToken || "" },
          credentials: "same-origin",
        });
      } finally {
        location.assign("/login");
      }
    });
  }
  return me;
}

export function showLoadError(message) {
  const el = byTestId(document, "load-error");
  if (!el) return;
  el.hidden = !message;
  setText(el, message || "");
}

/* -- live updates ------------------------------------------------------------------- */

/**
 * The live WebSocket: reconnects by itself with exponential backoff (0.5 s doubling to
 * 15 s, with jitter), re-sends its watches, and calls onOpen after every (re)connection
 * so the page re-fetches what it may have missed. The header's conn-status shows
 * "live" or "reconnecting…".
 */
export class LiveSocket {
  constructor({ onMessage, onOpen }) {
    this.onMessage = onMessage;
    this.onOpen = onOpen;
    this.watching = new Set();
    this.ws = null;
    this.backoffMs = 500;
    this.timer = null;
    this.lastMessageAt = 0;
    this.everOpened = false;
    this.stopped = false;
    setInterval(() => this.keepAlive(), 10000);
    window.addEventListener("online", () => this.reconnectNow());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.reconnectNow();
    });
  }

  setStatus(state) {
    const el = byTestId(document, "conn-status");
    if (!el) return;
    el.dataset.state = state;
    setText(el, state === "live" ? "live" : state === "connecting" ? "connecting…" : "reconnecting…");
  }

  connect() {
    if (this.stopped) return;
    this.timer = null;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let ws;
    try {
      ws = new WebSocket(`${scheme}//${location.host}/ws`);
    } catch (_) {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.setStatus(this.everOpened ? "reconnecting" : "connecting");
    ws.addEventListener("open", () => {
      if (this.ws !== ws) return;
      this.backoffMs = 500;
      this.everOpened = true;
      this.lastMessageAt = Date.now();
      this.setStatus("live");
      for (const p of this.watching) this.send({ type: "watch", patient: p });
      if (this.onOpen) this.onOpen();
    });
    ws.addEventListener("message", (ev) => {
      if (this.ws !== ws) return;
      this.lastMessageAt = Date.now();
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (_) {
        return;
      }
      if (msg.type === "hello" || msg.type === "pong") clock.sync(msg.now_unix_s);
      if (this.onMessage) this.onMessage(msg);
    });
    ws.addEventListener("close", (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.setStatus("reconnecting");
      if (leaving) return;
      if (ev.code === 4001) {
        // The session ended: the API answers 401 and sends us to the sign-in page.
        api("/api/me").then(() => this.scheduleReconnect(), () => {});
        return;
      }
      this.scheduleReconnect();
    });
  }

  scheduleReconnect() {
    if (this.stopped || leaving || this.timer !== null) return;
    const jitter = 0.75 + Math.random() * 0.5;
    this.timer = setTimeout(() => this.connect(), this.backoffMs * jitter);
    this.backoffMs = Math.min(15000, this.backoffMs * 2);
  }

  reconnectNow() {
    if (this.ws !== null || this.stopped) return;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.backoffMs = 500;
    this.connect();
  }

  /** Ping now and then; a socket silent for 45 s is presumed dead and replaced. */
  keepAlive() {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    if (Date.now() - this.lastMessageAt > 45000) {
      this.ws = null;
      try {
        ws.close();
      } catch (_) {
        /* already closing */
      }
      this.setStatus("reconnecting");
      this.scheduleReconnect();
      return;
    }
    if (Date.now() - this.lastMessageAt > 20000) this.send({ type: "ping" });
  }

  send(obj) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(obj));
  }

  watch(patient) {
    this.watching.add(patient);
    this.send({ type: "watch", patient });
  }
}

/* -- shared rendering --------------------------------------------------------------- */

/** Fill online badge, last seen, battery, numbers, stress chip and quality in `root`. */
export function renderVitals(root, item) {
  const badge = byTestId(root, "online");
  if (badge) {
    const state = item.status ? (item.online ? "online" : "offline") : "unknown";
    badge.dataset.state = state;
    setText(badge, state === "unknown" ? "no status" : state);
  }
  setText(byTestId(root, "last-seen"), `last seen ${fmtAgo(item.last_seen_unix_s)}`);
  const battery = item.status ? item.status.battery_pct : null;
  setText(byTestId(root, "battery"), battery == null ? "battery –" : `battery ${battery}%`);
  const m = item.metrics || {};
  setText(byTestId(root, "hr"), fmtNum(m.mean_hr_bpm, 0));
  setText(byTestId(root, "rmssd"), fmtNum(m.rmssd_ms, 0));
  setText(byTestId(root, "lf_hf"), fmtNum(m.lf_hf, 2));
  const a = item.assessment;
  const chip = byTestId(root, "stress");
  if (chip) {
    const state = a && a.state ? a.state : "none";
    chip.dataset.state = state;
    setText(chip, a ? STATE_LABELS[state] || state : "No assessment");
    chip.title = a && a.message ? a.message : "";
  }
  setText(
    byTestId(root, "stress-score"),
    a && a.stress_score != null ? `stress score ${fmtNum(a.stress_score, 1)}` : "",
  );
  const contactEl = byTestId(root, "contact");
  const contact = item.status ? item.status.contact : null;
  if (contactEl) {
    setText(contactEl, contact == null ? "contact –" : contact ? "contact ok" : "no contact");
    contactEl.dataset.bad = String(contact === false);
  }
  const coverageEl = byTestId(root, "coverage");
  if (coverageEl) {
    setText(coverageEl, m.coverage == null ? "coverage –" : `coverage ${fmtNum(m.coverage * 100, 0)}%`);
    coverageEl.dataset.bad = String(m.coverage != null && m.coverage < 0.9);
  }
  const artifactsEl = byTestId(root, "artifacts");
  if (artifactsEl) {
    setText(
      artifactsEl,
      m.artifact_pct == null ? "artifacts –" : `artifacts ${fmtNum(m.artifact_pct, 1)}%`,
    );
    artifactsEl.dataset.bad = String(m.artifact_pct != null && m.artifact_pct > 5);
  }
}

/** Fold a live message into a patient summary (as /api/patients returns it). */
export function applyLive(item, msg) {
  if (msg.type === "metrics") {
    if (!item.metrics || msg.data.t_unix_s >= item.metrics.t_unix_s) item.metrics = msg.data;
    item.last_seen_unix_s = Math.max(item.last_seen_unix_s || 0, msg.data.t_unix_s);
  } else if (msg.type === "assessment") {
    item.assessment = msg.data;
  } else if (msg.type === "status") {
    item.status = msg.data;
    item.online = msg.data.state === "online";
    const seen = [item.last_seen_unix_s || 0];
    if (item.online) seen.push(msg.data.t_unix_s);
    if (msg.data.last_beat_unix_s != null) seen.push(msg.data.last_beat_unix_s);
    item.last_seen_unix_s = Math.max(...seen) || null;
  } else if (msg.type === "beats") {
    const t = msg.data.t_unix_s;
    if (t.length) item.last_seen_unix_s = Math.max(item.last_seen_unix_s || 0, t[t.length - 1]);
  }
}
