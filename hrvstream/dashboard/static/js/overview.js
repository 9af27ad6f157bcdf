/* The overview: open alerts at the top, one tile per patient (see common.js for test ids). */

import {
  LiveSocket,
  api,
  applyLive,
  byTestId,
  clock,
  debounce,
  explanationText,
  fmtDateTime,
  renderVitals,
  ruleLabel,
  setText,
  setupPage,
  showLoadError,
} from "./common.js";
import { drawSparkline } from "./charts.js";

const SPARK_S = 3600;
const SEVERITY_RANK = { critical: 3, warning: 2, info: 1 };

const items = new Map(); // patient -> summary (as /api/patients returns it)
const tiles = new Map(); // patient -> tile element
let order = [];

const tilesEl = byTestId(document, "tiles");
const tileTemplate = document.getElementById("tile-template");
const alertTemplate = document.getElementById("open-alert-template");

async function refresh() {
  try {
    const data = await api("/api/patients");
    clock.sync(data.now_unix_s);
    showLoadError(null);
    items.clear();
    for (const item of data.patients) items.set(item.patient, item);
    order = data.patients.map((p) => p.patient);
    renderAlerts(data.open_alerts);
    renderTiles();
    tilesEl.setAttribute("aria-busy", "false");
  } catch (err) {
    if (err.status !== 401) showLoadError(`Could not load the patients: ${err.message}`);
  }
}
const refreshSoon = debounce(refresh, 250);

function renderAlerts(alerts) {
  const strip = byTestId(document, "alerts-strip");
  const list = byTestId(document, "open-alerts");
  strip.hidden = alerts.length === 0;
  setText(byTestId(document, "open-alert-count"), `(${alerts.length})`);
  const existing = new Map();
  for (const li of list.children) existing.set(li.dataset.alertId, li);
  const wanted = [];
  for (const a of alerts) {
    let li = existing.get(a.alert_id);
    if (!li) {
      li = alertTemplate.content.firstElementChild.cloneNode(true);
      li.dataset.alertId = a.alert_id;
      li.dataset.testid = `open-alert-${a.alert_id}`;
    }
    const link = byTestId(li, "open-alert-link");
    link.href = `/patients/${encodeURIComponent(a.patient)}`;
    const sev = byTestId(li, "alert-severity");
    sev.dataset.severity = a.severity;
    setText(sev, a.severity);
    setText(byTestId(li, "alert-patient"), a.patient);
    setText(byTestId(li, "alert-rule"), ruleLabel(a.rule));
    setText(byTestId(li, "alert-state"), a.state === "raised" ? "" : a.state);
    setText(byTestId(li, "alert-time"), fmtDateTime(a.t_unix_s));
    setText(byTestId(li, "alert-explanation"), explanationText(a.explanation));
    wanted.push(li);
  }
  wanted.forEach((li, i) => {
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
  });
  while (list.children.length > wanted.length) list.lastElementChild.remove();
}

function makeTile(patient) {
  const tile = tileTemplate.content.firstElementChild.cloneNode(true);
  tile.dataset.testid = `tile-${patient}`;
  tile.dataset.patient = patient;
  const link = byTestId(tile, "patient-link");
  link.href = `/patients/${encodeURIComponent(patient)}`;
  setText(link, patient);
  return tile;
}

function renderTiles() {
  byTestId(document, "no-patients").hidden = order.length > 0;
  for (const [patient, tile] of tiles) {
    if (!items.has(patient)) {
      tile.remove();
      tiles.delete(patient);
    }
  }
  order.forEach((patient, i) => {
    let tile = tiles.get(patient);
    if (!tile) {
      tile = makeTile(patient);
      tiles.set(patient, tile);
    }
    if (tilesEl.children[i] !== tile) tilesEl.insertBefore(tile, tilesEl.children[i] || null);
    renderTile(patient);
  });
}

function renderTile(patient) {
  const tile = tiles.get(patient);
  const item = items.get(patient);
  if (!tile || !item) return;
  renderVitals(tile, item);
  tile.dataset.online = String(!!item.online);
  const alerts = item.open_alerts || [];
  const top = alerts.reduce(
    (best, a) => ((SEVERITY_RANK[a.severity] || 0) > (SEVERITY_RANK[best] || 0) ? a.severity : best),
    null,
  );
  if (top) tile.dataset.alert = top;
  else delete tile.dataset.alert;
  const alertLine = byTestId(tile, "tile-alerts");
  alertLine.hidden = alerts.length === 0;
  setText(alertLine, alerts.length === 1 ? "1 open alert" : `${alerts.length} open alerts`);
  drawSpark(tile, item);
}

function drawSpark(tile, item) {
  const s = item.sparkline || { t_unix_s: [], rmssd_ms: [] };
  const tMax = Math.max(clock.now(), s.t_unix_s.length ? s.t_unix_s[s.t_unix_s.length - 1] : 0);
  drawSparkline(byTestId(tile, "sparkline"), s.t_unix_s, s.rmssd_ms, {
    tMin: tMax - SPARK_S,
    tMax,
  });
}

function appendSpark(item, data) {
  const s = item.sparkline || (item.sparkline = { t_unix_s: [], rmssd_ms: [] });
  const n = s.t_unix_s.length;
  if (n && data.t_unix_s <= s.t_unix_s[n - 1]) return;
  s.t_unix_s.push(data.t_unix_s);
  s.rmssd_ms.push(data.rmssd_ms);
  const cutoff = data.t_unix_s - SPARK_S;
  while (s.t_unix_s.length && s.t_unix_s[0] < cutoff) {
    s.t_unix_s.shift();
    s.rmssd_ms.shift();
  }
  // keep the sparkline light: thin the older half when it grows past 240 points
  if (s.t_unix_s.length > 240) {
    const keepT = [];
    const keepV = [];
    const half = Math.floor(s.t_unix_s.length / 2);
    for (let i = 0; i < s.t_unix_s.length; i++) {
      if (i >= half || i % 2 === 0) {
        keepT.push(s.t_unix_s[i]);
        keepV.push(s.rmssd_ms[i]);
      }
    }
    s.t_unix_s = keepT;
    s.rmssd_ms = keepV;
  }
}

const dirty = new Set();
let frame = null;
function renderSoon(patient) {
  dirty.add(patient);
  if (frame === null) {
    frame = requestAnimationFrame(() => {
      frame = null;
      for (const p of dirty) renderTile(p);
      dirty.clear();
    });
  }
}

function onMessage(msg) {
  if (msg.type === "error" || !msg.patient) return;
  const item = items.get(msg.patient);
  if (!item) {
    // A patient newly assigned (or first seen): fetch the overview again.
    if (msg.type !== "beats") refreshSoon();
    return;
  }
  if (msg.type === "alert") {
    refreshSoon(); // open alerts and tile order come from the server's alert engine
    return;
  }
  applyLive(item, msg);
  if (msg.type === "metrics") appendSpark(item, msg.data);
  renderSoon(msg.patient);
}

async function main() {
  try {
    await setupPage();
  } catch (err) {
    if (err.status !== 401) showLoadError(`Could not load the page: ${err.message}`);
    return;
  }
  const live = new LiveSocket({ onMessage, onOpen: refresh });
  live.connect();
  await refresh();
  // "last seen" labels age; redraw them (and the sparklines' time axis) every 5 s.
  setInterval(() => {
    for (const p of items.keys()) renderSoon(p);
  }, 5000);
  window.addEventListener("resize", debounce(() => items.forEach((_, p) => renderSoon(p)), 150));
}

main();
