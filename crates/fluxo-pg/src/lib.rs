//! The Postgres wire-protocol front: psql, psycopg, JDBC and any other
//! Postgres client run fluxo's SQL over `--pg-addr` (default
//! 127.0.0.1:5433), on the `pgwire` crate.
//!
//! - The simple query protocol runs each statement of a query string through
//!   the engine, as `POST /api/v1/sql` does; a statement with rows answers
//!   with them, one without answers with its message as the command tag.
//! - The extended protocol (Parse/Bind/Describe/Execute) takes `$1`, `$2`,
//!   ... parameters. They are bound by turning each value into a SQL literal
//!   of its type and putting it where the placeholder token was (never inside
//!   a string: the statement is tokenized), so every statement of the SQL
//!   surface takes parameters, DDL included. Describe plans a query without
//!   running it.
//! - Transaction control (`BEGIN`, `COMMIT`, `ROLLBACK`) and session settings
//!   (`SET`, `RESET`, `DISCARD`) that drivers send on their own are accepted
//!   and change nothing: each statement is applied on its own.
//! - Errors are ErrorResponses with the SQLSTATE of the engine's error
//!   (`42601` syntax, `42P01` unknown object, ...); the connection stays
//!   usable.
//!
//! Authentication: none (trust), so listen on loopback unless the network is
//! trusted.

mod values;

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use fluxo_sql::{Engine, QueryResult, SqlError};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::StartupHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DescribePortalResponse, DescribeStatementResponse, QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{NoopQueryParser, StoredStatement};
use pgwire::api::{ClientInfo, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use tokio::net::TcpListener;

/// A running Postgres listener.
pub struct PgServer {
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl PgServer {
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Serves the Postgres protocol on `listener` until aborted.
pub fn serve(listener: TcpListener, engine: Arc<Engine>) -> std::io::Result<PgServer> {
    let local_addr = listener.local_addr()?;
    let handlers = Arc::new(Handlers {
        front: Arc::new(PgFront {
            engine,
            parser: Arc::new(NoopQueryParser::new()),
        }),
    });
    let task = tokio::spawn(async move {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "postgres: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handlers = handlers.clone();
            tokio::spawn(async move {
                if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                    tracing::debug!(%peer, error = %e, "postgres connection ended");
                }
            });
        }
    });
    Ok(PgServer { local_addr, task })
}

struct Handlers {
    front: Arc<PgFront>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.front.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.front.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.front.clone()
    }
}

struct PgFront {
    engine: Arc<Engine>,
    parser: Arc<NoopQueryParser>,
}

impl NoopStartupHandler for PgFront {}

/// An ErrorResponse carrying the engine error's SQLSTATE.
fn pg_error(e: SqlError) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        e.sqlstate().to_string(),
        e.to_string(),
    )))
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message,
    )))
}

/// The tag for session and transaction statements that drivers send on
/// their own, which fluxo accepts without effect.
fn session_statement(sql: &str) -> Option<&'static str> {
    let first = sql
        .trim_start()
        .split(|c: char| c.is_whitespace() || c == ';')
        .next()?
        .to_ascii_uppercase();
    Some(match first.as_str() {
        "BEGIN" | "START" => "BEGIN",
        "COMMIT" | "END" => "COMMIT",
        "ROLLBACK" | "ABORT" => "ROLLBACK",
        "SET" => "SET",
        "RESET" => "RESET",
        "DISCARD" => "DISCARD ALL",
        "DEALLOCATE" => "DEALLOCATE",
        _ => return None,
    })
}

fn response(result: QueryResult, format: &Format) -> PgWireResult<Response> {
    match &result.message {
        Some(message) if result.batches.is_empty() && result.schema.fields().is_empty() => {
            Ok(Response::Execution(Tag::new(message)))
        }
        _ => {
            let fields = Arc::new(values::fields(&result.schema, format));
            let rows = values::encode_rows(&result.batches, fields.clone())?;
            Ok(Response::Query(QueryResponse::new(
                fields,
                futures::stream::iter(rows.into_iter().map(Ok)),
            )))
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for PgFront {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        if query.trim().trim_end_matches(';').trim().is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        if let Some(tag) = session_statement(query) {
            return Ok(vec![Response::Execution(Tag::new(tag))]);
        }
        let results = self.engine.execute(query).await.map_err(pg_error)?;
        results
            .into_iter()
            .map(|r| response(r, &Format::UnifiedText))
            .collect()
    }
}

/// `sql` with each `$n` placeholder replaced by `literals[n - 1]`.
fn bind(sql: &str, literals: &[String]) -> PgWireResult<String> {
    if literals.is_empty() {
        return Ok(sql.to_string());
    }
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map_err(|e| user_error("42601", format!("syntax error: {e}")))?;
    let mut out = String::with_capacity(sql.len() + 16 * literals.len());
    for token in tokens {
        match &token {
            Token::Placeholder(p) if p.starts_with('$') => {
                let n: usize = p[1..]
                    .parse()
                    .map_err(|_| user_error("42601", format!("bad parameter {p}")))?;
                let literal = n
                    .checked_sub(1)
                    .and_then(|i| literals.get(i))
                    .ok_or_else(|| {
                        user_error(
                            "08P01",
                            format!("{p} has no value: {} parameter(s) bound", literals.len()),
                        )
                    })?;
                out.push_str(literal);
            }
            other => out.push_str(&other.to_string()),
        }
    }
    Ok(out)
}

/// The statement with its parameters bound.
fn bound_statement(portal: &Portal<String>) -> PgWireResult<String> {
    let literals = (0..portal.parameter_len())
        .map(|i| values::parameter_literal(portal, i))
        .collect::<PgWireResult<Vec<_>>>()?;
    bind(&portal.statement.statement, &literals)
}

/// How many `$n` parameters `sql` has (the largest n).
fn parameter_count(sql: &str) -> usize {
    Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .map(|tokens| {
            tokens
                .iter()
                .filter_map(|t| match t {
                    Token::Placeholder(p) => p.strip_prefix('$')?.parse::<usize>().ok(),
                    _ => None,
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

#[async_trait]
impl ExtendedQueryHandler for PgFront {
    type Statement = String;
    type QueryParser = NoopQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let sql = bound_statement(portal)?;
        if sql.trim().trim_end_matches(';').trim().is_empty() {
            return Ok(Response::EmptyQuery);
        }
        if let Some(tag) = session_statement(&sql) {
            return Ok(Response::Execution(Tag::new(tag)));
        }
        let result = self.engine.execute_one(&sql).await.map_err(pg_error)?;
        response(result, &portal.result_column_format)
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        stmt: &StoredStatement<Self::Statement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        // Parameters are not known yet: plan with NULLs in their place.
        let n = parameter_count(&stmt.statement).max(stmt.parameter_types.len());
        let parameter_types: Vec<Type> = (0..n)
            .map(|i| {
                stmt.parameter_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .unwrap_or(Type::UNKNOWN)
            })
            .collect();
        if session_statement(&stmt.statement).is_some() {
            return Ok(DescribeStatementResponse::new(parameter_types, Vec::new()));
        }
        let sql = bind(&stmt.statement, &vec!["NULL".to_string(); n])?;
        let fields = match self
            .engine
            .describe_statement(&sql)
            .await
            .map_err(pg_error)?
        {
            Some(schema) => values::fields(&schema, &Format::UnifiedText),
            None => Vec::new(),
        };
        Ok(DescribeStatementResponse::new(parameter_types, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Self::Statement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let sql = bound_statement(portal)?;
        if session_statement(&sql).is_some() {
            return Ok(DescribePortalResponse::new(Vec::new()));
        }
        let fields = match self
            .engine
            .describe_statement(&sql)
            .await
            .map_err(pg_error)?
        {
            Some(schema) => values::fields(&schema, &portal.result_column_format),
            None => Vec::new(),
        };
        Ok(DescribePortalResponse::new(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_outside_strings_only() {
        let sql = "SELECT a FROM t WHERE a = $1 AND b = '$1' AND c = $2";
        let bound = bind(sql, &["42".into(), "'it''s'".into()]).unwrap();
        assert_eq!(
            bound,
            "SELECT a FROM t WHERE a = 42 AND b = '$1' AND c = 'it''s'"
        );
        assert_eq!(parameter_count(sql), 2);
        let err = bind("SELECT $3", &["1".into()]).unwrap_err().to_string();
        assert!(err.contains("$3 has no value"), "{err}");
    }

    #[test]
    fn driver_session_statements_are_recognised() {
        assert_eq!(session_statement("begin"), Some("BEGIN"));
        assert_eq!(session_statement("  SET datestyle TO 'ISO'"), Some("SET"));
        assert_eq!(session_statement("COMMIT;"), Some("COMMIT"));
        assert_eq!(session_statement("SELECT 1"), None);
        assert_eq!(session_statement("settings"), None);
    }
}
