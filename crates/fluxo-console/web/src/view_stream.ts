// Keeps a materialized view's rows up to date from its change stream
// (GET /api/v1/views/{name}/changes): a `snapshot` event replaces all rows,
// a `changes` event deletes and inserts rows. A view is a multiset, so rows
// are counted by their JSON text, which is also how a deleted row is matched.
//
// Charts of one view share one stream (see `acquireView`): browsers allow
// only six HTTP/1.1 connections per host, and each open stream holds one.

import type { Column, Row } from "./api";
import { viewChangesUrl } from "./api";
import { reportUnexpected } from "./banner";
import { openEvents } from "./sse";

/** Listeners hear about new data at most this often. */
const MIN_NOTIFY_MS = 250;

interface Snapshot {
  columns: Column[];
  rows: Row[];
}

interface Changes {
  deleted?: Row[];
  inserted?: Row[];
}

export class ViewStream {
  /** Null until the first snapshot arrives. */
  columns: Column[] | null = null;
  /** Rows held now, counting duplicates. */
  size = 0;

  private counts = new Map<string, { row: Row; n: number }>();
  private listeners = new Set<() => void>();
  private close: () => void;
  private refs = 0;
  private timer: number | undefined;
  private lastNotify = 0;

  constructor(readonly view: string) {
    this.close = openEvents(viewChangesUrl(view), `Live data of view ${view}`, {
      snapshot: (data) => this.snapshot(data as Snapshot),
      changes: (data) => this.changes(data as Changes),
    });
  }

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
    this.close();
  }

  private snapshot(s: Snapshot): void {
    this.columns = s.columns;
    this.counts.clear();
    this.size = 0;
    this.insert(s.rows);
    this.notify();
  }

  private changes(c: Changes): void {
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

/** The shared stream of `view`; call `release()` on it when done. */
export function acquireView(view: string): ViewStream {
  let s = streams.get(view);
  if (!s) {
    s = new ViewStream(view);
    streams.set(view, s);
  }
  return s.retain();
}
