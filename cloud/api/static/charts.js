// Time-series charts as inline SVG: no library, nothing fetched. Each series has its own marker shape and line
// style as well as its colour, so the chart reads without colour; every chart carries a text summary
// (aria-label) and a data table for screen readers and for copying values.

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

function localMidnight(time) {
  const day = new Date(time);
  day.setHours(0, 0, 0, 0);
  return day.getTime();
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
 * spec: { label, unit, since: Date, until: Date, note, band: {low, high, label} | null, minSpan (value units),
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
  for (let tick = localMidnight(start + DAY_MS); tick <= end; tick += every * DAY_MS) {
    // Re-align on local midnight: a daylight-saving change makes some days 23 or 25 hours long.
    const at = localMidnight(tick + DAY_MS / 2);
    const x = xOf(at);
    axis.append(svg("line", { x1: x, x2: x, y1: y0, y2: y0 + 4 }));
    axis.append(svg("text", { x, y: y0 + 17, "text-anchor": "middle" },
      new Date(at).toLocaleDateString(undefined, { month: "short", day: "numeric" })));
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
