// Typed wrappers around the fluxo HTTP API (/api/v1). Every failure, from
// the network or from the server, rejects with an ApiError whose message is
// the server's `error` text when it sent one.

export interface Counters {
  topics: number;
  partitions: number;
  log_bytes: number;
  connections: number;
  groups: number;
  pipelines: number;
}

export interface Sample {
  t: number;
  records_in_per_sec: number;
  records_out_per_sec: number;
  bytes_in_per_sec: number;
  bytes_out_per_sec: number;
}

export interface Overview extends Counters {
  now_ms: number;
  history: Sample[];
}

/** One event of the `sample` stream of /api/v1/overview/live. */
export type LiveSample = Sample & Counters;

export interface TopicPartition {
  partition: number;
  log_start_offset: number;
  end_offset: number;
  size_bytes: number;
}

export interface Topic {
  name: string;
  internal: boolean;
  partition_count: number;
  records: number;
  size_bytes: number;
  records_in_per_sec: number;
  bytes_in_per_sec: number;
  records_out_per_sec: number;
  bytes_out_per_sec: number;
  partitions: TopicPartition[];
  /** Only the keys overridden for this topic. */
  config: Record<string, string>;
}

export interface TopicRecord {
  partition: number;
  offset: number;
  timestamp: number;
  key: string | null;
  value: string | null;
  /** Set when the server sent only the start of a long value... */
  value_truncated?: boolean;
  /** ...of this many bytes. */
  value_bytes?: number;
  headers: [string, string | null][];
}

export interface ProduceResult {
  topic: string;
  records: number;
  offsets: { partition: number; base_offset: number; last_offset: number }[];
}

export interface GroupSummary {
  group_id: string;
  state: string;
  type: string;
  protocol_type: string;
  members: number;
  lag: number;
}

export interface GroupMember {
  member_id: string;
  client_id: string;
  client_host: string;
  instance_id: string | null;
  assignment: { topic: string; partitions: number[] }[];
}

export interface GroupPartition {
  topic: string;
  partition: number;
  committed: number;
  end_offset: number;
  lag: number;
}

export interface GroupDetail {
  group_id: string;
  state: string;
  type: string;
  protocol: string;
  members: GroupMember[];
  partitions: GroupPartition[];
  lag: number;
  lag_history: { t: number; lag: number }[];
}

export interface Checkpoint {
  epoch: number;
  taken_at_ms: number;
  duration_ms: number;
  bytes: number;
}

export interface PipelinePartition {
  partition: number;
  offset: number;
  end_offset: number;
  idle: boolean;
}

export interface GraphNode {
  kind: "source" | "operator";
  /** A source's name; empty for operators. */
  name: string;
  label: string;
  /** Indices of the nodes it reads. */
  inputs: number[];
}

export interface Pipeline {
  name: string;
  sql: string;
  /** "running", "stopped", "paused", "failed", ...: shown as it is. */
  status: string;
  source: string;
  operators: string[];
  /** The operators as a graph: sources first, each node after its inputs. */
  graph: GraphNode[];
  events_in: number;
  rows_out: number;
  events_in_per_sec: number;
  rows_out_per_sec: number;
  /** ISO-8601 timestamp, or null before the first event. */
  watermark: string | null;
  late_events: number;
  bad_records: number;
  allowed_lateness_ms: number;
  open_windows: number;
  parallelism: number;
  state_bytes: number;
  view_rows: number;
  last_error: string | null;
  last_checkpoint: Checkpoint | null;
  partitions: PipelinePartition[];
}

export interface Column {
  name: string;
  type: string;
}

/** A JSON value as the SQL engine sends it in a row. */
export type Cell = string | number | boolean | null | Cell[] | { [key: string]: Cell };
export type Row = Cell[];

export interface SqlResult {
  columns: Column[];
  rows: Row[];
  message?: string;
}

export type ChartType = "line" | "bar" | "table" | "number";

export interface ChartSpec {
  id: string;
  title: string;
  view: string;
  type: ChartType;
  x: string | null;
  y: string[];
  series: string | null;
  limit: number | null;
}

export interface Dashboard {
  id: string;
  name: string;
  charts: ChartSpec[];
}

export class ApiError extends Error {
  constructor(
    /** The HTTP status, or 0 when the server could not be reached. */
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

async function request<T>(method: string, path: string, body?: string): Promise<T> {
  let text: string;
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body,
    });
    text = await res.text();
  } catch (e) {
    throw new ApiError(0, `cannot reach the server (${e instanceof Error ? e.message : String(e)})`);
  }
  let data: unknown;
  try {
    data = text === "" ? null : JSON.parse(text);
  } catch {
    data = undefined;
  }
  if (!res.ok) {
    const error = isRecord(data) && typeof data.error === "string" ? data.error : "";
    throw new ApiError(res.status, error || text.trim() || `${res.status} ${res.statusText}`);
  }
  if (data === undefined) {
    throw new ApiError(res.status, `${method} ${path} answered with something that is not JSON`);
  }
  return data as T;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

const seg = encodeURIComponent;
const json = (v: unknown): string => JSON.stringify(v);

export const getOverview = (): Promise<Overview> => request("GET", "/api/v1/overview");
export const overviewLiveUrl = "/api/v1/overview/live";

export const listTopics = async (): Promise<Topic[]> =>
  (await request<{ topics: Topic[] }>("GET", "/api/v1/topics")).topics;
export const getTopic = (name: string): Promise<Topic> => request("GET", `/api/v1/topics/${seg(name)}`);
export const createTopic = (name: string, partitions: number): Promise<Topic> =>
  request("POST", "/api/v1/topics", json({ name, partitions, config: {} }));
export const deleteTopic = (name: string): Promise<{ deleted: string }> =>
  request("DELETE", `/api/v1/topics/${seg(name)}`);

export async function listRecords(topic: string, limit: number, partition: number | null): Promise<TopicRecord[]> {
  const q = new URLSearchParams({ limit: String(limit) });
  if (partition !== null) q.set("partition", String(partition));
  return (await request<{ records: TopicRecord[] }>("GET", `/api/v1/topics/${seg(topic)}/records?${q}`)).records;
}

/** Writes one record whose value is `value`, JSON text sent as it is. */
export function produceRecord(
  topic: string,
  value: string,
  key: string | null,
  partition: number | null,
): Promise<ProduceResult> {
  const q = new URLSearchParams();
  if (key !== null) q.set("key", key);
  if (partition !== null) q.set("partition", String(partition));
  const query = q.toString();
  return request("POST", `/api/v1/topics/${seg(topic)}/records${query ? `?${query}` : ""}`, value);
}

export const listGroups = async (): Promise<GroupSummary[]> =>
  (await request<{ groups: GroupSummary[] }>("GET", "/api/v1/groups")).groups;
export const getGroup = (id: string): Promise<GroupDetail> => request("GET", `/api/v1/groups/${seg(id)}`);

export const listPipelines = async (): Promise<Pipeline[]> =>
  (await request<{ pipelines: Pipeline[] }>("GET", "/api/v1/pipelines")).pipelines;
export const stopPipeline = (name: string): Promise<Pipeline> =>
  request("POST", `/api/v1/pipelines/${seg(name)}/stop`);
export const startPipeline = (name: string): Promise<Pipeline> =>
  request("POST", `/api/v1/pipelines/${seg(name)}/start`);

export const runSql = (sql: string): Promise<SqlResult> => request("POST", "/api/v1/sql", json({ sql }));

/**
 * Runs a SHOW-like statement and returns its rows as objects keyed by
 * column name, so callers pick the columns they know and ignore the rest.
 */
export async function sqlObjects(sql: string): Promise<Record<string, Cell>[]> {
  const result = await runSql(sql);
  return result.rows.map((row) => Object.fromEntries(result.columns.map((c, i) => [c.name, row[i] ?? null])));
}

/** The names of the materialized views (SHOW VIEWS). */
export async function listViews(): Promise<string[]> {
  const result = await runSql("SHOW VIEWS");
  const i = Math.max(0, result.columns.findIndex((c) => c.name === "name"));
  return result.rows.map((row) => String(row[i]));
}

/** Quotes a SQL identifier the way the fluxo engine prints them: only when needed. */
export function quoteIdent(name: string): string {
  return /^[a-z_][a-z0-9_]*$/.test(name) ? name : `"${name.replace(/"/g, '""')}"`;
}

/** One event stream for several views; each event's data names its `view`. */
export const manyViewChangesUrl = (views: string[]): string => `/api/v1/changes?views=${seg(views.join(","))}`;

export const listDashboards = async (): Promise<Dashboard[]> =>
  (await request<{ dashboards: Dashboard[] }>("GET", "/api/v1/dashboards")).dashboards;
export const getDashboard = (id: string): Promise<Dashboard> => request("GET", `/api/v1/dashboards/${seg(id)}`);
export const createDashboard = (name: string): Promise<Dashboard> =>
  request("POST", "/api/v1/dashboards", json({ name, charts: [] }));
export const saveDashboard = (d: Dashboard): Promise<Dashboard> =>
  request("PUT", `/api/v1/dashboards/${seg(d.id)}`, json(d));
export const deleteDashboard = (id: string): Promise<unknown> => request("DELETE", `/api/v1/dashboards/${seg(id)}`);
