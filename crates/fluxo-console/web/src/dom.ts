// Tiny element helpers. Text always goes in as text nodes (or textContent):
// record keys, values and SQL results are untrusted, so no innerHTML here.

import { reportUnexpected } from "./banner";

export type Child = Node | string | number | null | undefined | false | Child[];

type Handler = (ev: never) => unknown;
type AttrValue = string | number | boolean | null | undefined | Handler;
export type Attrs = Record<string, AttrValue>;

/** Properties set as such rather than as attributes (live form state). */
const PROPS = new Set(["value", "checked", "disabled", "multiple", "required"]);

/** Wraps an event handler so a throw or rejection shows in the banner. */
function safe(fn: Handler): (ev: Event) => void {
  return (ev) => {
    try {
      const r = (fn as (ev: Event) => unknown)(ev);
      if (r instanceof Promise) r.catch(reportUnexpected);
    } catch (e) {
      reportUnexpected(e);
    }
  };
}

function apply(node: Element, attrs: Attrs | null | undefined): void {
  if (!attrs) return;
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (typeof v === "function") {
      node.addEventListener(k.slice(2), safe(v));
    } else if (PROPS.has(k)) {
      (node as unknown as Record<string, unknown>)[k] = v;
    } else if (k === "class") {
      node.setAttribute("class", String(v));
    } else {
      node.setAttribute(k, v === true ? "" : String(v));
    }
  }
}

function flatten(children: Child[], out: (Node | string)[] = []): (Node | string)[] {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) flatten(c, out);
    else out.push(typeof c === "number" ? String(c) : c);
  }
  return out;
}

/**
 * `el("a", { href: "#/x", onclick: fn }, "text", child)`. Attributes named
 * `on...` with a function value become event listeners.
 */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs?: Attrs | null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  // Children first: a <select>'s value can only be set once its options exist.
  node.append(...flatten(children));
  apply(node, attrs);
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs?: Attrs | null,
  ...children: Child[]
): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG_NS, tag);
  node.append(...flatten(children));
  apply(node, attrs);
  return node;
}

/** Replaces all children of `node`. */
export function fill(node: Element, ...children: Child[]): void {
  node.replaceChildren(...flatten(children));
}

export interface TableColumn {
  label: Child;
  /** Right-aligned (numbers). */
  num?: boolean;
}

/** A table inside a scrolling box whose header row stays in view. */
export function dataTable(
  testid: string | null,
  columns: TableColumn[],
  body: HTMLTableSectionElement,
): HTMLElement {
  return el(
    "div",
    { class: "table-wrap" },
    el(
      "table",
      { "data-testid": testid },
      el("thead", null, el("tr", null, columns.map((c) => el("th", { class: c.num ? "num" : null }, c.label)))),
      body,
    ),
  );
}

/** A row that says a table is empty, spanning all `span` columns. */
export const emptyRow = (span: number, text: string): HTMLTableRowElement =>
  el("tr", { class: "empty" }, el("td", { colspan: span }, text));

export const td = (content: Child, num = false): HTMLTableCellElement =>
  el("td", { class: num ? "num" : null }, content);

/** Page header: a title (with optional breadcrumb) and action buttons. */
export function pageHeader(title: Child, ...actions: Child[]): HTMLElement {
  return el("header", { class: "page-header" }, el("h1", null, title), el("div", { class: "actions" }, actions));
}

export function card(title: Child, ...body: Child[]): HTMLElement {
  return el("section", { class: "card" }, title ? el("h2", null, title) : null, body);
}

/** The classes of a badge for a status word ("running", "Stable"...), coloured by its meaning. */
export function badgeClass(status: string): string {
  const s = status.toLowerCase();
  const tone = /running|stable|ok/.test(s)
    ? "good"
    : /fail|error|dead/.test(s)
      ? "bad"
      : /stop|empty|paused/.test(s)
        ? "idle"
        : "warn";
  return `badge ${tone}`;
}

export const badge = (status: string): HTMLElement => el("span", { class: badgeClass(status) }, status);

/** A label/value pair list, for summaries. */
export function facts(pairs: [string, Child][]): HTMLElement {
  return el(
    "dl",
    { class: "facts" },
    pairs.map(([k, v]) => el("div", null, el("dt", null, k), el("dd", null, v))),
  );
}
