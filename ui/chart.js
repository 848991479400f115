// A small SVG line chart: axes with round ticks, optional log scale, one polyline per series
// and a legend. Enough for loss and accuracy curves; no library needed.

import { h } from './dom.js';

const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#ca8a04', '#db2777'];

const W = 480;
const H = 250;
const PAD = { left: 52, right: 12, top: 26, bottom: 54 };

/** The round step that cuts [lo, hi] into about n parts. */
function niceStep(lo, hi, n) {
  const raw = (hi - lo || Math.abs(hi) || 1) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
}

/** Round tick values covering [lo, hi]. */
function ticks(lo, hi, n) {
  const step = niceStep(lo, hi, n);
  const out = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/** Widens the y range to round values (whole decades on a log axis) so ticks mark both ends. */
function roundY(box, log) {
  const step = log ? Math.max(1, Math.ceil((box.y1 - box.y0) / 6)) : niceStep(box.y0, box.y1, 4);
  box.y0 = Math.floor(box.y0 / step + 1e-9) * step;
  box.y1 = Math.ceil(box.y1 / step - 1e-9) * step;
  box.yStep = step;
}

/** 0.5, 0.01, 1e-5: short labels for linear and log axes alike. */
const tickLabel = (v) => (v !== 0 && Math.abs(v) < 0.001 ? v.toExponential(0) : Number(v.toPrecision(3)).toString());

/** The x and y ranges of all points, with y mapped through log10 when asked. */
function extent(series, log) {
  const xs = [];
  const ys = [];
  for (const s of series) {
    for (const [x, y] of s.points) {
      if (y === null || y === undefined || !Number.isFinite(y) || (log && y <= 0)) continue;
      xs.push(x);
      ys.push(log ? Math.log10(y) : y);
    }
  }
  if (xs.length === 0) return null;
  return { x0: Math.min(...xs), x1: Math.max(...xs), y0: Math.min(...ys), y1: Math.max(...ys) };
}

function axes(box, fy, opts, sx, sy) {
  const g = h('g', { class: 'axis' });
  for (let t = box.y0; t <= box.y1 + box.yStep * 1e-9; t = Number((t + box.yStep).toPrecision(12))) {
    g.append(h('line', { class: 'grid-line', x1: PAD.left, x2: W - PAD.right, y1: sy(t), y2: sy(t) }));
    g.append(h('text', { x: PAD.left - 6, y: sy(t) + 4, 'text-anchor': 'end' }, fy(opts.log ? 10 ** t : t)));
  }
  for (const t of ticks(box.x0, box.x1, 6)) {
    g.append(h('text', { x: sx(t), y: H - PAD.bottom + 16, 'text-anchor': 'middle' }, String(t)));
  }
  g.append(h('line', { x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom }));
  g.append(h('text', { x: (PAD.left + W - PAD.right) / 2, y: H - PAD.bottom + 30, 'text-anchor': 'middle' }, opts.xLabel || ''));
  return g;
}

function legend(series) {
  const g = h('g', { class: 'legend' });
  let x = PAD.left;
  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    g.append(h('line', { x1: x, x2: x + 14, y1: H - 10, y2: H - 10, stroke: color, 'stroke-width': 2 }));
    g.append(h('text', { x: x + 18, y: H - 6 }, s.name));
    x += 30 + s.name.length * 6.8;
  });
  return g;
}

/**
 * lineChart({title, series: [{name, points: [[x, y]…], color?}], xLabel, log, format, xMax}) → <svg>.
 * Each polyline carries data-series (its name) so tests and readers can find it.
 */
export function lineChart(opts) {
  const svg = h('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': opts.title });
  svg.append(h('text', { class: 'title', x: PAD.left, y: 16 }, opts.title));
  const box = extent(opts.series, opts.log);
  if (!box) {
    svg.append(h('text', { class: 'empty', x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'no data yet'));
    return svg;
  }
  // A live curve grows into the room its phase will fill (opts.xMax: its last step or epoch).
  box.x1 = Math.max(box.x1, opts.xMax || 0);
  if (box.x1 === box.x0) box.x1 = box.x0 + 1;
  if (box.y1 === box.y0) { box.y0 -= 0.5; box.y1 += 0.5; }
  roundY(box, opts.log);
  const sx = (x) => PAD.left + ((x - box.x0) / (box.x1 - box.x0)) * (W - PAD.left - PAD.right);
  const sy = (y) => PAD.top + (1 - (y - box.y0) / (box.y1 - box.y0)) * (H - PAD.top - PAD.bottom);
  const fy = opts.format || tickLabel;
  svg.append(axes(box, fy, opts, sx, sy));
  opts.series.forEach((s, i) => {
    const pts = s.points.filter(([, y]) => Number.isFinite(y) && (!opts.log || y > 0));
    const coords = pts.map(([x, y]) => `${sx(x).toFixed(1)},${sy(opts.log ? Math.log10(y) : y).toFixed(1)}`);
    svg.append(h('polyline', { points: coords.join(' '), stroke: s.color || COLORS[i % COLORS.length], 'data-series': s.name },
      h('title', {}, s.name)));
  });
  svg.append(legend(opts.series));
  return svg;
}
