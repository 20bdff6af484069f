// Pipelines (the continuous queries behind views and sinks): the list, and a
// pipeline's page with its dataflow graph, progress, checkpoint and controls.

import * as api from "../api";
import { act, attempt } from "../banner";
import { badge, badgeClass, card, dataTable, el, emptyRow, facts, fill, pageHeader, svg, td } from "../dom";
import { formatAge, formatBytes, formatCompact, formatDateTime, formatDuration, formatInt, formatRate } from "../format";
import type { Scope } from "../scope";

const pipelineHref = (name: string): string => `#/pipelines/${encodeURIComponent(name)}`;

const watermarkText = (w: string | null): string => (w === null ? "–" : formatDateTime(Date.parse(w)));
const checkpointAge = (c: api.Checkpoint | null): string => (c === null ? "never" : formatAge(c.taken_at_ms));

export function list(root: HTMLElement, scope: Scope): void {
  const body = el("tbody");
  fill(
    root,
    pageHeader("Pipelines"),
    card(
      null,
      dataTable(
        "pipelines-table",
        [
          { label: "Name" },
          { label: "Status" },
          { label: "Source" },
          { label: "Events in/s", num: true },
          { label: "Rows out/s", num: true },
          { label: "Watermark" },
          { label: "Late events", num: true },
          { label: "Bad records", num: true },
          { label: "State", num: true },
          { label: "Last checkpoint" },
        ],
        body,
      ),
    ),
  );
  scope.poll(async () => {
    const pipelines = await attempt("pipelines", "Loading pipelines", api.listPipelines());
    if (!pipelines || !scope.alive) return;
    fill(
      body,
      pipelines.length === 0
        ? emptyRow(10, "No pipelines yet: create a materialized view or a sink in SQL")
        : pipelines.map((p) =>
            el(
              "tr",
              { "data-pipeline": p.name, class: "clickable", onclick: () => (location.hash = pipelineHref(p.name)) },
              td(el("a", { href: pipelineHref(p.name) }, p.name)),
              td([badge(p.status), p.last_error ? el("span", { class: "error-dot", title: p.last_error }, "!") : null]),
              td(p.source),
              td(formatRate(p.events_in_per_sec), true),
              td(formatRate(p.rows_out_per_sec), true),
              td(el("span", { class: "nowrap" }, watermarkText(p.watermark))),
              td(formatInt(p.late_events), true),
              td(formatInt(p.bad_records), true),
              td(formatBytes(p.state_bytes), true),
              td(checkpointAge(p.last_checkpoint)),
            ),
          ),
    );
  });
}

/** What the SQL catalog says about the objects around a pipeline. */
interface Catalog {
  views: string[];
  /** Sink name → the view (or source) it reads, and its connector. */
  sinks: { name: string; from: string; connector: string }[];
  /** Source name → its topic. */
  topics: Map<string, string>;
}

/** Reads the catalog through SHOW statements, by column name, ignoring any other columns. */
async function loadCatalog(): Promise<Catalog> {
  const [views, sinks, sources] = await Promise.all([
    api.listViews(),
    api.sqlObjects("SHOW SINKS"),
    api.sqlObjects("SHOW SOURCES"),
  ]);
  return {
    views,
    sinks: sinks.map((s) => ({
      name: String(s.name),
      from: String(s.from ?? s.view ?? ""),
      connector: String(s.connector ?? "topic"),
    })),
    topics: new Map(sources.filter((s) => s.topic != null).map((s) => [String(s.name), String(s.topic)])),
  };
}

export function detail(root: HTMLElement, scope: Scope, name: string): void {
  const status = el("span", { "data-testid": "pipeline-status", class: "badge" });
  const errorBox = el("div", { class: "slot" });
  const summary = el("div", { class: "slot" });
  const graph = el("div", { class: "graph-wrap" });
  const sqlText = el("pre", { class: "sql-text" });
  const partitionsBody = el("tbody");
  const checkpoint = el("div");
  let catalog: Catalog | null = null;

  const stop = el("button", { type: "button", "data-testid": "pipeline-stop" }, "Stop");
  const start = el("button", { type: "button", "data-testid": "pipeline-start" }, "Start");
  const drop = el("button", { type: "button", class: "danger", "data-testid": "pipeline-drop" }, "Drop");
  const buttons = [stop, start, drop];

  const show = (p: api.Pipeline): void => {
    status.textContent = p.status;
    status.className = badgeClass(p.status);
    // Offer what makes sense now, but never lock both: unknown statuses
    // ("paused", "failed") may need either.
    stop.disabled = p.status === "stopped";
    start.disabled = p.status === "running";
    fill(
      errorBox,
      p.last_error ? el("div", { class: "last-error", role: "alert" }, el("b", null, "Last error"), el("pre", null, p.last_error)) : null,
    );
    fill(
      summary,
      facts([
        ["Events in", `${formatInt(p.events_in)} · ${formatRate(p.events_in_per_sec)}`],
        ["Rows out", `${formatInt(p.rows_out)} · ${formatRate(p.rows_out_per_sec)}`],
        ["Watermark", watermarkText(p.watermark)],
        ["Late events", formatInt(p.late_events)],
        ["Bad records", formatInt(p.bad_records)],
        ["Allowed lateness", formatDuration(p.allowed_lateness_ms)],
        ["Open windows", formatInt(p.open_windows)],
        ["Parallelism", formatInt(p.parallelism)],
        ["State", formatBytes(p.state_bytes)],
        ["View rows", formatInt(p.view_rows)],
      ]),
    );
    if (catalog) fill(graph, dataflowGraph(p, catalog));
    sqlText.textContent = p.sql;
    fill(
      partitionsBody,
      p.partitions.length === 0
        ? emptyRow(6, "No partitions assigned")
        : p.partitions.map((q) => {
            const lag = Math.max(0, q.end_offset - q.offset);
            const done = q.end_offset === 0 ? 1 : Math.min(1, q.offset / q.end_offset);
            return el(
              "tr",
              null,
              td(q.partition, true),
              td(formatInt(q.offset), true),
              td(formatInt(q.end_offset), true),
              td(formatInt(lag), true),
              td(el("div", { class: "progress", title: `${(done * 100).toFixed(1)} %` }, el("div", { style: `width:${done * 100}%` }))),
              td(q.idle ? "idle" : "active"),
            );
          }),
    );
    const c = p.last_checkpoint;
    fill(
      checkpoint,
      c === null
        ? el("p", { class: "muted" }, "No checkpoint yet")
        : facts([
            ["Epoch", formatInt(c.epoch)],
            ["Taken", `${formatDateTime(c.taken_at_ms)} (${formatAge(c.taken_at_ms)})`],
            ["Duration", formatDuration(c.duration_ms)],
            ["Size", formatBytes(c.bytes)],
          ]),
    );
  };

  /** Runs a button's request with the buttons locked, then shows its result. */
  const control = async (what: string, request: () => Promise<api.Pipeline>): Promise<void> => {
    for (const b of buttons) b.disabled = true;
    const p = await act(what, request());
    if (!scope.alive) return;
    drop.disabled = false;
    if (p) show(p);
    refresh();
  };
  stop.addEventListener("click", () => void control("Stopping the pipeline", () => api.stopPipeline(name)));
  start.addEventListener("click", () => void control("Starting the pipeline", () => api.startPipeline(name)));
  drop.addEventListener("click", () => void dropPipeline(name));

  fill(
    root,
    el(
      "div",
      { class: "stack", "data-testid": "pipeline-detail" },
      pageHeader([el("a", { href: "#/pipelines", class: "crumb" }, "Pipelines"), " / ", name, " ", status], buttons),
      errorBox,
      summary,
      card("Dataflow", graph),
      el(
        "div",
        { class: "grid-2" },
        card(
          "Source partitions",
          dataTable(
            "pipeline-partitions-table",
            [
              { label: "Partition", num: true },
              { label: "Offset", num: true },
              { label: "End offset", num: true },
              { label: "Behind", num: true },
              { label: "Progress" },
              { label: "" },
            ],
            partitionsBody,
          ),
        ),
        card("Last checkpoint", checkpoint),
      ),
      card("SQL", sqlText),
    ),
  );

  const refresh = scope.poll(async () => {
    const [pipelines, cat] = await Promise.all([
      attempt("pipelines", "Loading pipelines", api.listPipelines()),
      attempt("catalog", "Reading the catalog", loadCatalog()),
    ]);
    if (!scope.alive) return;
    if (cat) catalog = cat;
    if (!pipelines) return;
    const p = pipelines.find((q) => q.name === name);
    if (p) show(p);
    else {
      status.textContent = "not found";
      fill(errorBox, el("div", { class: "last-error" }, `There is no pipeline named ${name}.`));
    }
  });
}

/**
 * What a sink promises across crashes: topic sinks commit one transaction per
 * checkpoint, Parquet sinks rename staged files in at a checkpoint, Delta sinks
 * make one idempotent commit per checkpoint.
 */
function sinkGuarantee(connector: string): string {
  return ["topic", "parquet", "delta"].includes(connector) ? "exactly once" : "at least once";
}

/** Drops the view or sink behind a pipeline, whichever the name is. */
async function dropPipeline(name: string): Promise<void> {
  if (!confirm(`Drop ${name}? Its pipeline stops and its state and checkpoints are deleted.`)) return;
  const views = await act("Reading the catalog", api.listViews());
  if (!views) return;
  const kind = views.includes(name) ? "MATERIALIZED VIEW" : "SINK";
  if (await act(`Dropping ${name}`, api.runSql(`DROP ${kind} ${api.quoteIdent(name)}`))) {
    location.hash = "#/pipelines";
  }
}

// The dataflow graph: boxes left to right, sinks stacked in the last column.

const BOX_W = 150;
const BOX_H = 64;
const GAP_X = 90;
const GAP_Y = 16;
const PAD = 12;
/** Characters that fit on a box's title line and detail line at the font sizes of app.css. */
const TITLE_CHARS = 15;
const DETAIL_CHARS = 21;
/** A wide graph shrinks to fit its card, down to this scale; then it scrolls. */
const MIN_SCALE = 0.7;

interface GraphNode {
  kind: "topic" | "source" | "operator" | "view" | "sink";
  title: string;
  /** A second line, for operators. */
  detail?: string;
  /** Full text, shown as a tooltip. */
  full: string;
  href?: string;
}

function operatorNode(op: string): GraphNode {
  // "WindowAggregate: tumble(...)" or "filter amount > 10": a name, then details.
  const m = /^([^:\s]+):?\s*(.*)$/s.exec(op.trim());
  return { kind: "operator", title: m?.[1] ?? op, detail: m?.[2] ?? "", full: op };
}

/** Several inputs (a join, a union): boxes in columns by depth, edges from each input. */
function dagGraph(p: api.Pipeline, catalog: Catalog): SVGSVGElement {
  const nodes: GraphNode[] = p.graph.map((n) => {
    if (n.kind === "source") {
      const topic = catalog.topics.get(n.name);
      return {
        kind: "source",
        title: n.name,
        full: topic === undefined ? `source ${n.name}` : `source ${n.name} (topic ${topic})`,
        href: topic === undefined ? undefined : `#/topics/${encodeURIComponent(topic)}`,
      };
    }
    return operatorNode(n.label);
  });
  const inputs: number[][] = p.graph.map((n) => n.inputs);
  const isView = catalog.views.includes(p.name);
  nodes.push({ kind: isView ? "view" : "sink", title: p.name, full: p.name });
  inputs.push(p.graph.length > 0 ? [p.graph.length - 1] : []);
  const sinkNodes: GraphNode[] = isView
    ? catalog.sinks
        .filter((s) => s.from === p.name)
        .map((s) => ({ kind: "sink", title: s.name, full: `sink ${s.name}: ${s.connector}, ${sinkGuarantee(s.connector)}` }))
    : [];
  const viewIndex = nodes.length - 1;
  for (const sink of sinkNodes) {
    nodes.push(sink);
    inputs.push([viewIndex]);
  }
  // Column = longest path from a source; rows in order of appearance.
  const depth: number[] = [];
  inputs.forEach((from, i) => {
    depth[i] = from.length === 0 ? 0 : Math.max(...from.map((j) => depth[j] ?? 0)) + 1;
  });
  const rowOf: number[] = [];
  const perColumn = new Map<number, number>();
  depth.forEach((d, i) => {
    rowOf[i] = perColumn.get(d) ?? 0;
    perColumn.set(d, rowOf[i] + 1);
  });
  const columns = Math.max(...depth) + 1;
  const rows = Math.max(...perColumn.values());
  const width = PAD * 2 + columns * BOX_W + (columns - 1) * GAP_X;
  const height = PAD * 2 + rows * BOX_H + (rows - 1) * GAP_Y;
  const x = (i: number): number => PAD + depth[i] * (BOX_W + GAP_X);
  const y = (i: number): number => PAD + rowOf[i] * (BOX_H + GAP_Y);
  const parts: SVGElement[] = [arrowDefs()];
  inputs.forEach((from, i) => {
    for (const j of from) {
      parts.push(edge(x(j) + BOX_W, y(j) + BOX_H / 2, x(i), y(i) + BOX_H / 2, ""));
    }
  });
  nodes.forEach((node, i) => parts.push(box(node, x(i), y(i))));
  return graphSvg(p, width, height, parts);
}

function dataflowGraph(p: api.Pipeline, catalog: Catalog): SVGSVGElement {
  if ((p.graph ?? []).some((n) => n.inputs.length > 1)) {
    return dagGraph(p, catalog);
  }
  const chain: GraphNode[] = [];
  const topic = catalog.topics.get(p.source);
  if (topic !== undefined) {
    chain.push({ kind: "topic", title: topic, full: `topic ${topic}`, href: `#/topics/${encodeURIComponent(topic)}` });
  }
  chain.push({ kind: "source", title: p.source, full: `source ${p.source}` });
  chain.push(...p.operators.map(operatorNode));
  const isView = catalog.views.includes(p.name);
  // A sink reading a source directly is its own pipeline and ends the chain.
  chain.push({ kind: isView ? "view" : "sink", title: p.name, full: p.name });
  const sinks: GraphNode[] = isView
    ? catalog.sinks
        .filter((s) => s.from === p.name)
        .map((s) => ({ kind: "sink", title: s.name, full: `sink ${s.name}: ${s.connector}, ${sinkGuarantee(s.connector)}` }))
    : [];

  const rows = Math.max(1, sinks.length);
  const height = PAD * 2 + rows * BOX_H + (rows - 1) * GAP_Y;
  const columns = chain.length + (sinks.length > 0 ? 1 : 0);
  const width = PAD * 2 + columns * BOX_W + (columns - 1) * GAP_X;
  const midY = height / 2;
  const colX = (i: number): number => PAD + i * (BOX_W + GAP_X);

  const events = `${formatCompact(p.events_in_per_sec)} events/s`;
  const rowsOut = `${formatCompact(p.rows_out_per_sec)} rows/s`;
  const parts: SVGElement[] = [arrowDefs()];
  chain.forEach((node, i) => {
    if (i > 0) {
      // Until the last box everything carries input events; into the view, output rows.
      parts.push(edge(colX(i - 1) + BOX_W, midY, colX(i), midY, i === chain.length - 1 ? rowsOut : events));
    }
    parts.push(box(node, colX(i), midY - BOX_H / 2));
  });
  sinks.forEach((node, j) => {
    const y = PAD + j * (BOX_H + GAP_Y);
    parts.push(edge(colX(chain.length - 1) + BOX_W, midY, colX(chain.length), y + BOX_H / 2, rowsOut));
    parts.push(box(node, colX(chain.length), y));
  });
  return graphSvg(p, width, height, parts);
}

/** The arrow head every edge ends in. */
function arrowDefs(): SVGElement {
  return svg(
    "defs",
    null,
    svg(
      "marker",
      { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow-head" }),
    ),
  );
}

function graphSvg(p: api.Pipeline, width: number, height: number, parts: SVGElement[]): SVGSVGElement {
  return svg(
    "svg",
    {
      "data-testid": "pipeline-graph",
      class: "dataflow",
      style: `max-width:${width}px;min-width:${Math.round(width * MIN_SCALE)}px`,
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-label": `Dataflow of ${p.name}`,
    },
    parts,
  ) as SVGSVGElement;
}

const cut = (s: string, n: number): string => (s.length > n ? `${s.slice(0, n - 1)}…` : s);

function box(node: GraphNode, x: number, y: number): SVGElement {
  const g = svg(
    "g",
    { class: `node node-${node.kind}`, transform: `translate(${x} ${y})` },
    svg("title", null, node.full),
    svg("rect", { width: BOX_W, height: BOX_H, rx: 8 }),
    svg("text", { x: 12, y: 20, class: "node-kind" }, node.kind),
    svg("text", { x: 12, y: 38, class: "node-title" }, cut(node.title, TITLE_CHARS)),
    node.detail
      ? svg("text", { x: 12, y: 54, class: "node-detail" }, cut(node.detail, DETAIL_CHARS))
      : null,
  );
  return node.href ? svg("a", { href: node.href }, g) : g;
}

function edge(x1: number, y1: number, x2: number, y2: number, label: string): SVGElement {
  const mx = (x1 + x2) / 2;
  const d = y1 === y2 ? `M ${x1} ${y1} L ${x2 - 2} ${y2}` : `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2 - 2} ${y2}`;
  return svg(
    "g",
    { class: "edge" },
    svg("path", { d, "marker-end": "url(#arrow)" }),
    svg("text", { x: mx, y: (y1 + y2) / 2 - 7, "text-anchor": "middle", class: "edge-label" }, label),
  );
}
