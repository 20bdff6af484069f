// Topics: the list with a create form, and a topic's page with partitions,
// config, a message browser and a form to produce a test record.

import * as api from "../api";
import { act, attempt } from "../banner";
import { card, dataTable, el, emptyRow, facts, fill, pageHeader, td, type Child } from "../dom";
import { formatByteRate, formatBytes, formatDateTime, formatInt, formatRate } from "../format";
import type { Scope } from "../scope";

const RECORDS_LIMIT = 50;
/** Longer keys and values are cut, with a button to see them whole. */
const VALUE_PREVIEW = 160;
const KEY_PREVIEW = 60;

const topicHref = (name: string): string => `#/topics/${encodeURIComponent(name)}`;

export function list(root: HTMLElement, scope: Scope): void {
  const body = el("tbody");
  const showInternal = el("input", { type: "checkbox", onchange: () => refresh() });
  const name = el("input", {
    type: "text",
    "data-testid": "topic-name",
    placeholder: "new-topic",
    required: true,
    "aria-label": "Topic name",
  });
  const partitions = el("input", {
    type: "number",
    "data-testid": "topic-partitions",
    min: 1,
    value: "3",
    required: true,
    "aria-label": "Partitions",
  });
  const create = async (ev: Event): Promise<void> => {
    ev.preventDefault();
    const topic = await act(
      "Creating the topic",
      api.createTopic(name.value.trim(), Math.max(1, Number(partitions.value) || 1)),
    );
    if (!topic || !scope.alive) return;
    name.value = "";
    refresh();
  };

  fill(
    root,
    pageHeader("Topics"),
    card(
      "Create a topic",
      el(
        "form",
        { class: "inline-form", onsubmit: create },
        el("label", null, "Name", name),
        el("label", { class: "narrow" }, "Partitions", partitions),
        el("button", { type: "submit", class: "primary", "data-testid": "topic-create" }, "Create topic"),
      ),
    ),
    el(
      "section",
      { class: "card" },
      el("div", { class: "card-head" }, el("h2", null, "All topics"), el("label", { class: "check" }, showInternal, "Show internal")),
      dataTable(
        "topics-table",
        [
          { label: "Name" },
          { label: "Partitions", num: true },
          { label: "Records", num: true },
          { label: "Size", num: true },
          { label: "Records in/s", num: true },
          { label: "Bytes in/s", num: true },
        ],
        body,
      ),
    ),
  );

  const refresh = scope.poll(async () => {
    const topics = await attempt("topics", "Loading topics", api.listTopics());
    if (!topics || !scope.alive) return;
    const shown = topics.filter((t) => showInternal.checked || !t.internal);
    fill(
      body,
      shown.length === 0
        ? emptyRow(6, "No topics yet")
        : shown.map((t) =>
            el(
              "tr",
              { "data-topic": t.name, class: "clickable", onclick: () => (location.hash = topicHref(t.name)) },
              td([el("a", { href: topicHref(t.name) }, t.name), t.internal ? el("span", { class: "tag" }, "internal") : null]),
              td(formatInt(t.partition_count), true),
              td(formatInt(t.records), true),
              td(formatBytes(t.size_bytes), true),
              td(formatRate(t.records_in_per_sec), true),
              td(formatByteRate(t.bytes_in_per_sec), true),
            ),
          ),
    );
  });
}

export function detail(root: HTMLElement, scope: Scope, name: string): void {
  const summary = el("div", { class: "slot" });
  const partitionsBody = el("tbody");
  const configBody = el("tbody");

  // Message browser.
  const partitionFilter = el(
    "select",
    { "aria-label": "Partition", "data-testid": "records-partition", onchange: () => void loadRecords() },
    el("option", { value: "" }, "All partitions"),
  );
  const autoRefresh = el("input", { type: "checkbox", checked: true, "data-testid": "records-auto" });
  const recordsBody = el("tbody");
  /** Which values the user expanded, by "partition:offset", across refreshes. */
  const expanded = new Set<string>();
  let shownRecords = "";
  let recordsSeq = 0;

  const loadRecords = async (): Promise<void> => {
    const seq = ++recordsSeq;
    const p = partitionFilter.value === "" ? null : Number(partitionFilter.value);
    const records = await attempt("records", "Loading records", api.listRecords(name, RECORDS_LIMIT, p));
    // Only the latest request may draw: a slow older answer must not win.
    if (!records || !scope.alive || seq !== recordsSeq) return;
    const text = JSON.stringify(records);
    if (text === shownRecords) return;
    shownRecords = text;
    fill(
      recordsBody,
      records.length === 0 ? emptyRow(6, "No records") : records.map((r) => recordRow(r, expanded)),
    );
  };

  // Produce form.
  const key = el("input", { type: "text", "data-testid": "produce-key", placeholder: "optional", "aria-label": "Key" });
  const partition = el("input", {
    type: "number",
    min: 0,
    "data-testid": "produce-partition",
    placeholder: "auto",
    "aria-label": "Partition",
  });
  const value = el("textarea", {
    "data-testid": "produce-value",
    rows: 4,
    class: "mono",
    required: true,
    placeholder: '{"id": 1, "note": "hello"}',
    "aria-label": "Value (JSON)",
  });
  const produced = el("div", { class: "form-note", role: "status" });
  const produce = async (ev: Event): Promise<void> => {
    ev.preventDefault();
    produced.textContent = "";
    const result = await act(
      "Producing the record",
      api.produceRecord(
        name,
        value.value,
        key.value === "" ? null : key.value,
        partition.value === "" ? null : Number(partition.value),
      ),
    );
    if (!result || !scope.alive) return;
    const at = result.offsets.map((o) => `partition ${o.partition} offset ${o.base_offset}`).join(", ");
    produced.textContent = `Wrote ${result.records} record${result.records === 1 ? "" : "s"} at ${at}`;
    await loadRecords();
  };

  const remove = async (): Promise<void> => {
    if (!confirm(`Delete topic ${name} and all its records?`)) return;
    if (await act("Deleting the topic", api.deleteTopic(name))) location.hash = "#/topics";
  };

  fill(
    root,
    el(
      "div",
      { class: "stack", "data-testid": "topic-detail" },
      pageHeader(
        [el("a", { href: "#/topics", class: "crumb" }, "Topics"), " / ", name],
        el("button", { type: "button", class: "danger", "data-testid": "topic-delete", onclick: remove }, "Delete topic"),
      ),
      summary,
      el(
        "div",
        { class: "grid-3" },
        card(
          "Partitions",
          dataTable(
            "partitions-table",
            [
              { label: "Partition", num: true },
              { label: "Start offset", num: true },
              { label: "End offset", num: true },
              { label: "Size", num: true },
            ],
            partitionsBody,
          ),
        ),
        card("Config overrides", dataTable("config-table", [{ label: "Key" }, { label: "Value" }], configBody)),
        card(
          "Produce a test record",
          el(
            "form",
            { class: "produce-form", onsubmit: produce },
            el(
              "div",
              { class: "inline-form" },
              el("label", null, "Key", key),
              el("label", { class: "narrow" }, "Partition", partition),
            ),
            el("label", null, "Value (JSON)", value),
            el(
              "div",
              { class: "form-actions" },
              el("button", { type: "submit", class: "primary", "data-testid": "produce-submit" }, "Produce"),
              produced,
            ),
          ),
        ),
      ),
      el(
        "section",
        { class: "card" },
        el(
          "div",
          { class: "card-head" },
          el("h2", null, "Latest records"),
          el(
            "div",
            { class: "toolbar" },
            partitionFilter,
            el("button", { type: "button", "data-testid": "records-refresh", onclick: () => loadRecords() }, "Refresh"),
            el("label", { class: "check" }, autoRefresh, "Auto-refresh"),
          ),
        ),
        dataTable(
          "records-table",
          [
            { label: "Partition", num: true },
            { label: "Offset", num: true },
            { label: "Time" },
            { label: "Key" },
            { label: "Value" },
            { label: "Headers" },
          ],
          recordsBody,
        ),
      ),
    ),
  );

  let partitionCount = -1;
  scope.poll(async () => {
    const [topic] = await Promise.all([
      attempt("topic", `Loading topic ${name}`, api.getTopic(name)),
      autoRefresh.checked ? loadRecords() : undefined,
    ]);
    if (!topic || !scope.alive) return;
    fill(
      summary,
      facts([
        ["Partitions", formatInt(topic.partition_count)],
        ["Records", formatInt(topic.records)],
        ["Size", formatBytes(topic.size_bytes)],
        ["In", `${formatRate(topic.records_in_per_sec)} · ${formatByteRate(topic.bytes_in_per_sec)}`],
        ["Out", `${formatRate(topic.records_out_per_sec)} · ${formatByteRate(topic.bytes_out_per_sec)}`],
      ]),
    );
    fill(
      partitionsBody,
      topic.partitions.map((p) =>
        el(
          "tr",
          null,
          td(p.partition, true),
          td(formatInt(p.log_start_offset), true),
          td(formatInt(p.end_offset), true),
          td(formatBytes(p.size_bytes), true),
        ),
      ),
    );
    const config = Object.entries(topic.config);
    fill(
      configBody,
      config.length === 0
        ? emptyRow(2, "All defaults")
        : config.map(([k, v]) => el("tr", null, td(el("code", null, k)), td(el("code", null, v)))),
    );
    if (topic.partitions.length !== partitionCount) {
      partitionCount = topic.partitions.length;
      const current = partitionFilter.value;
      fill(
        partitionFilter,
        el("option", { value: "" }, "All partitions"),
        topic.partitions.map((p) => el("option", { value: String(p.partition) }, `Partition ${p.partition}`)),
      );
      partitionFilter.value = current;
    }
  });
}

function recordRow(r: api.TopicRecord, expanded: Set<string>): HTMLTableRowElement {
  const id = `${r.partition}:${r.offset}`;
  return el(
    "tr",
    { "data-offset": r.offset, "data-partition": r.partition },
    td(r.partition, true),
    td(r.offset, true),
    td(el("span", { class: "nowrap" }, formatDateTime(r.timestamp, true))),
    el("td", { class: "record-key" }, clipped(r.key, KEY_PREVIEW, expanded, `${id}:key`)),
    td([
      clipped(prettyJson(r.value), VALUE_PREVIEW, expanded, id),
      r.value_truncated
        ? el("div", { class: "muted small" }, `the first part of ${formatBytes(r.value_bytes ?? 0)}`)
        : null,
    ]),
    td(
      r.headers.length === 0
        ? el("span", { class: "muted" }, "–")
        : r.headers.map(([k, v]) =>
            el("div", { class: "header-kv" }, el("b", null, k), " ", v ?? el("span", { class: "muted" }, "null")),
          ),
    ),
  );
}

/** Pretty-printed JSON when the text parses, else the text as it is. */
function prettyJson(text: string | null): { short: string; full: string } | null {
  if (text === null) return null;
  try {
    const parsed: unknown = JSON.parse(text);
    const full = JSON.stringify(parsed, null, 2);
    // The same JSON on one line, with a space after each ":" and ",".
    const short = JSON.stringify(parsed, null, 1).replace(/\n\s*/g, " ");
    return { short, full };
  } catch {
    return { short: text, full: text };
  }
}

/**
 * A key or value: the one-line form cut at `max` characters with an
 * "expand" button showing the whole (pretty) text, remembered in `expanded`.
 */
function clipped(
  text: string | { short: string; full: string } | null,
  max: number,
  expanded: Set<string>,
  id: string,
): Child {
  if (text === null) return el("span", { class: "muted" }, "null");
  const { short, full } = typeof text === "string" ? { short: text, full: text } : text;
  if (short.length <= max && !short.includes("\n")) return el("code", { class: "cell-value" }, short);
  const box = el("div", { class: "clip" });
  const draw = (): void => {
    const open = expanded.has(id);
    fill(
      box,
      open ? el("pre", { class: "cell-value" }, full) : el("code", { class: "cell-value" }, `${short.slice(0, max)}…`),
      el(
        "button",
        {
          type: "button",
          class: "link",
          onclick: () => {
            if (open) expanded.delete(id);
            else expanded.add(id);
            draw();
          },
        },
        open ? "collapse" : "expand",
      ),
    );
  };
  draw();
  return box;
}
