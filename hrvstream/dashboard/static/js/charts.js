/* Charts on <canvas>, in plain JavaScript: sparklines and time-series line charts with a
 * shaded normal band. Colours come from the CSS variables in dashboard.css, so the charts
 * follow the light and dark schemes. Missing values (null) and long gaps break the line
 * instead of being bridged: a missing reading is never drawn as if it were there. */

function cssVar(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

/** Size the canvas backing store to its CSS box and the device pixel ratio. */
function prepare(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(canvas.clientWidth));
  const h = Math.max(1, Math.round(canvas.clientHeight));
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}

function finite(v) {
  return v != null && isFinite(v);
}

/** The typical spacing of a time series (median of the steps), for gap detection. */
function typicalStep(t) {
  if (t.length < 3) return Infinity;
  const steps = [];
  const stride = Math.max(1, Math.floor(t.length / 200));
  for (let i = stride; i < t.length; i += stride) steps.push((t[i] - t[i - stride]) / stride);
  steps.sort((a, b) => a - b);
  return steps[Math.floor(steps.length / 2)] || Infinity;
}

/** Stroke a polyline, broken at missing values and at gaps longer than gapS. */
function strokeSeries(ctx, t, v, x, y, gapS) {
  ctx.beginPath();
  let pen = false;
  let prevT = null;
  for (let i = 0; i < t.length; i++) {
    if (!finite(v[i])) {
      pen = false;
      continue;
    }
    if (prevT !== null && t[i] - prevT > gapS) pen = false;
    const px = x(t[i]);
    const py = y(v[i]);
    if (pen) ctx.lineTo(px, py);
    else ctx.moveTo(px, py);
    pen = true;
    prevT = t[i];
  }
  ctx.stroke();
}

/** A sparkline: the series scaled to the canvas, no axes. */
export function drawSparkline(canvas, t, v, { tMin, tMax } = {}) {
  const { ctx, w, h } = prepare(canvas);
  const vals = v.filter(finite);
  if (!t.length || !vals.length) {
    ctx.fillStyle = cssVar("--chart-text", "#888");
    ctx.font = "12px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    ctx.fillText("no data in the last hour", 4, h / 2);
    return;
  }
  const t0 = tMin ?? t[0];
  const t1 = Math.max(tMax ?? t[t.length - 1], t0 + 1);
  let lo = Math.min(...vals);
  let hi = Math.max(...vals);
  if (hi - lo < 1e-9) {
    lo -= 1;
    hi += 1;
  }
  const pad = 3;
  const x = (tt) => pad + ((tt - t0) / (t1 - t0)) * (w - 2 * pad);
  const y = (vv) => h - pad - ((vv - lo) / (hi - lo)) * (h - 2 * pad);
  ctx.strokeStyle = cssVar("--chart-line", "#0f5b8a");
  ctx.lineWidth = 1.6;
  ctx.lineJoin = "round";
  strokeSeries(ctx, t, v, x, y, Math.max(3 * typicalStep(t), 60));
  const last = v.length - 1;
  if (finite(v[last])) {
    ctx.fillStyle = ctx.strokeStyle;
    ctx.beginPath();
    ctx.arc(x(t[last]), y(v[last]), 2.5, 0, Math.PI * 2);
    ctx.fill();
  }
}

/** Round numbers for a value axis: about `count` ticks covering [lo, hi]. */
function niceTicks(lo, hi, count) {
  const span = hi - lo;
  const raw = span / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(v);
  return { ticks, step };
}

const TIME_STEPS_S = [
  10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800,
];

function timeTicks(t0, t1, maxTicks) {
  const span = t1 - t0;
  const step = TIME_STEPS_S.find((s) => span / s <= maxTicks) || 86400 * 7;
  // Align ticks to local time (minutes/hours/days as the clock shows them).
  const offsetS = -new Date(t0 * 1000).getTimezoneOffset() * 60;
  const ticks = [];
  for (let t = Math.ceil((t0 + offsetS) / step) * step - offsetS; t <= t1; t += step) ticks.push(t);
  return { ticks, step };
}

function timeLabel(t, step, span) {
  const d = new Date(t * 1000);
  if (step >= 86400) return d.toLocaleDateString([], { weekday: "short", day: "numeric" });
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (span > 86400 && d.getHours() === 0 && d.getMinutes() === 0) {
    return d.toLocaleDateString([], { weekday: "short", day: "numeric" });
  }
  if (step < 60) return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return hm;
}

/**
 * A time-series line chart.
 *
 * opts: t (Unix s), v (values, null = missing), tMin, tMax, band ([low, high] or null:
 * the normal range, shaded), median (dashed line or null), digits (value labels),
 * gapS (break the line over gaps longer than this; default 3 typical steps),
 * marks (indices drawn as small red ticks: beats after lost beats), dots (draw points),
 * empty (text when there is nothing to draw).
 */
export function drawChart(canvas, opts) {
  const { ctx, w, h } = prepare(canvas);
  const t = opts.t || [];
  const v = opts.v || [];
  const tMax = opts.tMax ?? (t.length ? t[t.length - 1] : Date.now() / 1000);
  const tMin = opts.tMin ?? (t.length ? t[0] : tMax - 3600);
  const textColor = cssVar("--chart-text", "#666");
  const font = "12px system-ui, sans-serif";
  ctx.font = font;

  const inRange = [];
  for (let i = 0; i < t.length; i++) {
    if (t[i] >= tMin && t[i] <= tMax && finite(v[i])) inRange.push(v[i]);
  }
  let lo = inRange.length ? Math.min(...inRange) : 0;
  let hi = inRange.length ? Math.max(...inRange) : 1;
  if (opts.band) {
    lo = Math.min(lo, opts.band[0]);
    hi = Math.max(hi, opts.band[1]);
  }
  if (!inRange.length && !opts.band) {
    lo = 0;
    hi = 1;
  }
  if (hi - lo < 1e-9) {
    lo -= Math.abs(lo) * 0.1 || 1;
    hi += Math.abs(hi) * 0.1 || 1;
  }
  const padV = (hi - lo) * 0.08;
  lo = Math.max(opts.floor ?? -Infinity, lo - padV);
  hi += padV;
  const { ticks: yTicks } = niceTicks(lo, hi, Math.max(2, Math.floor(h / 45)));
  const digits = opts.digits ?? 0;
  const labelW = Math.max(...yTicks.map((y) => ctx.measureText(y.toFixed(digits)).width), 20);

  const left = Math.ceil(labelW) + 10;
  const right = 8;
  const top = 8;
  const bottom = 22;
  const pw = Math.max(10, w - left - right);
  const ph = Math.max(10, h - top - bottom);
  const x = (tt) => left + ((tt - tMin) / Math.max(1e-9, tMax - tMin)) * pw;
  const y = (vv) => top + ph - ((vv - lo) / (hi - lo)) * ph;

  // grid and value labels
  ctx.strokeStyle = cssVar("--chart-grid", "#e5e5e5");
  ctx.lineWidth = 1;
  ctx.fillStyle = textColor;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const yv of yTicks) {
    if (yv < lo || yv > hi) continue;
    const py = Math.round(y(yv)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(left, py);
    ctx.lineTo(left + pw, py);
    ctx.stroke();
    ctx.fillText(yv.toFixed(digits), left - 6, py);
  }
  // time labels
  const { ticks: tTicks, step } = timeTicks(tMin, tMax, Math.max(2, Math.floor(pw / 90)));
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (const tt of tTicks) {
    const px = Math.round(x(tt)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(px, top);
    ctx.lineTo(px, top + ph);
    ctx.stroke();
    ctx.fillText(timeLabel(tt, step, tMax - tMin), px, top + ph + 5);
  }

  ctx.save();
  ctx.beginPath();
  ctx.rect(left, top, pw, ph);
  ctx.clip();
  // normal band and median
  if (opts.band) {
    ctx.fillStyle = cssVar("--chart-band", "rgba(0,128,0,0.12)");
    const y0 = y(opts.band[1]);
    ctx.fillRect(left, y0, pw, y(opts.band[0]) - y0);
  }
  if (finite(opts.median)) {
    ctx.strokeStyle = cssVar("--chart-median", "green");
    ctx.setLineDash([6, 4]);
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    ctx.moveTo(left, y(opts.median));
    ctx.lineTo(left + pw, y(opts.median));
    ctx.stroke();
    ctx.setLineDash([]);
  }
  // the series
  const color = cssVar(opts.colorVar || "--chart-line", "#0f5b8a");
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.8;
  ctx.lineJoin = "round";
  const gapS = opts.gapS ?? Math.max(3 * typicalStep(t), 1);
  strokeSeries(ctx, t, v, x, y, gapS);
  if (opts.dots) {
    ctx.fillStyle = color;
    for (let i = 0; i < t.length; i++) {
      if (finite(v[i]) && t[i] >= tMin) ctx.fillRect(x(t[i]) - 1.5, y(v[i]) - 1.5, 3, 3);
    }
  }
  if (opts.marks && opts.marks.length) {
    ctx.strokeStyle = cssVar("--chart-gap", "red");
    ctx.lineWidth = 2;
    for (const i of opts.marks) {
      if (t[i] === undefined || t[i] < tMin) continue;
      const px = x(t[i]);
      ctx.beginPath();
      ctx.moveTo(px, top);
      ctx.lineTo(px, top + 8);
      ctx.stroke();
    }
  }
  ctx.restore();

  if (!inRange.length) {
    ctx.fillStyle = textColor;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.font = "14px system-ui, sans-serif";
    ctx.fillText(opts.empty || "no data in this range", left + pw / 2, top + ph / 2);
  }
}
