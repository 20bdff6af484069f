// SQL: run a statement, see its rows, reload one of the last statements.
// A failed statement is shown in red under the editor (that is this page's
// error display; the banner is for the rest).

import * as api from "../api";
import { errorMessage } from "../banner";
import { el, fill } from "../dom";
import { formatCell, formatInt, isNumericType } from "../format";
import type { Scope } from "../scope";

const HISTORY_KEY = "fluxo.sql.history";
const HISTORY_MAX = 20;
const EXAMPLES = ["SHOW VIEWS", "SHOW SOURCES", "SELECT * FROM top_products ORDER BY revenue DESC LIMIT 10"];

function loadHistory(): string[] {
  try {
    const parsed: unknown = JSON.parse(localStorage.getItem(HISTORY_KEY) ?? "[]");
    return Array.isArray(parsed) ? parsed.filter((s): s is string => typeof s === "string") : [];
  } catch {
    return [];
  }
}

function saveHistory(history: string[]): void {
  try {
    localStorage.setItem(HISTORY_KEY, JSON.stringify(history));
  } catch {
    // Storage full or disabled: the history just is not kept.
  }
}

export function page(root: HTMLElement, scope: Scope): void {
  const input = el("textarea", {
    class: "mono sql-input",
    "data-testid": "sql-input",
    rows: 8,
    spellcheck: "false",
    placeholder: "SELECT * FROM revenue_per_minute ORDER BY window_end DESC LIMIT 10",
    "aria-label": "SQL statement",
    onkeydown: (ev: KeyboardEvent) => {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
        ev.preventDefault();
        void run();
      }
    },
  });
  const runButton = el("button", { type: "button", class: "primary", "data-testid": "sql-run", onclick: () => run() }, "Run");
  const status = el("div", { class: "sql-status slot" });
  const results = el("div", { "data-testid": "sql-results", class: "sql-results slot" });
  const historyList = el("ol", { class: "history" });

  let history = loadHistory();
  const drawHistory = (): void =>
    fill(
      historyList,
      history.length === 0
        ? el("li", { class: "muted" }, "Statements you run appear here")
        : history.map((sql) =>
            el(
              "li",
              null,
              el("button", { type: "button", class: "history-item mono", title: sql, onclick: () => load(sql) }, sql),
            ),
          ),
    );
  const load = (sql: string): void => {
    input.value = sql;
    input.focus();
  };

  const run = async (): Promise<void> => {
    const sql = input.value.trim();
    if (sql === "") return;
    history = [sql, ...history.filter((s) => s !== sql)].slice(0, HISTORY_MAX);
    saveHistory(history);
    drawHistory();
    runButton.disabled = true;
    fill(status, el("span", { class: "muted" }, "Running…"));
    const started = performance.now();
    try {
      const result = await api.runSql(sql);
      if (!scope.alive) return;
      showResult(result, performance.now() - started);
    } catch (e) {
      if (!scope.alive) return;
      fill(status, el("div", { class: "sql-error", "data-testid": "sql-error", role: "alert" }, errorMessage(e)));
      fill(results);
    } finally {
      runButton.disabled = false;
    }
  };

  const showResult = (result: api.SqlResult, ms: number): void => {
    const n = result.rows.length;
    fill(
      status,
      el("span", { "data-testid": "sql-rowcount" }, `${formatInt(n)} row${n === 1 ? "" : "s"}`),
      el("span", { class: "muted" }, ` in ${Math.round(ms)} ms`),
      result.message ? el("span", { class: "sql-message" }, result.message) : null,
    );
    if (result.columns.length === 0) {
      fill(results);
      return;
    }
    const numeric = result.columns.map((c) => isNumericType(c.type));
    fill(
      results,
      el(
        "div",
        { class: "table-wrap tall" },
        el(
          "table",
          null,
          el(
            "thead",
            null,
            el(
              "tr",
              null,
              result.columns.map((c, i) =>
                el("th", { class: numeric[i] ? "num" : null }, c.name, el("span", { class: "col-type" }, c.type)),
              ),
            ),
          ),
          el(
            "tbody",
            null,
            result.rows.map((row) =>
              el(
                "tr",
                null,
                // Values as the engine sent them: this is where exact text is wanted.
                numeric.map((num, i) => {
                  const v = row[i] ?? null;
                  return el("td", { class: [num ? "num" : "", v === null ? "null" : ""].join(" ").trim() || null }, formatCell(v));
                }),
              ),
            ),
          ),
        ),
      ),
    );
  };

  fill(
    root,
    el("header", { class: "page-header" }, el("h1", null, "SQL")),
    el(
      "div",
      { class: "sql-layout" },
      el(
        "section",
        { class: "card sql-editor" },
        input,
        el(
          "div",
          { class: "form-actions" },
          runButton,
          el("span", { class: "muted hint" }, "Ctrl+Enter runs"),
        ),
        el(
          "div",
          { class: "examples" },
          el("span", { class: "muted hint" }, "Examples"),
          EXAMPLES.map((sql) =>
            el(
              "button",
              {
                type: "button",
                class: "chip",
                onclick: () => {
                  load(sql);
                  return run();
                },
              },
              sql,
            ),
          ),
        ),
        status,
        results,
      ),
      el("section", { class: "card sql-history" }, el("h2", null, "History"), historyList),
    ),
  );
  drawHistory();
  input.focus();
}
