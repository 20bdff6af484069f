// Entry point: the layout (sidebar + main area), the hash router and the
// page lifecycle. Each route renders into a fresh container with a fresh
// Scope; navigating disposes the old scope so nothing keeps running.

import { attachBanner, clearAllErrors, reportUnexpected } from "./banner";
import { el, fill } from "./dom";
import * as dashboards from "./pages/dashboards";
import * as groups from "./pages/groups";
import * as overview from "./pages/overview";
import * as pipelines from "./pages/pipelines";
import * as sql from "./pages/sql";
import * as topics from "./pages/topics";
import { Scope } from "./scope";

/** Renders a page into `root`; `param` is the decoded second path segment. */
export type Page = (root: HTMLElement, scope: Scope, param: string) => void;

interface Section {
  label: string;
  list: Page;
  detail?: Page;
}

const SECTIONS: Record<string, Section> = {
  overview: { label: "Overview", list: overview.page },
  topics: { label: "Topics", list: topics.list, detail: topics.detail },
  groups: { label: "Groups", list: groups.list, detail: groups.detail },
  pipelines: { label: "Pipelines", list: pipelines.list, detail: pipelines.detail },
  sql: { label: "SQL", list: sql.page },
  dashboards: { label: "Dashboards", list: dashboards.list, detail: dashboards.detail },
};

const navLinks = Object.entries(SECTIONS).map(([key, s]) =>
  el("a", { href: `#/${key}`, "data-nav": key, class: "nav-link" }, s.label),
);
const bannerSlot = el("div", { class: "banner-slot" });
const pageSlot = el("div", { class: "page" });

fill(
  document.getElementById("app") ?? document.body,
  el(
    "div",
    { class: "layout" },
    el(
      "aside",
      { class: "sidebar" },
      el("a", { class: "logo", href: "#/overview" }, "fluxo"),
      el("nav", { class: "nav", "aria-label": "Sections" }, navLinks),
    ),
    el("main", { class: "main" }, bannerSlot, pageSlot),
  ),
);
attachBanner(bannerSlot);

let scope: Scope | null = null;

function route(): void {
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  const key = parts[0] || "overview";
  const section = SECTIONS[key];
  if (!section) {
    location.replace("#/overview");
    return;
  }
  // Names are percent-encoded in links so ids with "/" survive.
  let param = "";
  try {
    param = parts.slice(1).map(decodeURIComponent).join("/");
  } catch {
    param = parts.slice(1).join("/");
  }

  scope?.dispose();
  clearAllErrors();
  scope = new Scope();
  for (const a of navLinks) {
    const active = a.dataset.nav === key;
    a.classList.toggle("active", active);
    if (active) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = param ? `${param} · ${section.label} · fluxo` : `${section.label} · fluxo`;

  const root = el("div", { class: "page-content" });
  fill(pageSlot, root);
  window.scrollTo(0, 0);
  const page = param && section.detail ? section.detail : section.list;
  try {
    page(root, scope, param);
  } catch (e) {
    reportUnexpected(e);
  }
}

// Last line of defence: anything that still escapes shows in the banner.
window.addEventListener("error", (ev) => reportUnexpected(ev.error ?? ev.message));
window.addEventListener("unhandledrejection", (ev) => reportUnexpected(ev.reason));
window.addEventListener("hashchange", route);
route();
