/* One patient: live vitals, RR tachogram, RMSSD and LF/HF trends with the baseline band,
 * alert history and acknowledgement, the patient's alert settings (see common.js for
 * test ids). */

import {
  ApiError,
  LiveSocket,
  api,
  applyLive,
  byTestId,
  clock,
  debounce,
  explanationText,
  fmtDateTime,
  fmtNum,
  renderVitals,
  ruleLabel,
  setText,
  setupPage,
  showLoadError,
} from "./common.js";
import { drawChart } from "./charts.js";

const patient = decodeURIComponent(location.pathname.split("/")[2] || "");
const base = `/api/patients/${encodeURIComponent(patient)}`;
const RR_S = 300;
const MAX_METRIC_POINTS = 3000;

let summary = null;
let rangeS = 3600;
let metricsSeq = 0;
const rr = { t: [], v: [], gaps: [] };
const metrics = { t: [], rmssd: [], lfhf: [] };

const tbody = byTestId(document, "alert-history").querySelector("tbody");
const rowTemplate = document.getElementById("alert-row-template");

/* -- loading ------------------------------------------------------------------------ */

async function loadSummary() {
  summary = await api(base);
  clock.sync(summary.now_unix_s);
  renderSummary();
}

async function loadBeats() {
  const data = await api(`${base}/beats?since_s=${RR_S}`);
  rr.t = data.t_unix_s;
  rr.v = data.rr_ms;
  rr.gaps = data.after_gap;
  drawSoon();
}

async function loadMetrics() {
  const seq = ++metricsSeq;
  const data = await api(`${base}/metrics?since_s=${rangeS}&names=rmssd_ms,lf_hf,mean_hr_bpm`);
  if (seq !== metricsSeq) return; // a newer range was chosen meanwhile
  metrics.t = data.t_unix_s;
  metrics.rmssd = data.rmssd_ms;
  metrics.lfhf = data.lf_hf;
  drawSoon();
}

async function loadAlerts() {
  const data = await api(`${base}/alerts`);
  renderAlerts(data.alerts);
}

async function loadSettings() {
  renderSettings(await api(`${base}/alert-settings`));
}

async function refreshAll() {
  try {
    await Promise.all([loadSummary(), loadBeats(), loadMetrics(), loadAlerts(), loadSettings()]);
    showLoadError(null);
  } catch (err) {
    if (err.status === 404) {
      showLoadError("This patient is not (or no longer) yours to see.");
    } else if (err.status !== 401) {
      showLoadError(`Could not load the data: ${err.message}`);
    }
  }
}
const refreshAlertsSoon = debounce(() => {
  loadAlerts().catch(() => {});
  loadSummary().catch(() => {});
}, 250);

/* -- rendering ---------------------------------------------------------------------- */

function renderSummary() {
  if (!summary) return;
  const root = document.querySelector("main");
  renderVitals(root, summary);
  const a = summary.assessment;
  setText(byTestId(document, "stress-message"), a && a.message ? a.message : "");
  const b = a && a.baseline;
  setText(
    byTestId(document, "baseline"),
    b
      ? `Baseline from ${b.n_windows} windows over ${fmtNum(b.days, 1)} days: RMSSD ` +
          `${fmtNum(b.rmssd_ms[0], 0)}–${fmtNum(b.rmssd_ms[2], 0)} ms, HR ` +
          `${fmtNum(b.hr_bpm[0], 0)}–${fmtNum(b.hr_bpm[2], 0)} bpm` +
          (b.lf_hf ? `, LF/HF ${fmtNum(b.lf_hf[0], 2)}–${fmtNum(b.lf_hf[2], 2)}` : "")
      : "No baseline yet: it builds up over the first days of wearing the strap.",
  );
}

let frame = null;
function drawSoon() {
  if (frame !== null) return;
  frame = requestAnimationFrame(() => {
    frame = null;
    drawCharts();
  });
}

function drawCharts() {
  const now = clock.now();
  const rrMax = Math.max(now, rr.t.length ? rr.t[rr.t.length - 1] : 0);
  drawChart(byTestId(document, "chart-rr"), {
    t: rr.t,
    v: rr.v,
    tMin: rrMax - RR_S,
    tMax: rrMax,
    digits: 0,
    gapS: 3,
    dots: true,
    marks: rr.gaps,
    empty: "no beats in the last 5 minutes",
  });
  const mMax = Math.max(now, metrics.t.length ? metrics.t[metrics.t.length - 1] : 0);
  const b = summary && summary.assessment ? summary.assessment.baseline : null;
  drawChart(byTestId(document, "chart-rmssd"), {
    t: metrics.t,
    v: metrics.rmssd,
    tMin: mMax - rangeS,
    tMax: mMax,
    band: b && b.rmssd_ms ? [b.rmssd_ms[0], b.rmssd_ms[2]] : null,
    median: b && b.rmssd_ms ? b.rmssd_ms[1] : null,
    digits: 0,
    floor: 0,
  });
  drawChart(byTestId(document, "chart-lf_hf"), {
    t: metrics.t,
    v: metrics.lfhf,
    tMin: mMax - rangeS,
    tMax: mMax,
    band: b && b.lf_hf ? [b.lf_hf[0], b.lf_hf[2]] : null,
    median: b && b.lf_hf ? b.lf_hf[1] : null,
    digits: 1,
    floor: 0,
    colorVar: "--chart-line-2",
  });
}

function details(expl) {
  const parts = [];
  if (expl.window_start_unix_s != null && expl.window_end_unix_s != null) {
    parts.push(`window ${fmtDateTime(expl.window_start_unix_s)}–${fmtDateTime(expl.window_end_unix_s)}`);
  }
  if (expl.coverage != null) parts.push(`coverage ${fmtNum(expl.coverage * 100, 0)}%`);
  if (expl.artifact_pct != null) parts.push(`artifacts ${fmtNum(expl.artifact_pct, 1)}%`);
  return parts.join(" · ");
}

function stateText(alert) {
  const parts = [];
  if (alert.resolved_unix_s != null) parts.push(`resolved ${fmtDateTime(alert.resolved_unix_s)}`);
  if (alert.acknowledged) parts.push("acknowledged");
  if (!parts.length) parts.push(alert.state === "raised" ? "open" : alert.state);
  return parts.join(", ");
}

function renderAlerts(alerts) {
  byTestId(document, "no-alerts").hidden = alerts.length > 0;
  byTestId(document, "alert-history").hidden = alerts.length === 0;
  const existing = new Map();
  for (const tr of tbody.children) existing.set(tr.dataset.alertId, tr);
  const wanted = [];
  for (const a of alerts) {
    let tr = existing.get(a.alert_id);
    if (!tr) {
      tr = rowTemplate.content.firstElementChild.cloneNode(true);
      tr.dataset.alertId = a.alert_id;
      tr.dataset.testid = `alert-${a.alert_id}`;
      byTestId(tr, "ack-form").addEventListener("submit", (ev) => {
        ev.preventDefault();
        acknowledge(tr, tr.dataset.alertId);
      });
    }
    tr.dataset.open = String(!!a.open);
    tr.dataset.state = a.state;
    setText(byTestId(tr, "alert-time"), fmtDateTime(a.raised_unix_s));
    const sev = byTestId(tr, "alert-severity");
    sev.dataset.severity = a.severity;
    setText(sev, a.severity);
    setText(byTestId(tr, "alert-rule"), ruleLabel(a.rule));
    setText(byTestId(tr, "alert-explanation"), explanationText(a.explanation));
    setText(byTestId(tr, "alert-details"), details(a.explanation || {}));
    setText(byTestId(tr, "alert-state"), stateText(a));
    const info = byTestId(tr, "alert-ack-info");
    if (a.acknowledged) {
      info.hidden = false;
      info.replaceChildren();
      const who = document.createElement("span");
      who.textContent =
        `by ${a.acknowledged.by || "?"}` +
        (a.acknowledged.t_unix_s != null ? `, ${fmtDateTime(a.acknowledged.t_unix_s)}` : "");
      info.append(who);
      if (a.acknowledged.note) {
        const note = document.createElement("span");
        note.className = "note";
        note.dataset.testid = "alert-ack-note";
        note.textContent = a.acknowledged.note;
        info.append(note);
      }
    } else {
      info.hidden = true;
      info.replaceChildren();
    }
    byTestId(tr, "ack-form").hidden = !(a.open && !a.acknowledged);
    wanted.push(tr);
  }
  wanted.forEach((tr, i) => {
    if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
  });
  while (tbody.children.length > wanted.length) tbody.lastElementChild.remove();
}

async function acknowledge(tr, alertId) {
  const button = byTestId(tr, "ack-button");
  const noteEl = byTestId(tr, "ack-note");
  const errorEl = byTestId(tr, "ack-error");
  errorEl.hidden = true;
  button.disabled = true;
  try {
    await api(`${base}/alerts/${encodeURIComponent(alertId)}/ack`, {
      method: "POST",
      body: { note: noteEl.value.trim() || null },
    });
    noteEl.value = "";
    await loadAlerts();
    await loadSummary();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    errorEl.hidden = false;
    setText(errorEl, err.message || "Could not acknowledge the alert.");
  } finally {
    button.disabled = false;
  }
}

/* -- alert settings ----------------------------------------------------------------- */

const settingsForm = byTestId(document, "settings-form");
/* Each editable setting: its input and how it is shown ("min": seconds as minutes). */
const settingFields = {
  acute_enabled: { id: "settings-acute-enabled", kind: "bool" },
  raise_score: { id: "settings-raise-score", kind: "number", label: "Raise at stress score" },
  min_duration_s: { id: "settings-min-duration", kind: "min", label: "Held for" },
  clear_score: { id: "settings-clear-score", kind: "number", label: "Resolves below score" },
  cooldown_s: { id: "settings-cooldown", kind: "min", label: "Pause after an alert" },
  trend_enabled: { id: "settings-trend-enabled", kind: "bool" },
  quiet_hours: { id: "settings-quiet-hours", kind: "text" },
  timezone: { id: "settings-timezone", kind: "text" },
};
let settingsEdited = false; // the therapist is changing the form: a re-fetch keeps it

function renderSettings(data) {
  setText(
    byTestId(settingsForm.parentElement, "settings-updated"),
    data.updated_by
      ? `last changed by ${data.updated_by}, ${fmtDateTime(data.updated_unix_s)}`
      : "the clinic's settings (not changed for this patient)",
  );
  if (settingsEdited) return;
  for (const [key, f] of Object.entries(settingFields)) {
    const el = byTestId(settingsForm, f.id);
    const v = data.settings[key];
    if (f.kind === "bool") el.checked = !!v;
    else if (f.kind === "min") el.value = String(Math.round((v / 60) * 100) / 100);
    else el.value = v == null ? "" : String(v);
  }
  settingsForm.querySelector("fieldset").disabled = false;
}

function readSettings() {
  const values = {};
  for (const [key, f] of Object.entries(settingFields)) {
    const el = byTestId(settingsForm, f.id);
    if (f.kind === "bool") {
      values[key] = el.checked;
    } else if (f.kind === "text") {
      values[key] = el.value.trim();
    } else {
      const n = el.valueAsNumber; // NaN when empty or not a number
      if (!isFinite(n)) throw new Error(`${f.label}: enter a number.`);
      values[key] = f.kind === "min" ? Math.round(n * 60 * 1000) / 1000 : n;
    }
  }
  return values;
}

async function saveSettings() {
  const button = byTestId(settingsForm, "settings-save");
  const errorEl = byTestId(settingsForm, "settings-error");
  const savedEl = byTestId(settingsForm, "settings-saved");
  errorEl.hidden = true;
  setText(savedEl, "");
  button.disabled = true;
  try {
    const data = await api(`${base}/alert-settings`, { method: "POST", body: readSettings() });
    settingsEdited = false;
    renderSettings(data);
    setText(savedEl, "Saved.");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    errorEl.hidden = false;
    setText(errorEl, err.message || "Could not save the settings.");
  } finally {
    button.disabled = false;
  }
}

function setupSettings() {
  settingsForm.addEventListener("input", () => {
    settingsEdited = true;
    setText(byTestId(settingsForm, "settings-saved"), "");
  });
  settingsForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    saveSettings();
  });
}

/* -- live --------------------------------------------------------------------------- */

function onMessage(msg) {
  if (msg.type === "error" && msg.patient === patient) {
    showLoadError("This patient is not (or no longer) yours to see.");
    return;
  }
  if (msg.patient !== patient || !summary) return;
  if (msg.type === "alert") {
    refreshAlertsSoon();
    return;
  }
  applyLive(summary, msg);
  if (msg.type === "beats") {
    const d = msg.data;
    const offset = rr.t.length;
    const lastT = offset ? rr.t[offset - 1] : -Infinity;
    for (let i = 0; i < d.t_unix_s.length; i++) {
      if (d.t_unix_s[i] <= lastT) continue; // already have it (re-fetch overlap)
      rr.t.push(d.t_unix_s[i]);
      rr.v.push(d.rr_ms[i]);
      if (d.after_gap.includes(i)) rr.gaps.push(rr.t.length - 1);
    }
    trimRR();
    drawSoon();
  } else if (msg.type === "metrics") {
    const n = metrics.t.length;
    if (!n || msg.data.t_unix_s > metrics.t[n - 1]) {
      metrics.t.push(msg.data.t_unix_s);
      metrics.rmssd.push(msg.data.rmssd_ms);
      metrics.lfhf.push(msg.data.lf_hf);
      const cutoff = msg.data.t_unix_s - rangeS;
      let drop = 0;
      while (drop < metrics.t.length && metrics.t[drop] < cutoff) drop++;
      if (drop || metrics.t.length > MAX_METRIC_POINTS) {
        drop = Math.max(drop, metrics.t.length - MAX_METRIC_POINTS);
        metrics.t.splice(0, drop);
        metrics.rmssd.splice(0, drop);
        metrics.lfhf.splice(0, drop);
      }
    }
    renderSummary();
    drawSoon();
  } else {
    renderSummary();
    drawSoon();
  }
}

function trimRR() {
  if (!rr.t.length) return;
  const cutoff = rr.t[rr.t.length - 1] - RR_S - 5;
  let drop = 0;
  while (drop < rr.t.length && rr.t[drop] < cutoff) drop++;
  if (!drop) return;
  rr.t.splice(0, drop);
  rr.v.splice(0, drop);
  rr.gaps = rr.gaps.map((i) => i - drop).filter((i) => i >= 0);
}

function setupRanges() {
  const buttons = document.querySelectorAll("button.range");
  const mark = () => {
    for (const b of buttons) b.setAttribute("aria-pressed", String(Number(b.dataset.range) === rangeS));
  };
  for (const b of buttons) {
    b.addEventListener("click", () => {
      rangeS = Number(b.dataset.range);
      mark();
      loadMetrics().catch((err) => showLoadError(`Could not load the trend: ${err.message}`));
    });
  }
  mark();
}

async function main() {
  setText(byTestId(document, "patient-title"), patient);
  document.title = `${patient} · hrvstream`;
  try {
    await setupPage();
  } catch (err) {
    if (err.status !== 401) showLoadError(`Could not load the page: ${err.message}`);
    return;
  }
  setupRanges();
  setupSettings();
  const live = new LiveSocket({ onMessage, onOpen: refreshAll });
  live.watch(patient);
  live.connect();
  await refreshAll();
  setInterval(() => {
    if (summary) renderSummary();
    drawSoon();
  }, 5000);
  window.addEventListener("resize", debounce(drawSoon, 150));
}

main();
