// Number, size, rate and time formatting shared by every page.

import type { Cell } from "./api";

const UNITS = ["", " K", " M", " G", " T", " P"];

/** 950 → "950", 12.5 → "12.5", 1234 → "1.2 K", 3_400_000 → "3.4 M". */
export function formatCompact(n: number): string {
  if (!Number.isFinite(n)) return "–";
  let v = Math.abs(n);
  let u = 0;
  while (v >= 999.95 && u < UNITS.length - 1) {
    v /= 1000;
    u++;
  }
  const digits = u === 0 && Number.isInteger(v) ? 0 : 1;
  return `${n < 0 ? "-" : ""}${trimZero(v.toFixed(digits))}${UNITS[u]}`;
}

export const formatRate = (perSec: number): string => `${formatCompact(perSec)}/s`;

const BYTE_UNITS = ["B", "KB", "MB", "GB", "TB", "PB"];

/** Binary multiples: 1536 → "1.5 KB". */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n)) return "–";
  let v = Math.abs(n);
  let u = 0;
  while (v >= 1023.95 && u < BYTE_UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  return `${n < 0 ? "-" : ""}${trimZero(v.toFixed(u === 0 ? 0 : 1))} ${BYTE_UNITS[u]}`;
}

export const formatByteRate = (perSec: number): string => `${formatBytes(perSec)}/s`;

/** Exact integer with grouping: 1200 → "1,200". */
export const formatInt = (n: number): string =>
  Number.isFinite(n) ? n.toLocaleString("en-US", { maximumFractionDigits: 0 }) : "–";

/** A figure to read in full, up to two decimals: 12345.678 → "12,345.68". */
export function formatFigure(n: number): string {
  if (!Number.isFinite(n)) return "–";
  return Math.abs(n) >= 1e9 ? formatCompact(n) : n.toLocaleString("en-US", { maximumFractionDigits: 2 });
}

function trimZero(s: string): string {
  return s.endsWith(".0") ? s.slice(0, -2) : s;
}

const pad = (n: number, w = 2): string => String(n).padStart(w, "0");

/** Local wall-clock time of a millisecond timestamp, "20:00:05". */
export function formatClock(ms: number): string {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** Local date and time, "2026-12-01 20:00:05", with milliseconds if asked. */
export function formatDateTime(ms: number, millis = false): string {
  if (!Number.isFinite(ms)) return "–";
  const d = new Date(ms);
  const date = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  return `${date} ${formatClock(ms)}${millis ? `.${pad(d.getMilliseconds(), 3)}` : ""}`;
}

/** A length of time: "850 ms", "4.2 s", "3 min", "2 h 5 min". */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${trimZero((ms / 1000).toFixed(1))} s`;
  const min = Math.floor(ms / 60_000);
  if (min < 60) return `${min} min`;
  const h = Math.floor(min / 60);
  return min % 60 === 0 ? `${h} h` : `${h} h ${min % 60} min`;
}

/** How long ago `ms` was: "12 s ago". */
export const formatAge = (ms: number): string => `${formatDuration(Math.max(0, Date.now() - ms))} ago`;

const NUMERIC = /^(BIGINT|INT|INTEGER|SMALLINT|TINYINT|DOUBLE|REAL|FLOAT|DECIMAL|NUMERIC)\b/i;

/** Whether a SQL column type (as the engine names it) holds numbers. */
export const isNumericType = (type: string): boolean => NUMERIC.test(type);
export const isTimeType = (type: string): boolean => /^(TIMESTAMP|DATE)/i.test(type);

/** A view cell as a number (DECIMAL may come as a string), or null. */
export function cellNumber(v: Cell): number | null {
  if (typeof v === "number") return v;
  if (typeof v === "string" && v.trim() !== "") {
    const n = Number(v);
    return Number.isFinite(n) ? n : null;
  }
  return null;
}

/** A TIMESTAMP cell (ISO-8601 string or epoch ms) as epoch ms, or null. */
export function cellTime(v: Cell): number | null {
  if (typeof v === "number") return v;
  if (typeof v === "string") {
    const t = Date.parse(v);
    return Number.isNaN(t) ? null : t;
  }
  return null;
}

/** A cell as display text, given its column type when known. */
export function formatCell(v: Cell, type = ""): string {
  if (v === null) return "NULL";
  if (isTimeType(type) && typeof v === "string") {
    const t = cellTime(v);
    if (t !== null) return formatDateTime(t, t % 1000 !== 0);
  }
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

/** Orders two cells of one column: nulls first, then times, numbers or text. */
export function compareCells(a: Cell, b: Cell, type: string): number {
  if (a === null || b === null) return a === b ? 0 : a === null ? -1 : 1;
  if (isTimeType(type)) return (cellTime(a) ?? 0) - (cellTime(b) ?? 0);
  const na = cellNumber(a);
  const nb = cellNumber(b);
  if (na !== null && nb !== null) return na - nb;
  return String(a).localeCompare(String(b));
}
