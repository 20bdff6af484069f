// Live charts. `TimeSeriesChart` plots samples the page feeds it (overview
// rates, a group's lag); `ViewChart` draws a dashboard chart from a view's
// change stream. Both render into a card whose data-rows / data-version
// attributes say how much data it holds and how often new data redrew it.

import {
  BarController,
  BarElement,
  CategoryScale,
  Chart,
  Filler,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
  type ChartDataset,
  type ScaleOptions,
} from "chart.js";
import type { Cell, ChartSpec, ChartType, Column, Row } from "./api";
import { el, fill, type Child } from "./dom";
import {
  cellNumber,
  cellTime,
  compareCells,
  formatCell,
  formatClock,
  formatCompact,
  formatDateTime,
  formatFigure,
  isNumericType,
} from "./format";
import { acquireView, type ViewStream } from "./view_stream";

// Only what is drawn here is registered, so the bundle leaves the rest out.
Chart.register(
  BarController,
  BarElement,
  CategoryScale,
  Filler,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
);
// The system font stack of app.css; the canvas cannot inherit it.
Chart.defaults.font.family = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif';
Chart.defaults.color = "#5f6675";
Chart.defaults.borderColor = "#e6e8ee";

const PALETTE = ["#4f5bd5", "#17a589", "#e67e22", "#d6457a", "#3498db", "#8e5bd0", "#7d9a2f", "#c0392b", "#5d6d7e", "#c9a227"];

/** A line chart keeps this many distinct x values, the newest. */
const MAX_X_VALUES = 200;
const DEFAULT_LIMIT = 10;

type Point = { x: number; y: number };

/** The card every chart lives in, carrying the attributes tests read. */
function chartCard(id: string, type: ChartType, title: string, actions: Child, body: HTMLElement): HTMLElement {
  return el(
    "div",
    {
      class: `chart card chart-${type}`,
      "data-testid": "chart",
      "data-chart-id": id,
      "data-type": type,
      "data-rows": 0,
      "data-version": 0,
    },
    el("div", { class: "chart-head" }, el("h3", null, title), actions),
    body,
  );
}

function timeAxis(): ScaleOptions<"linear"> {
  return {
    type: "linear",
    grid: { display: false },
    ticks: {
      maxRotation: 0,
      autoSkipPadding: 24,
      maxTicksLimit: 7,
      // Only round times as ticks, not the (pinned) ends of the axis.
      includeBounds: false,
      callback: (v) => formatClock(Number(v)),
    },
  } as ScaleOptions<"linear">;
}

function valueAxis(format: (v: number) => string): ScaleOptions<"linear"> {
  return {
    type: "linear",
    beginAtZero: true,
    ticks: { maxTicksLimit: 6, callback: (v) => format(Number(v)) },
  } as ScaleOptions<"linear">;
}

function lineDataset(label: string, color: string, data: Point[], area: boolean): ChartDataset<"line", Point[]> {
  return {
    label,
    data,
    borderColor: color,
    backgroundColor: area ? `${color}1f` : color,
    fill: area ? "origin" : false,
    borderWidth: 2,
    pointRadius: 0,
    pointHoverRadius: 3,
    tension: 0.2,
  };
}

function lineChart(canvas: HTMLCanvasElement, format: (v: number) => string, legend = true): Chart<"line", Point[]> {
  return new Chart<"line", Point[]>(canvas, {
    type: "line",
    data: { datasets: [] },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: "nearest", axis: "x", intersect: false },
      scales: { x: timeAxis(), y: valueAxis(format) },
      plugins: {
        legend: { display: legend, position: "bottom", labels: { boxWidth: 10, boxHeight: 10 } },
        tooltip: {
          callbacks: {
            title: (items) => (items.length ? formatDateTime(items[0].parsed.x ?? NaN) : ""),
            label: (item) => `${item.dataset.label ?? ""}: ${format(item.parsed.y ?? NaN)}`,
          },
        },
      },
    },
  });
}

/**
 * Pins a time axis to [min, max]: left alone, Chart.js rounds a linear
 * axis out to "nice" numbers, which for milliseconds means empty margins.
 */
function setXRange(chart: Chart<"line", Point[]>, min: number | undefined, max: number | undefined): void {
  const x = chart.options.scales?.x;
  if (x) Object.assign(x, { min, max });
}

export interface TimePoint {
  t: number;
  values: number[];
}

export interface TimeSeriesOptions {
  id: string;
  title: string;
  /** One line per label; each point carries one value per label. */
  labels: string[];
  format: (v: number) => string;
  /** When set, the x axis spans exactly this long up to the newest point. */
  windowMs?: number;
}

/** A line chart of samples pushed by the page. */
export class TimeSeriesChart {
  readonly root: HTMLElement;
  private chart: Chart<"line", Point[]>;
  private points: TimePoint[] = [];
  private version = 0;

  constructor(private opts: TimeSeriesOptions) {
    const canvas = el("canvas");
    this.root = chartCard(opts.id, "line", opts.title, null, el("div", { class: "chart-body" }, canvas));
    this.chart = lineChart(canvas, opts.format, opts.labels.length > 1);
    this.chart.data.datasets = opts.labels.map((label, i) =>
      lineDataset(label, PALETTE[i % PALETTE.length], [], true),
    );
  }

  /** Replaces all points (oldest first). */
  replace(points: TimePoint[]): void {
    this.points = points.slice();
    this.render();
  }

  /** Adds a newer point; one not newer than the last is ignored. */
  append(p: TimePoint): void {
    const last = this.points[this.points.length - 1];
    if (last && p.t <= last.t) return;
    this.points.push(p);
    this.render();
  }

  destroy(): void {
    this.chart.destroy();
  }

  private render(): void {
    const { windowMs } = this.opts;
    const newest = this.points[this.points.length - 1]?.t;
    if (windowMs !== undefined && newest !== undefined) {
      this.points = this.points.filter((p) => p.t >= newest - windowMs);
    }
    const oldest = this.points[0]?.t;
    setXRange(this.chart, windowMs !== undefined && newest !== undefined ? newest - windowMs : oldest, newest);
    this.chart.data.datasets.forEach((ds, i) => {
      ds.data = this.points.map((p) => ({ x: p.t, y: p.values[i] }));
    });
    this.chart.update("none");
    this.version++;
    this.root.dataset.rows = String(this.points.length);
    this.root.dataset.version = String(this.version);
  }
}

/** A dashboard chart, live from its view's change stream. */
export class ViewChart {
  readonly root: HTMLElement;
  private body: HTMLElement;
  private note: HTMLElement;
  /** The Chart.js chart of a line or bar chart; tables and numbers are plain DOM. */
  private line: Chart<"line", Point[]> | null = null;
  private bar: Chart<"bar", (number | null)[], string> | null = null;
  private stream: ViewStream;
  private unsubscribe: () => void;
  private version = 0;
  private destroyed = false;
  /** Series keep their colour as others come and go. */
  private colors = new Map<string, string>();

  constructor(
    private readonly spec: ChartSpec,
    actions: Child,
  ) {
    this.note = el("div", { class: "chart-note" }, "Waiting for data…");
    this.body = el("div", { class: "chart-body" });
    this.root = chartCard(spec.id, spec.type, spec.title, actions, el("div", { class: "chart-frame" }, this.body, this.note));
    if (spec.type === "line" || spec.type === "bar") {
      const canvas = el("canvas");
      this.body.append(canvas);
      if (spec.type === "line") this.line = lineChart(canvas, formatCompact);
      else this.bar = barChart(canvas, spec.y.length > 1);
    }
    this.stream = acquireView(spec.view);
    this.unsubscribe = this.stream.subscribe(() => this.render());
    // The stream may be shared and have its snapshot already: draw once the
    // card is in the page.
    if (this.stream.columns) window.setTimeout(() => this.render(), 0);
  }

  destroy(): void {
    this.destroyed = true;
    this.unsubscribe();
    this.stream.release();
    this.line?.destroy();
    this.bar?.destroy();
  }

  private render(): void {
    if (this.destroyed || !this.stream.columns) return;
    const columns = this.stream.columns;
    const rows = this.stream.rows();
    let problem: string | null;
    switch (this.spec.type) {
      case "line":
        problem = this.renderLine(columns, rows);
        break;
      case "bar":
        problem = this.renderBar(columns, rows);
        break;
      case "table":
        problem = this.renderTable(columns, rows);
        break;
      case "number":
        problem = this.renderNumber(columns, rows);
        break;
    }
    const message = problem ?? (rows.length === 0 ? "No rows yet" : null);
    this.note.textContent = message ?? "";
    this.note.hidden = message === null;
    this.version++;
    this.root.dataset.rows = String(this.stream.size);
    this.root.dataset.version = String(this.version);
  }

  /** Column indexes of the spec's x (may be absent) and y columns. */
  private resolve(columns: Column[]): { x: number | null; y: number[] } | string {
    const find = (name: string): number => columns.findIndex((c) => c.name === name);
    for (const name of [this.spec.x, this.spec.series, ...this.spec.y]) {
      if (name && find(name) < 0) return `Column ${name} is not in view ${this.spec.view}`;
    }
    return { x: this.spec.x ? find(this.spec.x) : null, y: this.spec.y.map(find) };
  }

  private color(key: string): string {
    let c = this.colors.get(key);
    if (!c) {
      c = PALETTE[this.colors.size % PALETTE.length];
      this.colors.set(key, c);
    }
    return c;
  }

  private renderLine(columns: Column[], rows: Row[]): string | null {
    const chart = this.line;
    if (!chart) return null;
    const cols = this.resolve(columns);
    if (typeof cols === "string") return cols;
    if (cols.x === null) return "A line chart needs a time column as x";
    if (cols.y.length === 0) return "A line chart needs a y column";
    const xi = cols.x;
    const si = this.spec.series ? columns.findIndex((c) => c.name === this.spec.series) : -1;
    const lines = new Map<string, Point[]>();
    const xs = new Set<number>();
    for (const row of rows) {
      const x = cellTime(row[xi]);
      if (x === null) continue;
      xs.add(x);
      const series = si < 0 ? null : formatCell(row[si], columns[si].type);
      cols.y.forEach((yi, j) => {
        const y = cellNumber(row[yi]);
        if (y === null) return;
        const yName = this.spec.y[j];
        const label = series === null ? yName : cols.y.length > 1 ? `${series} · ${yName}` : series;
        let points = lines.get(label);
        if (!points) lines.set(label, (points = []));
        points.push({ x, y });
      });
    }
    const sortedX = [...xs].sort((a, b) => a - b);
    const from = sortedX.length > MAX_X_VALUES ? sortedX[sortedX.length - MAX_X_VALUES] : -Infinity;
    setXRange(chart, Math.max(from, sortedX[0] ?? 0), sortedX[sortedX.length - 1]);
    chart.data.datasets = [...lines.entries()]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([label, points]) =>
        lineDataset(
          label,
          this.color(label),
          points.filter((p) => p.x >= from).sort((a, b) => a.x - b.x),
          false,
        ),
      );
    chart.update("none");
    return null;
  }

  private renderBar(columns: Column[], rows: Row[]): string | null {
    const chart = this.bar;
    if (!chart) return null;
    const cols = this.resolve(columns);
    if (typeof cols === "string") return cols;
    if (cols.y.length === 0) return "A bar chart needs a y column";
    const first = cols.y[0];
    const xi = cols.x;
    // Largest first; rows without a value go last.
    const top = rows
      .slice()
      .sort((a, b) => (cellNumber(b[first]) ?? -Infinity) - (cellNumber(a[first]) ?? -Infinity))
      .slice(0, this.spec.limit ?? DEFAULT_LIMIT);
    chart.data.labels = top.map((r, i) => (xi === null ? `#${i + 1}` : formatCell(r[xi], columns[xi].type)));
    chart.data.datasets = cols.y.map((yi, j) => ({
      label: this.spec.y[j],
      data: top.map((r) => cellNumber(r[yi])),
      backgroundColor: this.color(this.spec.y[j]),
      borderRadius: 3,
      maxBarThickness: 28,
    }));
    chart.update("none");
    return null;
  }

  private renderTable(columns: Column[], rows: Row[]): string | null {
    const cols = this.resolve(columns);
    if (typeof cols === "string") return cols;
    const xi = cols.x;
    const shown = (xi === null ? rows : rows.slice().sort((a, b) => compareCells(b[xi], a[xi], columns[xi].type))).slice(
      0,
      this.spec.limit ?? DEFAULT_LIMIT,
    );
    fill(
      this.body,
      el(
        "div",
        { class: "table-wrap fill" },
        el(
          "table",
          null,
          el("thead", null, el("tr", null, columns.map((c) => el("th", { class: isNumericType(c.type) ? "num" : null }, c.name)))),
          el(
            "tbody",
            null,
            shown.map((r) =>
              el(
                "tr",
                null,
                columns.map((c, i) =>
                  el("td", { class: isNumericType(c.type) ? "num" : null }, chartCell(r[i] ?? null, c.type)),
                ),
              ),
            ),
          ),
        ),
      ),
    );
    return null;
  }

  private renderNumber(columns: Column[], rows: Row[]): string | null {
    const cols = this.resolve(columns);
    if (typeof cols === "string") return cols;
    if (cols.y.length === 0) return "A number needs a y column";
    const xi = cols.x;
    // With x: the latest row's values. Without: the sum over all rows.
    let latest: Row | null = null;
    if (xi !== null) {
      for (const r of rows) if (!latest || compareCells(r[xi], latest[xi], columns[xi].type) > 0) latest = r;
    }
    fill(
      this.body,
      el(
        "div",
        { class: "numbers" },
        cols.y.map((yi, j) => {
          let value: number | null;
          if (xi === null) value = rows.reduce((sum, r) => sum + (cellNumber(r[yi]) ?? 0), 0);
          else value = latest ? cellNumber(latest[yi]) : null;
          return el(
            "div",
            { class: "number" },
            el("div", { class: "value", title: value === null ? null : String(value) }, value === null ? "–" : formatFigure(value)),
            el("div", { class: "label" }, this.spec.y[j]),
          );
        }),
      ),
    );
    return null;
  }
}

/** A table cell of a chart: like `formatCell`, numbers rounded for reading. */
function chartCell(v: Cell, type: string): string {
  const n = isNumericType(type) ? cellNumber(v) : null;
  return n === null ? formatCell(v, type) : formatFigure(n);
}

function barChart(canvas: HTMLCanvasElement, legend: boolean): Chart<"bar", (number | null)[], string> {
  return new Chart<"bar", (number | null)[], string>(canvas, {
    type: "bar",
    data: { labels: [], datasets: [] },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      // Horizontal bars: top-N labels are often long names.
      indexAxis: "y",
      scales: {
        x: valueAxis(formatCompact),
        y: { type: "category", grid: { display: false } },
      },
      plugins: {
        legend: { display: legend, position: "bottom", labels: { boxWidth: 10, boxHeight: 10 } },
        tooltip: {
          callbacks: { label: (item) => `${item.dataset.label ?? ""}: ${formatFigure(item.parsed.x ?? NaN)}` },
        },
      },
    },
  });
}
