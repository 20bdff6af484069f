//! The `postgres` sink: a view kept in a PostgreSQL table, exactly once.
//!
//! `CREATE SINK s FROM v WITH (connector = 'postgres', url =
//! 'postgresql://user:pw@host:5432/db', table = 't', key = 'a,b')` creates
//! the table when missing (column types mapped from the view's, the key as
//! its primary key), then keeps it equal to the view: an append-only view's
//! rows are inserted; an updating view's changes become upserts and deletes
//! on the key.
//!
//! Exactly once, through the pipeline's two-phase checkpoints and two
//! tables of the sink's own in the same database:
//! - `prepare(epoch)` writes the epoch's changes to `fluxo_sink_staging`
//!   (one row per change, as JSON, with the epoch and its position) and
//!   commits. The checkpoint is written after this, so a checkpoint never
//!   covers changes that are not staged in PostgreSQL.
//! - `commit(epoch)` applies the staged changes of every epoch up to this
//!   one to the target table, deletes them from staging and records the
//!   epoch in `fluxo_sink_progress`, all in one transaction: the table and
//!   the progress row move together.
//! - `recover(checkpoint)` after a crash applies what the checkpoint covers
//!   but the progress row does not (a crash between checkpoint and commit)
//!   and drops staged changes of later epochs, which the pipeline
//!   recomputes from the checkpoint's source offsets.
//!
//! Staged changes are applied inside PostgreSQL (`INSERT ... SELECT` from
//! staging, reduced to the last change per key), so rows cross the wire
//! once; `jsonb_populate_record` makes PostgreSQL itself convert each JSON
//! value into the column's type.

use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use fluxo_dataflow::Changes;
use serde_json::Value;
use tokio_postgres::{Client, NoTls};

use crate::error::{ConnectorError, Result};
use crate::json::objects_json;
use crate::options::Options;
use crate::sink::{Sink, SinkStats};
use crate::{opt, ConnectorInfo, ConnectorKind};

pub const CONNECTOR: ConnectorInfo = ConnectorInfo {
    name: "postgres",
    kind: ConnectorKind::Sink,
    description: "keeps the view in a PostgreSQL table (inserts, or upserts and deletes on a key), exactly once",
    options: &[
        opt("connector", true, "'postgres'"),
        opt("url", true, "postgresql://user:password@host:port/database"),
        opt("table", true, "the table written ([schema.]name), created when missing"),
        opt("key", false, "the table's key columns; needed for a view whose rows change"),
        opt("snapshot", false, "whether a new sink first writes the view's current rows (default 'true')"),
    ],
};

const STAGING: &str = "fluxo_sink_staging";
const PROGRESS: &str = "fluxo_sink_progress";

/// How the options of `CREATE SINK ... WITH (connector = 'postgres', ...)` read.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresSinkConfig {
    pub url: String,
    /// The table, quoted for SQL (`"schema"."name"` or `"name"`).
    pub table: String,
    pub key: Vec<String>,
    pub snapshot: bool,
}

impl PostgresSinkConfig {
    pub fn from_options(
        options: &Options,
        from: &str,
        schema: &Schema,
        append_only: bool,
    ) -> Result<PostgresSinkConfig> {
        let what = CONNECTOR.what();
        let url = options.required(&what, "url")?.to_string();
        url.parse::<tokio_postgres::Config>().map_err(|e| {
            ConnectorError::Config(format!(
                "url: {e} (expected postgresql://user:password@host:port/database)"
            ))
        })?;
        let given = options.required(&what, "table")?;
        let parts: Vec<&str> = given.split('.').collect();
        if parts.len() > 2 || parts.iter().any(|p| p.trim().is_empty()) {
            return Err(ConnectorError::Config(format!(
                "table = '{given}': give a table name, or schema.table"
            )));
        }
        let table = parts
            .iter()
            .map(|p| quote(p.trim()))
            .collect::<Vec<_>>()
            .join(".");
        let key = options.columns("key", schema, from)?;
        if key.is_empty() && !append_only {
            return Err(ConnectorError::Config(format!(
                "view {from} is updating (its rows change as events arrive), so a postgres sink \
                 needs key = '<columns>' to apply updates and deletes by"
            )));
        }
        Ok(PostgresSinkConfig {
            url,
            table,
            key,
            snapshot: options.flag("snapshot", true)?,
        })
    }
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The PostgreSQL type a column of `t` becomes.
fn pg_type(t: &DataType) -> String {
    match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "SMALLINT".into(),
        DataType::Int32 | DataType::UInt16 => "INTEGER".into(),
        DataType::Int64 | DataType::UInt32 => "BIGINT".into(),
        DataType::UInt64 => "NUMERIC(20)".into(),
        DataType::Float16 | DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE PRECISION".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("NUMERIC({p}, {s})"),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMPTZ".into(),
        DataType::Time32(_) | DataType::Time64(_) => "TIME".into(),
        DataType::Interval(_) | DataType::Duration(TimeUnit::Millisecond) => "INTERVAL".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "TEXT".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BYTEA".into(),
        // Lists, structs and the rest arrive as JSON.
        _ => "JSONB".into(),
    }
}

/// Connects, driving the connection on the caller's runtime.
async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| ConnectorError::Execution(format!("cannot connect to PostgreSQL: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres sink connection ended");
        }
    });
    Ok(client)
}

fn pg_error(what: &str) -> impl Fn(tokio_postgres::Error) -> ConnectorError + '_ {
    move |e| {
        // The server's own message says what is wrong far better than the
        // client's "db error".
        let detail = e
            .as_db_error()
            .map(|d| format!("{}: {}", d.code().code(), d.message()))
            .unwrap_or_else(|| e.to_string());
        ConnectorError::Execution(format!("{what}: {detail}"))
    }
}

/// Makes the sink's tables and the target table (when missing), and checks
/// that an existing target has every column of the view. Run when the sink
/// is created, so that a wrong URL, password or table fails the statement.
pub async fn prepare_tables(config: &PostgresSinkConfig, schema: &SchemaRef) -> Result<()> {
    let client = connect(&config.url).await?;
    ensure_tables(&client, config, schema).await
}

async fn ensure_tables(
    client: &Client,
    config: &PostgresSinkConfig,
    schema: &Schema,
) -> Result<()> {
    let columns: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", quote(f.name()), pg_type(f.data_type())))
        .collect();
    let key = if config.key.is_empty() {
        String::new()
    } else {
        let key: Vec<String> = config.key.iter().map(|k| quote(k)).collect();
        format!(", PRIMARY KEY ({})", key.join(", "))
    };
    let ddl = format!(
        "CREATE TABLE IF NOT EXISTS {STAGING} (sink TEXT NOT NULL, epoch BIGINT NOT NULL, \
             seq BIGINT NOT NULL, insert BOOLEAN NOT NULL, row JSONB NOT NULL, \
             PRIMARY KEY (sink, epoch, seq));
         CREATE TABLE IF NOT EXISTS {PROGRESS} (sink TEXT PRIMARY KEY, epoch BIGINT NOT NULL, \
             updated_at TIMESTAMPTZ NOT NULL DEFAULT now());
         CREATE TABLE IF NOT EXISTS {} ({}{key});",
        config.table,
        columns.join(", ")
    );
    client
        .batch_execute(&ddl)
        .await
        .map_err(pg_error(&format!("cannot create table {}", config.table)))?;
    // An existing table must take every column of the view.
    let rows = client
        .query(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1::text::regclass \
             AND attnum > 0 AND NOT attisdropped",
            &[&config.table],
        )
        .await
        .map_err(pg_error(&format!(
            "cannot read the columns of {}",
            config.table
        )))?;
    let present: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    let missing: Vec<&str> = schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|c| !present.iter().any(|p| p == c))
        .collect();
    if !missing.is_empty() {
        return Err(ConnectorError::Config(format!(
            "table {} exists without the column(s) {} of the view; drop it or sink into another table",
            config.table,
            missing.join(", ")
        )));
    }
    Ok(())
}

/// One change: inserted (or, on a key, upserted) or deleted.
type Change = (bool, Value);

pub struct PostgresSink {
    name: String,
    config: PostgresSinkConfig,
    schema: SchemaRef,
    stats: Arc<SinkStats>,
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    /// Changes of the open epoch.
    pending: Vec<Change>,
    /// Epochs staged in PostgreSQL whose commit has not come yet, with
    /// how many changes each staged.
    prepared: Vec<(u64, usize)>,
}

impl PostgresSink {
    pub fn new(
        name: String,
        config: PostgresSinkConfig,
        schema: SchemaRef,
    ) -> Result<PostgresSink> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConnectorError::Internal(format!("cannot start a runtime: {e}")))?;
        Ok(PostgresSink {
            name,
            config,
            schema,
            stats: Arc::default(),
            runtime,
            client: None,
            pending: Vec::new(),
            prepared: Vec::new(),
        })
    }

    /// Runs `f` with a connection, connecting (again) when there is none;
    /// a failure drops the connection so that the next try starts afresh.
    fn with_client<T>(
        &mut self,
        f: impl for<'c> FnOnce(
            &'c mut Client,
            &'c Self,
        ) -> futures::future::LocalBoxFuture<'c, Result<T>>,
    ) -> Result<T> {
        let connected = match self.client.take() {
            Some(c) if !c.is_closed() => Ok(c),
            _ => self.runtime.block_on(connect(&self.config.url)),
        };
        let result = match connected {
            Ok(mut client) => {
                let result = self.runtime.block_on(f(&mut client, self));
                if result.is_ok() {
                    self.client = Some(client);
                }
                result
            }
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => {}
            Err(e) => {
                *self.stats.last_error.lock() = Some(e.to_string());
                self.stats
                    .failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        result
    }

    fn columns(&self) -> String {
        self.schema
            .fields()
            .iter()
            .map(|f| quote(f.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The staged changes of epochs up to `$2` reduced to what the table
    /// must end with: without a key, every insert in order; with one, the
    /// last change of each key (a retraction followed by its row's new
    /// version leaves the new version; an insert then its retraction, a
    /// delete).
    fn net_staged(&self) -> String {
        let staged = format!("FROM {STAGING} AS s WHERE s.sink = $1 AND s.epoch <= $2");
        if self.config.key.is_empty() {
            return format!("SELECT s.insert, s.row {staged} AND s.insert ORDER BY s.epoch, s.seq");
        }
        let keys: Vec<String> = self
            .config
            .key
            .iter()
            .map(|k| format!("s.row -> '{}'", k.replace('\'', "''")))
            .collect();
        let keys = keys.join(", ");
        format!(
            "SELECT DISTINCT ON ({keys}) s.insert, s.row {staged} ORDER BY {keys}, s.epoch DESC, s.seq DESC"
        )
    }

    /// The SQL that writes the net inserts of the staged epochs up to `$2`
    /// into the table, inside PostgreSQL: the rows cross the wire once, at
    /// staging.
    fn upsert_sql(&self) -> String {
        let columns = self.columns();
        let populated: Vec<String> = self
            .schema
            .fields()
            .iter()
            .map(|f| format!("p.{}", quote(f.name())))
            .collect();
        let table = &self.config.table;
        let insert = format!(
            "WITH net AS ({}) INSERT INTO {table} ({columns}) SELECT {} \
             FROM net, jsonb_populate_record(NULL::{table}, net.row) AS p WHERE net.insert",
            self.net_staged(),
            populated.join(", ")
        );
        if self.config.key.is_empty() {
            return insert;
        }
        let key: Vec<String> = self.config.key.iter().map(|k| quote(k)).collect();
        let updates: Vec<String> = self
            .schema
            .fields()
            .iter()
            .filter(|f| !self.config.key.contains(f.name()))
            .map(|f| format!("{0} = EXCLUDED.{0}", quote(f.name())))
            .collect();
        let action = if updates.is_empty() {
            "NOTHING".to_string()
        } else {
            format!("UPDATE SET {}", updates.join(", "))
        };
        format!("{insert} ON CONFLICT ({}) DO {action}", key.join(", "))
    }

    /// The SQL that deletes the rows of keys whose last staged change (up
    /// to epoch `$2`) is a retraction.
    fn delete_sql(&self) -> String {
        let table = &self.config.table;
        let on: Vec<String> = self
            .config
            .key
            .iter()
            .map(|k| format!("t.{0} = d.{0}", quote(k)))
            .collect();
        format!(
            "WITH net AS ({}) DELETE FROM {table} AS t \
             USING net, jsonb_populate_record(NULL::{table}, net.row) AS d \
             WHERE NOT net.insert AND {}",
            self.net_staged(),
            on.join(" AND ")
        )
    }
}

/// Applies the staged epochs up to `up_to` of `sink` and records `up_to`
/// as its progress, in the transaction `tx`; returns the rows written.
async fn apply_and_record(
    tx: &tokio_postgres::Transaction<'_>,
    sink: &PostgresSink,
    up_to: u64,
) -> Result<u64> {
    let epoch = up_to as i64;
    let mut n = 0;
    if !sink.config.key.is_empty() {
        n += tx
            .execute(&sink.delete_sql(), &[&sink.name, &epoch])
            .await
            .map_err(pg_error(&format!(
                "cannot delete from {}",
                sink.config.table
            )))?;
    }
    n += tx
        .execute(&sink.upsert_sql(), &[&sink.name, &epoch])
        .await
        .map_err(pg_error(&format!("cannot write to {}", sink.config.table)))?;
    tx.execute(
        &format!("DELETE FROM {STAGING} WHERE sink = $1 AND epoch <= $2"),
        &[&sink.name, &epoch],
    )
    .await
    .map_err(pg_error("cannot clear staged changes"))?;
    tx.execute(
        &format!(
            "INSERT INTO {PROGRESS} (sink, epoch, updated_at) VALUES ($1, $2, now()) \
             ON CONFLICT (sink) DO UPDATE SET epoch = EXCLUDED.epoch, updated_at = now()"
        ),
        &[&sink.name, &epoch],
    )
    .await
    .map_err(pg_error("cannot record the sink's progress"))?;
    Ok(n)
}

impl Sink for PostgresSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write(&mut self, changes: &Changes) -> Result<()> {
        if changes.num_rows() == 0 {
            return Ok(());
        }
        for (i, row) in objects_json(&changes.batch).into_iter().enumerate() {
            self.pending.push((changes.is_insert(i), row));
        }
        Ok(())
    }

    fn prepare(&mut self, epoch: u64) -> Result<serde_json::Value> {
        let changes = std::mem::take(&mut self.pending);
        if !changes.is_empty() {
            let inserts: Vec<bool> = changes.iter().map(|(i, _)| *i).collect();
            let rows: Vec<Value> = changes.iter().map(|(_, r)| r.clone()).collect();
            let staged = self.with_client(|client, sink| {
                Box::pin(async move {
                    let seqs: Vec<i64> = (0..rows.len() as i64).collect();
                    client
                        .execute(
                            &format!(
                                "INSERT INTO {STAGING} (sink, epoch, seq, insert, row) \
                                 SELECT $1, $2, s, i, r FROM unnest($3::bigint[], $4::bool[], $5::jsonb[]) AS u(s, i, r) \
                                 ON CONFLICT (sink, epoch, seq) DO UPDATE SET insert = EXCLUDED.insert, row = EXCLUDED.row"
                            ),
                            &[&sink.name, &(epoch as i64), &seqs, &inserts, &rows],
                        )
                        .await
                        .map_err(pg_error("cannot stage the epoch's changes"))
                })
            });
            if let Err(e) = staged {
                // Kept for the next try within this run.
                self.pending = changes;
                return Err(e);
            }
        }
        self.prepared.push((epoch, changes.len()));
        Ok(serde_json::json!({ "epoch": epoch }))
    }

    fn commit(&mut self, epoch: u64) -> Result<()> {
        let staged: usize = std::mem::take(&mut self.prepared)
            .iter()
            .map(|(_, n)| n)
            .sum();
        if staged == 0 {
            // Nothing staged: an idle pipeline's checkpoints cost the
            // database nothing (a recovery finds no staged rows either).
            return Ok(());
        }
        let applied = self.with_client(|client, sink| {
            Box::pin(async move {
                let tx = client
                    .transaction()
                    .await
                    .map_err(pg_error("cannot begin a transaction"))?;
                let n = apply_and_record(&tx, sink, epoch).await?;
                tx.commit()
                    .await
                    .map_err(pg_error("cannot commit the epoch"))?;
                Ok(n)
            })
        });
        match applied {
            Ok(n) => {
                self.stats.add_rows(n as usize);
                Ok(())
            }
            // Staged in PostgreSQL: the recovery after this failure
            // applies them from there.
            Err(e) => Err(e),
        }
    }

    fn recover(&mut self, prepared: Option<&serde_json::Value>) -> Result<()> {
        self.pending.clear();
        self.prepared.clear();
        let checkpointed = prepared
            .and_then(|p| p.get("epoch"))
            .and_then(|e| e.as_u64());
        let schema = self.schema.clone();
        let config = self.config.clone();
        self.with_client(|client, sink| {
            Box::pin(async move {
                ensure_tables(client, &config, &schema).await?;
                let tx = client
                    .transaction()
                    .await
                    .map_err(pg_error("cannot begin a transaction"))?;
                let done: Option<i64> = tx
                    .query_opt(
                        &format!("SELECT epoch FROM {PROGRESS} WHERE sink = $1"),
                        &[&sink.name],
                    )
                    .await
                    .map_err(pg_error("cannot read the sink's progress"))?
                    .map(|r| r.get(0));
                if let Some(epoch) = checkpointed {
                    if done.is_none_or(|d| d < epoch as i64) {
                        let n = apply_and_record(&tx, sink, epoch).await?;
                        tracing::info!(sink = %sink.name, epoch, rows = n, "applied the checkpoint's staged changes that a crash kept from their commit");
                    }
                }
                // Changes staged after the checkpoint are recomputed.
                tx.execute(
                    &format!("DELETE FROM {STAGING} WHERE sink = $1"),
                    &[&sink.name],
                )
                .await
                .map_err(pg_error("cannot clear staged changes"))?;
                tx.commit()
                    .await
                    .map_err(pg_error("cannot commit the recovery"))
            })
        })
    }

    fn wants_snapshot(&self) -> bool {
        self.config.snapshot
    }

    fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ])
    }

    fn sink(key: &str) -> PostgresSink {
        let mut o = vec![
            ("connector", "postgres"),
            ("url", "postgresql://u:p@127.0.0.1:5432/db"),
            ("table", "public.Totals"),
        ];
        if !key.is_empty() {
            o.push(("key", key));
        }
        let config =
            PostgresSinkConfig::from_options(&Options::from_pairs(&o), "v", &schema(), true)
                .unwrap();
        PostgresSink::new("s".into(), config, Arc::new(schema())).unwrap()
    }

    #[test]
    fn an_updating_view_needs_a_key_and_names_are_quoted() {
        let o = Options::from_pairs(&[("url", "postgresql://u@h/db"), ("table", "t")]);
        let e = PostgresSinkConfig::from_options(&o, "v", &schema(), false).unwrap_err();
        assert!(e.to_string().contains("needs key"), "{e}");
        assert_eq!(sink("id").config.table, "\"public\".\"Totals\"");
        let bad = Options::from_pairs(&[("url", "postgresql://u@h/db"), ("table", "a.b.c")]);
        assert!(PostgresSinkConfig::from_options(&bad, "v", &schema(), true).is_err());
    }

    #[test]
    fn staged_changes_reduce_to_the_last_change_per_key() {
        let keyed = sink("id");
        let net = keyed.net_staged();
        assert!(
            net.contains("DISTINCT ON (s.row -> 'id')")
                && net.contains("ORDER BY s.row -> 'id', s.epoch DESC, s.seq DESC"),
            "{net}"
        );
        assert!(keyed
            .upsert_sql()
            .ends_with("ON CONFLICT (\"id\") DO UPDATE SET \"name\" = EXCLUDED.\"name\", \"n\" = EXCLUDED.\"n\""));
        assert!(keyed
            .delete_sql()
            .contains("WHERE NOT net.insert AND t.\"id\" = d.\"id\""));
        let plain = sink("");
        assert!(plain
            .net_staged()
            .ends_with("AND s.insert ORDER BY s.epoch, s.seq"));
        assert!(!plain.upsert_sql().contains("ON CONFLICT"));
    }

    #[test]
    fn types_map_to_postgres_ones() {
        assert_eq!(pg_type(&DataType::Int64), "BIGINT");
        assert_eq!(
            pg_type(&DataType::Timestamp(TimeUnit::Millisecond, None)),
            "TIMESTAMP"
        );
        assert_eq!(pg_type(&DataType::Decimal128(10, 2)), "NUMERIC(10, 2)");
        assert_eq!(pg_type(&DataType::Utf8View), "TEXT");
    }
}
