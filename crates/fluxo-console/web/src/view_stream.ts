// Keeps materialized views' rows up to date from their change streams: a
// `snapshot` event replaces a view's rows, a `changes` event deletes and
// inserts rows. A view is a multiset, so rows are counted by their JSON
// text, which is also how a deleted row is matched.
//
// Every view the page follows comes over ONE stream,
// GET /api/v1/changes?views=a,b (each event names its view): browsers allow
// only six HTTP/1.1 connections per host and each open stream holds one, so
// a stream per view would starve a dashboard of more than a few views.
// When the set of views changes the stream is reopened; the server then
// sends every view's snapshot again, which replaces what is held.

import type { Column, Row } from "./api";
import { manyViewChangesUrl } from "./api";
import { clearError, reportUnexpected, setError } from "./banner";
import { openEvents } from "./sse";

/** Listeners hear about new data at most this often. */
const MIN_NOTIFY_MS = 250;

interface Snapshot {
  view: string;
  columns: Column[];
  rows: Row[];
}

interface Changes {
  view: string;
  deleted?: Row[];
  inserted?: Row[];
}

interface Missing {
  view: string;
  error: string;
}

export class ViewStream {
  /** Null until the first snapshot arrives. */
  columns: Column[] | null = null;
  /** Rows held now, counting duplicates. */
  size = 0;

  private counts = new Map<string, { row: Row; n: number }>();
  private listeners = new Set<() => void>();
  private refs = 0;
  private timer: number | undefined;
  private lastNotify = 0;

  constructor(readonly view: string) {}

  /** All rows, a row held n times appearing n times, in no particular order. */
  rows(): Row[] {
    const out: Row[] = [];
    for (const { row, n } of this.counts.values()) for (let i = 0; i < n; i++) out.push(row);
    return out;
  }

  /** Calls `fn` (throttled) whenever the rows change; returns the unsubscribe. */
  subscribe(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Counts one more user; see `acquireView`. */
  retain(): this {
    this.refs++;
    return this;
  }

  /** Gives back a stream from `acquireView`; the last release closes it. */
  release(): void {
    if (--this.refs > 0) return;
    streams.delete(this.view);
    window.clearTimeout(this.timer);
    this.listeners.clear();
    clearError(missingKey(this.view));
    scheduleReopen();
  }

  snapshot(s: Snapshot): void {
    clearError(missingKey(this.view));
    this.columns = s.columns;
    this.counts.clear();
    this.size = 0;
    this.insert(s.rows);
    this.notify();
  }

  changes(c: Changes): void {
    for (const row of c.deleted ?? []) {
      const key = JSON.stringify(row);
      const entry = this.counts.get(key);
      if (!entry) continue;
      this.size--;
      if (--entry.n === 0) this.counts.delete(key);
    }
    this.insert(c.inserted ?? []);
    this.notify();
  }

  private insert(rows: Row[]): void {
    for (const row of rows) {
      const key = JSON.stringify(row);
      const entry = this.counts.get(key);
      if (entry) entry.n++;
      else this.counts.set(key, { row, n: 1 });
      this.size++;
    }
  }

  /** Coalesces bursts of events into at most one notification per 250 ms. */
  private notify(): void {
    if (this.timer !== undefined) return;
    const wait = Math.max(0, this.lastNotify + MIN_NOTIFY_MS - Date.now());
    this.timer = window.setTimeout(() => {
      this.timer = undefined;
      this.lastNotify = Date.now();
      for (const fn of [...this.listeners]) {
        try {
          fn();
        } catch (e) {
          reportUnexpected(e);
        }
      }
    }, wait);
  }
}

const streams = new Map<string, ViewStream>();
let closeEvents: (() => void) | null = null;
let reopenTimer: number | undefined;

const missingKey = (view: string): string => `view-missing:${view}`;

/**
 * Reopens the one event stream for the views followed now, once the
 * current burst of acquire/release calls (a page building its charts) is
 * over.
 */
function scheduleReopen(): void {
  window.clearTimeout(reopenTimer);
  reopenTimer = window.setTimeout(reopen, 20);
}

function reopen(): void {
  closeEvents?.();
  closeEvents = null;
  const views = [...streams.keys()].sort();
  if (views.length === 0) return;
  closeEvents = openEvents(manyViewChangesUrl(views), `Live data of ${views.join(", ")}`, {
    snapshot: (data) => streams.get((data as Snapshot).view)?.snapshot(data as Snapshot),
    changes: (data) => streams.get((data as Changes).view)?.changes(data as Changes),
    missing: (data) => {
      const m = data as Missing;
      if (streams.has(m.view)) setError(missingKey(m.view), m.error);
    },
  });
}

/** The shared rows of `view`; call `release()` on it when done. */
export function acquireView(view: string): ViewStream {
  let s = streams.get(view);
  if (!s) {
    s = new ViewStream(view);
    streams.set(view, s);
    scheduleReopen();
  }
  return s.retain();
}
