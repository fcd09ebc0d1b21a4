// Time-series charts as inline SVG: no library, nothing fetched. Each series has its own marker shape and line
// style as well as its colour, so the chart reads without colour; every chart carries a text summary
// (aria-label) and a data table for screen readers and for copying values. Days and hours are the patient's
// (spec.zone), not the browser's: a reading at 23:30 in Denver belongs to that evening wherever it is viewed.

import { zonedMidnight } from "./format.js";

const SVG_NS = "http://www.w3.org/2000/svg";
const DEFAULT_WIDTH = 720;
const HEIGHT = 260;
const MARGIN = { left: 52, right: 14, top: 14, bottom: 30 };
const DAY_MS = 86_400_000;

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  for (const child of children) node.append(child);
  return node;
}

function niceStep(span, ticks) {
  const raw = span / Math.max(ticks, 1);
  const power = 10 ** Math.floor(Math.log10(raw));
  const fraction = raw / power;
  const nice = fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 2.5 ? 2.5 : fraction <= 5 ? 5 : 10;
  return nice * power;
}

function valueRange(series, band, minSpan = 0) {
  const values = series.flatMap((s) => s.points.flatMap((p) => [p.value, p.low ?? p.value, p.high ?? p.value]));
  if (band) values.push(band.low, band.high);
  let low = Math.min(...values);
  let high = Math.max(...values);
  // A floor on the span keeps a 0.3 kg wobble from filling the chart like a 3 kg gain.
  const widen = Math.max(minSpan - (high - low), 0) / 2;
  low -= widen;
  high += widen;
  if (low === high) { low -= 1; high += 1; }
  const pad = (high - low) * 0.08;
  const step = niceStep(high - low + 2 * pad, 5);
  return { low: Math.floor((low - pad) / step) * step, high: Math.ceil((high + pad) / step) * step, step };
}

function marker(index, x, y, label, kind = "point") {
  const title = svg("title");
  title.textContent = label;
  const cls = `${kind} series-${index}`;
  if (index === 1) return svg("rect", { class: cls, x: x - 3.5, y: y - 3.5, width: 7, height: 7 }, title);
  return svg("circle", { class: cls, cx: x, cy: y, r: 4 }, title);
}

function legendSwatch(index) {
  return svg("svg", { viewBox: "0 0 28 12", "aria-hidden": "true" },
    svg("line", { class: `series-line series-${index}`, x1: 0, y1: 6, x2: 28, y2: 6 }),
    marker(index, 14, 6, "", "legend-marker"));
}

/**
 * Draw a chart into ``figure`` (which keeps its figcaption).
 * spec: { label, unit, since: Date, until: Date, note, band: {low, high, label} | null, minSpan (value units), zone,
 *         series: [{ name, points: [{ time: Date, value: number }] }], formatTime(Date), formatValue(number) }
 */
export function drawChart(figure, spec) {
  for (const node of [...figure.children]) if (node.tagName !== "FIGCAPTION") node.remove();
  const caption = figure.querySelector("figcaption");
  caption.textContent = `${spec.label} (${spec.unit})`;
  const count = spec.series.reduce((n, s) => n + s.points.length, 0);
  const note = document.createElement("p");
  note.className = "chart-note";
  note.textContent = spec.note;
  figure.append(note);

  // Drawn at the figure's own width, so text stays readable on a phone instead of shrinking with the picture.
  const style = getComputedStyle(figure);
  const inner = figure.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const width = Math.max(320, Math.min(1200, Math.round(inner) || DEFAULT_WIDTH));
  const x0 = MARGIN.left;
  const x1 = width - MARGIN.right;
  const y0 = HEIGHT - MARGIN.bottom;
  const y1 = MARGIN.top;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${HEIGHT}`, role: "img", class: "chart-svg",
    "data-points": count, "aria-label": summary(spec) });
  figure.append(chart);
  if (count === 0) {
    chart.setAttribute("viewBox", `0 0 ${width} 48`); // nothing to draw: a line of text, not an empty frame
    chart.append(svg("text", { class: "empty-note", x: width / 2, y: 28, "text-anchor": "middle" },
      "No readings in this period"));
    return chart;
  }

  const start = spec.since.getTime();
  const end = spec.until.getTime();
  const { low, high, step } = valueRange(spec.series, spec.band, spec.minSpan);
  const xOf = (time) => x0 + ((time - start) / (end - start)) * (x1 - x0);
  const yOf = (value) => y0 - ((value - low) / (high - low)) * (y0 - y1);

  if (spec.band) {
    const top = yOf(Math.min(spec.band.high, high));
    const bottom = yOf(Math.max(spec.band.low, low));
    chart.append(svg("rect", { class: "target-band", x: x0, y: top, width: x1 - x0, height: bottom - top,
      "data-low": spec.band.low, "data-high": spec.band.high }, Object.assign(svg("title"),
      { textContent: spec.band.label })));
    // Left-aligned: the newest readings, the ones looked at, are on the right.
    chart.append(svg("text", { class: "band-label", x: x0 + 6, y: top + 14, "text-anchor": "start" }, spec.band.label));
  }

  const axis = svg("g", { class: "axis" });
  const decimals = [0, 1, 2, 3].find((d) => Math.abs(step * 10 ** d - Math.round(step * 10 ** d)) < 1e-9) ?? 3;
  for (let i = 0; low + i * step <= high + step / 2; i += 1) {
    const value = low + i * step;
    const y = yOf(value);
    axis.append(svg("line", { x1: x0, x2: x1, y1: y, y2: y }));
    axis.append(svg("text", { x: x0 - 6, y: y + 4, "text-anchor": "end" }, value.toFixed(decimals)));
  }
  const days = (end - start) / DAY_MS;
  const every = Math.max(1, Math.ceil(days / Math.max(2, Math.floor((x1 - x0) / 70))));
  const dayLabel = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", timeZone: spec.zone || undefined });
  for (let tick = zonedMidnight(start + DAY_MS, spec.zone); tick <= end; tick += every * DAY_MS) {
    // Re-align on the zone's midnight: a daylight-saving change makes some days 23 or 25 hours long.
    const at = zonedMidnight(tick + DAY_MS / 2, spec.zone);
    const x = xOf(at);
    axis.append(svg("line", { x1: x, x2: x, y1: y0, y2: y0 + 4 }));
    axis.append(svg("text", { x, y: y0 + 17, "text-anchor": "middle" },
      dayLabel.format(new Date(at))));
  }
  axis.append(svg("line", { x1: x0, x2: x1, y1: y0, y2: y0 }));
  chart.append(axis);

  spec.series.forEach((series, index) => {
    const points = [...series.points].sort((a, b) => a.time - b.time);
    const group = svg("g", { class: "series", "data-series": series.name });
    if (points.length > 1) {
      group.append(svg("polyline", { class: `series-line series-${index}`,
        points: points.map((p) => `${xOf(p.time).toFixed(1)},${yOf(p.value).toFixed(1)}`).join(" ") }));
    }
    for (const p of points) {
      const x = xOf(p.time);
      if (p.low !== undefined && p.high !== undefined && p.high > p.low) {
        group.append(svg("line", { class: `whisker series-${index}`, x1: x, x2: x, y1: yOf(p.low), y2: yOf(p.high) }));
      }
      const spread = p.count === undefined ? "" :
        ` (mean of ${p.count}, ${spec.formatValue(p.low)}–${spec.formatValue(p.high)})`;
      group.append(marker(index, x, yOf(p.value),
        `${series.name} ${spec.formatValue(p.value)} ${spec.unit}${spread}, ${spec.formatTime(p.time)}`));
    }
    chart.append(group);
  });

  if (spec.series.length > 1) {
    const legend = document.createElement("p");
    legend.className = "legend";
    spec.series.forEach((series, index) => {
      const item = document.createElement("span");
      item.append(legendSwatch(index), ` ${series.name}`);
      legend.append(item);
    });
    figure.insertBefore(legend, chart);
  }
  figure.append(dataTable(spec));
  return chart;
}

function summary(spec) {
  const parts = spec.series.map((s) => {
    if (s.points.length === 0) return `${s.name}: no readings`;
    const latest = s.points.reduce((a, b) => (b.time > a.time ? b : a));
    return `${s.name}: ${s.points.length} points, latest ${spec.formatValue(latest.value)} ${spec.unit}`;
  });
  return `${spec.label} chart. ${parts.join("; ")}.`;
}

function dataTable(spec) {
  const details = document.createElement("details");
  const title = document.createElement("summary");
  title.textContent = "Show the data as a table";
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const text of ["Time", ...spec.series.map((s) => `${s.name} (${spec.unit})`)]) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = text;
    head.append(th);
  }
  const byTime = new Map();
  spec.series.forEach((series, index) => {
    for (const p of series.points) {
      const row = byTime.get(p.time.getTime()) ?? [];
      row[index] = p.value;
      byTime.set(p.time.getTime(), row);
    }
  });
  const body = table.createTBody();
  for (const [time, values] of [...byTime.entries()].sort((a, b) => b[0] - a[0])) {
    const row = body.insertRow();
    row.insertCell().textContent = spec.formatTime(new Date(time));
    spec.series.forEach((_, index) => {
      row.insertCell().textContent = values[index] === undefined ? "" : spec.formatValue(values[index]);
    });
  }
  details.append(title, table);
  return details;
}

// --- ambulatory glucose profile ----------------------------------------------------------------------------

const AGP_PERCENTILES = [5, 25, 50, 75, 95];
const AGP_MIN_READINGS = 96; // one a slot on average: fewer draws a blot, not a day's profile
const AGP_TARGET = [70, 180]; // International Consensus on Time in Range 2019: the AGP's target lines

function hhmm(minute) {
  return `${String(Math.floor(minute / 60) % 24).padStart(2, "0")}:${String(minute % 60).padStart(2, "0")}`;
}

/** Runs of consecutive slots that have every percentile: a slot with no readings breaks the curves. */
function runs(slots) {
  const out = [];
  let current = [];
  for (const slot of slots) {
    if (AGP_PERCENTILES.every((p) => typeof slot[`p${p}`] === "number")) current.push(slot);
    else if (current.length) { out.push(current); current = []; }
  }
  if (current.length) out.push(current);
  return out;
}

/**
 * The AGP (Battelino et al., Diabetes Care 2019; Johnson et al. 2019): one modal day of the period, the 5-95 %
 * band, the 25-75 % band and the median, over the 70-180 mg/dL target lines.
 * spec: { slots: [{minute, p5, p25, p50, p75, p95, n}], unit, days, readings, zone }
 */
export function drawAgp(figure, spec) {
  for (const node of [...figure.children]) if (node.tagName !== "FIGCAPTION") node.remove();
  figure.querySelector("figcaption").textContent = `Ambulatory glucose profile, ${spec.days} days (${spec.unit})`;
  const usable = runs(spec.slots ?? []);
  const note = document.createElement("p");
  note.className = "chart-note";
  note.textContent = `${spec.readings} readings folded onto one day in ${spec.zone || "UTC"}: median (solid),`
    + " 25–75 % (dark band) and 5–95 % (light band); target 70–180 mg/dL."
    + (spec.smoothing?.pool_slots ? ` Each point pools ${spec.smoothing.window_minutes} min of the day (few readings).` : "")
    + (spec.sufficient_data === false ? " Less than 14 days with data 70 % of the time: read with care." : "");
  figure.append(note);
  const style = getComputedStyle(figure);
  const inner = figure.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const width = Math.max(320, Math.min(1200, Math.round(inner) || DEFAULT_WIDTH));
  const x0 = MARGIN.left;
  const x1 = width - MARGIN.right - 26; // room for the percentile labels at the end of the day
  const y0 = HEIGHT - MARGIN.bottom;
  const y1 = MARGIN.top;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${HEIGHT}`, role: "img", class: "chart-svg agp-svg",
    "data-slots": usable.reduce((n, r) => n + r.length, 0),
    "aria-label": `Ambulatory glucose profile over ${spec.days} days from ${spec.readings} readings.` });
  figure.append(chart);
  if (!usable.length || spec.readings < AGP_MIN_READINGS) {
    // Words, not an SVG: they wrap on a phone.
    chart.remove();
    const empty = document.createElement("p");
    empty.className = "empty-profile";
    empty.textContent = `Too few glucose readings for a profile (${spec.readings}; it needs at least ${AGP_MIN_READINGS}).`;
    figure.append(empty);
    figure.classList.add("empty");
    return null;
  }
  figure.classList.remove("empty");
  const top = Math.max(350, ...usable.flat().map((s) => s.p95));
  const high = Math.ceil(top / 50) * 50;
  const xOf = (minute) => x0 + (minute / 1440) * (x1 - x0);
  const yOf = (value) => y0 - (Math.max(0, Math.min(value, high)) / high) * (y0 - y1);
  const axis = svg("g", { class: "axis" });
  for (let value = 0; value <= high; value += 50) {
    axis.append(svg("line", { x1: x0, x2: x1, y1: yOf(value), y2: yOf(value) }));
    axis.append(svg("text", { x: x0 - 6, y: yOf(value) + 4, "text-anchor": "end" }, String(value)));
  }
  for (let minute = 0; minute <= 1440; minute += 180) {
    axis.append(svg("line", { x1: xOf(minute), x2: xOf(minute), y1: y0, y2: y0 + 4 }));
    axis.append(svg("text", { x: xOf(minute), y: y0 + 17, "text-anchor": "middle" }, hhmm(minute)));
  }
  chart.append(axis);
  for (const value of AGP_TARGET) {
    chart.append(svg("line", { class: "agp-target", x1: x0, x2: x1, y1: yOf(value), y2: yOf(value), "data-target": value }));
  }
  // A slot's value is drawn at its middle; each slot spans 1440 / slots minutes.
  const span = 1440 / Math.max(spec.slots.length, 1);
  const at = (slot) => xOf(slot.minute + span / 2);
  const area = (run, low, upper) => [...run.map((s) => `${at(s).toFixed(1)},${yOf(s[upper]).toFixed(1)}`),
    ...[...run].reverse().map((s) => `${at(s).toFixed(1)},${yOf(s[low]).toFixed(1)}`)].join(" ");
  for (const run of usable) {
    chart.append(svg("polygon", { class: "agp-band agp-outer", "data-band": "5-95", points: area(run, "p5", "p95") }));
    chart.append(svg("polygon", { class: "agp-band agp-inner", "data-band": "25-75", points: area(run, "p25", "p75") }));
  }
  for (const p of AGP_PERCENTILES) {
    const group = svg("g", { class: `agp-line agp-p${p}`, "data-percentile": p });
    for (const run of usable) {
      group.append(svg("polyline", { points: run.map((s) => `${at(s).toFixed(1)},${yOf(s[`p${p}`]).toFixed(1)}`).join(" ") }));
    }
    chart.append(group);
  }
  // Labels past the day's end, level with each curve's last value, nudged so none overlaps its neighbour.
  const lastRun = usable[usable.length - 1];
  const end = lastRun[lastRun.length - 1];
  let floor = Infinity;
  for (const p of AGP_PERCENTILES) {
    const y = Math.min(yOf(end[`p${p}`]) + 4, floor - 11);
    floor = y;
    chart.append(svg("text", { class: "agp-label", x: x1 + 4, y, "text-anchor": "start" }, `${p}%`));
  }
  figure.append(agpTable(spec));
  return chart;
}

function agpTable(spec) {
  const details = document.createElement("details");
  const title = document.createElement("summary");
  title.textContent = "Show the profile as a table";
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const text of ["Time of day", "5 %", "25 %", "Median", "75 %", "95 %", "Readings"]) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = text;
    head.append(th);
  }
  const body = table.createTBody();
  for (const slot of spec.slots) {
    if (!slot.n) continue;
    const row = body.insertRow();
    row.insertCell().textContent = hhmm(slot.minute);
    for (const p of AGP_PERCENTILES) row.insertCell().textContent = slot[`p${p}`] === null ? "" : String(Math.round(slot[`p${p}`]));
    row.insertCell().textContent = String(slot.n);
  }
  details.append(title, table);
  return details;
}

// --- time in ranges --------------------------------------------------------------------------------------

/** One stacked bar of the five consensus ranges, widths in percent of the time measured. */
export function rangesBar(ranges) {
  const order = [["above_250", "Very high >250"], ["from_181_to_250", "High 181–250"], ["from_70_to_180", "In range 70–180"],
    ["from_54_to_69", "Low 54–69"], ["below_54", "Very low <54"]];
  const chart = svg("svg", { viewBox: "0 0 100 10", preserveAspectRatio: "none", class: "ranges-bar", role: "img",
    "aria-label": order.map(([key, label]) => `${label}: ${ranges[key]} %`).join(", ") });
  let x = 0;
  for (const [key, label] of order) {
    const width = Math.max(0, ranges[key] ?? 0);
    const title = svg("title");
    title.textContent = `${label} mg/dL: ${ranges[key]} %`;
    chart.append(svg("rect", { class: `range-${key}`, x, y: 0, width, height: 10, "data-range": key }, title));
    x += width;
  }
  return chart;
}
