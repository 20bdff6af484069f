// Dashboards: the saved list, and a dashboard's live charts with the form
// that adds one. A dashboard is saved whole (PUT) after every change.

import * as api from "../api";
import { act, attempt, setError } from "../banner";
import { ViewChart } from "../charts";
import { el, fill, pageHeader } from "../dom";
import { isNumericType, isTimeType } from "../format";
import type { Scope } from "../scope";
import { acquireView } from "../view_stream";

const dashboardHref = (id: string): string => `#/dashboards/${encodeURIComponent(id)}`;

/** The `<li>`s of a list of dashboards: a link and the chart count each. */
export function dashboardItems(ds: api.Dashboard[]): HTMLElement | HTMLElement[] {
  if (ds.length === 0) return el("li", { class: "muted" }, "No dashboards yet");
  return ds.map((d) =>
    el(
      "li",
      null,
      el("a", { href: dashboardHref(d.id), "data-dashboard": d.id }, d.name),
      el("span", { class: "muted" }, `${d.charts.length} chart${d.charts.length === 1 ? "" : "s"}`),
    ),
  );
}
const DEFAULT_LIMIT = 10;

export function list(root: HTMLElement, scope: Scope): void {
  const name = el("input", {
    type: "text",
    "data-testid": "dashboard-new-name",
    placeholder: "Shop live",
    required: true,
    "aria-label": "Dashboard name",
  });
  const items = el("ul", { class: "dashboard-list", "data-testid": "dashboard-list" });
  const create = async (ev: Event): Promise<void> => {
    ev.preventDefault();
    const d = await act("Creating the dashboard", api.createDashboard(name.value.trim()));
    if (d && scope.alive) location.hash = dashboardHref(d.id);
  };

  fill(
    root,
    pageHeader("Dashboards"),
    el(
      "section",
      { class: "card" },
      el(
        "form",
        { class: "inline-form", onsubmit: create },
        el("label", null, "New dashboard", name),
        el("button", { type: "submit", class: "primary", "data-testid": "dashboard-create" }, "Create"),
      ),
    ),
    el("section", { class: "card" }, el("h2", null, "Saved dashboards"), items),
  );

  scope.poll(async () => {
    const ds = await attempt("dashboards", "Loading dashboards", api.listDashboards());
    if (!ds || !scope.alive) return;
    fill(items, dashboardItems(ds));
  });
}

export function detail(root: HTMLElement, scope: Scope, id: string): void {
  const title = el("span", { "data-testid": "dashboard-title" }, id);
  const tabs = el("nav", { class: "tabs", "data-testid": "dashboard-list", "aria-label": "Dashboards" });
  const grid = el("div", { class: "chart-grid" });
  /** The dashboard as last saved or loaded. */
  let dashboard: api.Dashboard | null = null;
  /** Live charts by chart id, with the spec they were built from. */
  const widgets = new Map<string, { spec: string; chart: ViewChart }>();
  scope.onDispose(() => {
    for (const w of widgets.values()) w.chart.destroy();
  });

  /** Brings the page in line with `d`, keeping charts whose spec is unchanged. */
  const show = (d: api.Dashboard): void => {
    dashboard = d;
    title.textContent = d.name;
    const wanted = new Set(d.charts.map((c) => c.id));
    for (const [chartId, w] of widgets) {
      const spec = d.charts.find((c) => c.id === chartId);
      if (!wanted.has(chartId) || JSON.stringify(spec) !== w.spec) {
        w.chart.destroy();
        widgets.delete(chartId);
      }
    }
    for (const spec of d.charts) {
      if (widgets.has(spec.id)) continue;
      const remove = el(
        "button",
        { type: "button", class: "icon", "data-testid": "chart-delete", title: "Delete chart", onclick: () => removeChart(spec.id) },
        "Delete",
      );
      widgets.set(spec.id, { spec: JSON.stringify(spec), chart: new ViewChart(spec, remove) });
    }
    fill(
      grid,
      d.charts.length === 0
        ? el("p", { class: "muted empty-grid" }, "No charts yet: add one below.")
        : d.charts.map((c) => widgets.get(c.id)!.chart.root),
    );
  };

  const save = async (next: api.Dashboard): Promise<boolean> => {
    const saved = await act("Saving the dashboard", api.saveDashboard(next));
    if (!saved || !scope.alive) return false;
    show(saved);
    return true;
  };
  const removeChart = async (chartId: string): Promise<void> => {
    if (dashboard) await save({ ...dashboard, charts: dashboard.charts.filter((c) => c.id !== chartId) });
  };
  const removeDashboard = async (): Promise<void> => {
    if (await act("Deleting the dashboard", api.deleteDashboard(id))) location.hash = "#/dashboards";
  };

  const form = chartForm(scope, async (spec) => (dashboard ? save({ ...dashboard, charts: [...dashboard.charts, spec] }) : false));

  fill(
    root,
    tabs,
    pageHeader(
      [el("a", { href: "#/dashboards", class: "crumb" }, "Dashboards"), " / ", title],
      el(
        "button",
        { type: "button", onclick: () => form.scrollIntoView({ behavior: "smooth", block: "start" }) },
        "Add chart",
      ),
      el("button", { type: "button", class: "danger", "data-testid": "dashboard-delete", onclick: removeDashboard }, "Delete dashboard"),
    ),
    grid,
    form,
  );

  scope.poll(async () => {
    const [d, all] = await Promise.all([
      attempt("dashboard", `Loading dashboard ${id}`, api.getDashboard(id)),
      attempt("dashboards", "Loading dashboards", api.listDashboards()),
    ]);
    if (!scope.alive) return;
    // Someone else (another tab) may have changed it.
    if (d && JSON.stringify(d) !== JSON.stringify(dashboard)) show(d);
    if (all) {
      fill(
        tabs,
        all.map((x) =>
          el("a", { href: dashboardHref(x.id), "data-dashboard": x.id, class: x.id === id ? "active" : null }, x.name),
        ),
      );
    }
  });
}

const random = (): string =>
  Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0")).join("");

/**
 * The "add chart" form. Column pickers fill from the chosen view's columns,
 * read from the snapshot its change stream starts with (the same format
 * the charts read). `add` saves; true means it did.
 */
function chartForm(scope: Scope, add: (spec: api.ChartSpec) => Promise<boolean>): HTMLElement {
  const title = el("input", { type: "text", "data-testid": "chart-title", placeholder: "Revenue per minute", "aria-label": "Title" });
  const view: HTMLSelectElement = el("select", {
    "data-testid": "chart-view",
    "aria-label": "View",
    onchange: () => watch(view.value),
  });
  const type = el(
    "select",
    { "data-testid": "chart-type", "aria-label": "Type", onchange: () => typeChanged() },
    el("option", { value: "line" }, "Line (time series)"),
    el("option", { value: "bar" }, "Bar (top N)"),
    el("option", { value: "table" }, "Table"),
    el("option", { value: "number" }, "Number"),
  );
  const x = el("select", { "data-testid": "chart-x", "aria-label": "x", onchange: () => (xAuto = false) });
  const y = el("select", { "data-testid": "chart-y", "aria-label": "y", multiple: true, size: 3 });
  const series = el("select", { "data-testid": "chart-series", "aria-label": "Series" });
  const limit = el("input", { type: "number", min: 1, value: String(DEFAULT_LIMIT), "data-testid": "chart-limit", "aria-label": "Limit" });
  const addButton = el("button", { type: "button", class: "primary", "data-testid": "chart-add", onclick: () => submit() }, "Add chart");

  const field = (label: string, control: HTMLElement, hint = ""): HTMLLabelElement =>
    el("label", { class: "field", title: hint || null }, label, control);
  const fields = {
    x: field("x", x, "Line: the time column. Bar: the label column. Table and number: sort by it (optional)."),
    y: field("y", y, "Numeric columns to plot (Ctrl/Cmd-click for several)."),
    series: field("Series", series, "Line only: one line per distinct value of this column."),
    limit: field("Limit", limit, "Bar and table: how many rows."),
  };

  /** The view whose columns the pickers show, and those columns. */
  let watched = "";
  let columns: api.Column[] = [];
  /** Stops waiting for a view's columns, if we still are. */
  let stopWatching = (): void => undefined;
  /** Whether x still holds our default rather than the user's pick. */
  let xAuto = true;

  const defaultX = (): string => {
    const t = type.value;
    if (t === "line") {
      const times = columns.filter((c) => isTimeType(c.type));
      return (times.find((c) => /end$/i.test(c.name)) ?? times[0])?.name ?? "";
    }
    if (t === "bar") return columns.find((c) => !isNumericType(c.type) && !isTimeType(c.type))?.name ?? "";
    return "";
  };

  /** Fills the pickers with `columns`, keeping picks that still exist. */
  const fillColumns = (): void => {
    const keep = { x: x.value, y: [...y.selectedOptions].map((o) => o.value), series: series.value };
    const option = (c: api.Column): HTMLOptionElement => el("option", { value: c.name }, `${c.name} · ${c.type}`);
    fill(x, el("option", { value: "" }, "(none)"), columns.map(option));
    fill(y, columns.filter((c) => isNumericType(c.type)).map(option));
    fill(series, el("option", { value: "" }, "(none)"), columns.map(option));
    const has = (name: string): boolean => columns.some((c) => c.name === name);
    x.value = !xAuto && has(keep.x) ? keep.x : defaultX();
    const ys = keep.y.filter(has);
    for (const [i, o] of [...y.options].entries()) o.selected = ys.length > 0 ? ys.includes(o.value) : i === 0;
    series.value = has(keep.series) ? keep.series : "";
  };

  const typeChanged = (): void => {
    if (xAuto) x.value = defaultX();
    const t = type.value;
    fields.y.classList.toggle("unused", t === "table");
    fields.series.classList.toggle("unused", t !== "line");
    fields.limit.classList.toggle("unused", t !== "bar" && t !== "table");
  };

  /**
   * Fills the pickers with the columns of view `name` (none for ""). The
   * stream is let go once its snapshot came: each open stream holds one of
   * the browser's few connections to the server.
   */
  const watch = (name: string): void => {
    if (name === watched && columns.length > 0) return;
    watched = name;
    stopWatching();
    columns = [];
    xAuto = true;
    fillColumns();
    if (!name) return;
    const s = acquireView(name);
    const got = (): boolean => {
      if (!s.columns) return false;
      columns = s.columns;
      fillColumns();
      return true;
    };
    if (got()) {
      s.release();
      return;
    }
    const unsubscribe = s.subscribe(() => {
      if (got()) stopWatching();
    });
    stopWatching = () => {
      unsubscribe();
      s.release();
      stopWatching = () => undefined;
    };
  };
  scope.onDispose(() => stopWatching());

  const submit = async (): Promise<void> => {
    const t = type.value as api.ChartType;
    const ys = [...y.selectedOptions].map((o) => o.value);
    const problem = !view.value
      ? "Pick a view"
      : t === "line" && !x.value
        ? "A line chart needs a time column as x"
        : t !== "table" && ys.length === 0
          ? "Pick at least one y column"
          : null;
    if (problem) {
      setError("action", `Adding the chart: ${problem}`);
      return;
    }
    const spec: api.ChartSpec = {
      id: random(),
      title: title.value.trim() || view.value,
      view: view.value,
      type: t,
      x: x.value || null,
      y: ys,
      series: t === "line" && series.value ? series.value : null,
      limit: t === "bar" || t === "table" ? Math.max(1, Number(limit.value) || DEFAULT_LIMIT) : null,
    };
    addButton.disabled = true;
    const added = await add(spec);
    addButton.disabled = false;
    if (added) title.value = "";
  };

  void (async () => {
    const views = await attempt("views", "Loading views", api.listViews());
    if (!views || !scope.alive) return;
    fill(view, views.length === 0 ? el("option", { value: "" }, "No views yet") : views.map((v) => el("option", { value: v }, v)));
    watch(view.value);
  })();
  typeChanged();

  return el(
    "section",
    { class: "card chart-form" },
    el("h2", null, "Add chart"),
    el(
      "div",
      { class: "form-grid" },
      field("Title", title),
      field("View", view),
      field("Type", type),
      fields.x,
      fields.y,
      fields.series,
      fields.limit,
      el("div", { class: "field-button" }, addButton),
    ),
  );
}
