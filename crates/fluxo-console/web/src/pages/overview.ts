// Overview: counters, live throughput charts over the last five minutes, the
// pipelines at a glance and links to the dashboards.

import * as api from "../api";
import { attempt } from "../banner";
import { TimeSeriesChart, type TimePoint } from "../charts";
import { badge, card, dataTable, el, emptyRow, fill, pageHeader, td } from "../dom";
import { formatByteRate, formatBytes, formatInt, formatRate } from "../format";
import type { Scope } from "../scope";
import { dashboardItems } from "./dashboards";
import { openEvents } from "../sse";

const WINDOW_MS = 5 * 60 * 1000;

const CARDS: { key: keyof api.Counters; testid: string; label: string; format: (n: number) => string }[] = [
  { key: "topics", testid: "card-topics", label: "Topics", format: formatInt },
  { key: "partitions", testid: "card-partitions", label: "Partitions", format: formatInt },
  { key: "log_bytes", testid: "card-log-size", label: "Log size", format: formatBytes },
  { key: "connections", testid: "card-connections", label: "Connections", format: formatInt },
  { key: "groups", testid: "card-groups", label: "Groups", format: formatInt },
  { key: "pipelines", testid: "card-pipelines", label: "Pipelines", format: formatInt },
];

const recordsPoint = (s: api.Sample): TimePoint => ({
  t: s.t,
  values: [s.records_in_per_sec, s.records_out_per_sec],
});
const bytesPoint = (s: api.Sample): TimePoint => ({ t: s.t, values: [s.bytes_in_per_sec, s.bytes_out_per_sec] });

export function page(root: HTMLElement, scope: Scope): void {
  const values = new Map<keyof api.Counters, HTMLElement>();
  const cards = el(
    "div",
    { class: "stat-cards" },
    CARDS.map((c) => {
      const value = el("div", { class: "stat-value" }, "–");
      values.set(c.key, value);
      return el("div", { class: "stat", "data-testid": c.testid }, el("div", { class: "stat-label" }, c.label), value);
    }),
  );
  const showCounters = (o: api.Counters): void => {
    for (const c of CARDS) values.get(c.key)!.textContent = c.format(o[c.key]);
  };

  const records = new TimeSeriesChart({
    id: "records",
    title: "Records per second",
    labels: ["in", "out"],
    format: formatRate,
    windowMs: WINDOW_MS,
  });
  const bytes = new TimeSeriesChart({
    id: "bytes",
    title: "Bytes per second",
    labels: ["in", "out"],
    format: formatByteRate,
    windowMs: WINDOW_MS,
  });
  scope.onDispose(() => {
    records.destroy();
    bytes.destroy();
  });

  const pipelinesBody = el("tbody");
  const dashboardsList = el("ul", { class: "link-list", "data-testid": "overview-dashboards" });

  fill(
    root,
    pageHeader("Overview"),
    cards,
    el("div", { class: "grid-2" }, records.root, bytes.root),
    el(
      "div",
      { class: "grid-2" },
      card(
        el("a", { href: "#/pipelines" }, "Pipelines"),
        dataTable(
          "overview-pipelines",
          [{ label: "Name" }, { label: "Status" }, { label: "Events in/s", num: true }, { label: "Rows out/s", num: true }],
          pipelinesBody,
        ),
      ),
      card(el("a", { href: "#/dashboards" }, "Dashboards"), dashboardsList),
    ),
  );

  // History first, then the live stream; samples the history already has
  // are skipped by the charts.
  void (async () => {
    const o = await attempt("overview", "Loading the overview", api.getOverview());
    if (!scope.alive) return;
    if (o) {
      showCounters(o);
      records.replace(o.history.map(recordsPoint));
      bytes.replace(o.history.map(bytesPoint));
    }
    scope.onDispose(
      openEvents(api.overviewLiveUrl, "Live overview", {
        sample: (data) => {
          const s = data as api.LiveSample;
          showCounters(s);
          records.append(recordsPoint(s));
          bytes.append(bytesPoint(s));
        },
      }),
    );
  })();

  scope.poll(async () => {
    const [ps, ds] = await Promise.all([
      attempt("overview-pipelines", "Loading pipelines", api.listPipelines()),
      attempt("overview-dashboards", "Loading dashboards", api.listDashboards()),
    ]);
    if (!scope.alive) return;
    if (ps) {
      fill(
        pipelinesBody,
        ps.length === 0
          ? emptyRow(4, "No pipelines yet: create a materialized view in SQL")
          : ps.map((p) =>
              el(
                "tr",
                null,
                td(el("a", { href: `#/pipelines/${encodeURIComponent(p.name)}` }, p.name)),
                td(badge(p.status)),
                td(formatRate(p.events_in_per_sec), true),
                td(formatRate(p.rows_out_per_sec), true),
              ),
            ),
      );
    }
    if (ds) fill(dashboardsList, dashboardItems(ds));
  });
}
