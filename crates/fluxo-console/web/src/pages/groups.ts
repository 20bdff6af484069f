// Consumer groups: the list, and a group's members, per-partition lag and
// lag over time.

import * as api from "../api";
import { attempt } from "../banner";
import { TimeSeriesChart } from "../charts";
import { badge, card, dataTable, el, emptyRow, facts, fill, pageHeader, td } from "../dom";
import { formatCompact, formatInt } from "../format";
import type { Scope } from "../scope";

const groupHref = (id: string): string => `#/groups/${encodeURIComponent(id)}`;

export function list(root: HTMLElement, scope: Scope): void {
  const body = el("tbody");
  fill(
    root,
    pageHeader("Consumer groups"),
    card(
      null,
      dataTable(
        "groups-table",
        [
          { label: "Group" },
          { label: "State" },
          { label: "Type" },
          { label: "Members", num: true },
          { label: "Total lag", num: true },
        ],
        body,
      ),
    ),
  );
  scope.poll(async () => {
    const groups = await attempt("groups", "Loading groups", api.listGroups());
    if (!groups || !scope.alive) return;
    fill(
      body,
      groups.length === 0
        ? emptyRow(5, "No consumer groups")
        : groups.map((g) =>
            el(
              "tr",
              { "data-group": g.group_id, class: "clickable", onclick: () => (location.hash = groupHref(g.group_id)) },
              td(el("a", { href: groupHref(g.group_id) }, g.group_id)),
              td(badge(g.state)),
              td(g.protocol_type ? `${g.type} · ${g.protocol_type}` : g.type),
              td(formatInt(g.members), true),
              td(formatInt(g.lag), true),
            ),
          ),
    );
  });
}

export function detail(root: HTMLElement, scope: Scope, id: string): void {
  const summary = el("div");
  const membersBody = el("tbody");
  const partitionsBody = el("tbody");
  const lag = new TimeSeriesChart({ id: "lag", title: "Total lag", labels: ["lag"], format: formatCompact });
  scope.onDispose(() => lag.destroy());

  fill(
    root,
    el(
      "div",
      { class: "stack", "data-testid": "group-detail" },
      pageHeader([el("a", { href: "#/groups", class: "crumb" }, "Groups"), " / ", id]),
      summary,
      lag.root,
      card(
        "Members",
        dataTable(
          "members-table",
          [{ label: "Member" }, { label: "Client" }, { label: "Host" }, { label: "Instance" }, { label: "Assignment" }],
          membersBody,
        ),
      ),
      card(
        "Partitions",
        dataTable(
          "group-partitions-table",
          [
            { label: "Topic" },
            { label: "Partition", num: true },
            { label: "Committed", num: true },
            { label: "End offset", num: true },
            { label: "Lag", num: true },
          ],
          partitionsBody,
        ),
      ),
    ),
  );

  scope.poll(async () => {
    const g = await attempt("group", `Loading group ${id}`, api.getGroup(id));
    if (!g || !scope.alive) return;
    fill(
      summary,
      facts([
        ["State", badge(g.state)],
        ["Type", g.type],
        ["Protocol", g.protocol || "–"],
        ["Members", formatInt(g.members.length)],
        ["Total lag", formatInt(g.lag)],
      ]),
    );
    lag.replace(g.lag_history.map((s) => ({ t: s.t, values: [s.lag] })));
    fill(
      membersBody,
      g.members.length === 0
        ? emptyRow(5, "No members")
        : g.members.map((m) =>
            el(
              "tr",
              null,
              td(el("code", null, m.member_id)),
              td(m.client_id),
              td(m.client_host),
              td(m.instance_id ?? el("span", { class: "muted" }, "–")),
              td(
                m.assignment.length === 0
                  ? el("span", { class: "muted" }, "nothing")
                  : m.assignment.map((a) => el("div", null, el("b", null, a.topic), ` ${a.partitions.join(", ")}`)),
              ),
            ),
          ),
    );
    fill(
      partitionsBody,
      g.partitions.length === 0
        ? emptyRow(5, "No committed offsets")
        : g.partitions.map((p) =>
            el(
              "tr",
              null,
              td(el("a", { href: `#/topics/${encodeURIComponent(p.topic)}` }, p.topic)),
              td(p.partition, true),
              td(formatInt(p.committed), true),
              td(formatInt(p.end_offset), true),
              td(formatInt(p.lag), true),
            ),
          ),
    );
  });
}
