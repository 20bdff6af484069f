//! The Postgres wire-protocol front: psql, psycopg, JDBC and any other
//! Postgres client run fluxo's SQL over `--pg-addr` (default
//! 127.0.0.1:5433), on the `pgwire` crate.
//!
//! - The simple query protocol runs each statement of a query string, as
//!   `POST /api/v1/sql` does; a statement with rows answers with them, one
//!   without answers with its message as the command tag.
//! - The extended protocol (Parse/Bind/Describe/Execute) takes `$1`, `$2`,
//!   ... parameters. They are bound by turning each value into a SQL literal
//!   of its type and putting it where the placeholder token was (never inside
//!   a string: the statement is tokenized), so every statement of the SQL
//!   surface takes parameters, DDL included. Describe plans a query without
//!   running it.
//! - `SUBSCRIBE view` is a result without end (`subscribe.rs`): an `op`
//!   column (`insert`, `delete`) and the view's columns, the view's rows
//!   first, then each change as the view applies it, flushed at once. It
//!   ends when the client cancels (SQLSTATE 57014) or the view is dropped.
//! - The `pg_catalog` queries behind psql's `\d`, `\dt`, `\dv`, `\dm`,
//!   `\d NAME`, `\dn` and `\l` are answered from fluxo's catalog
//!   (`catalog.rs`); `SHOW name`, `current_setting`, `version()`,
//!   `current_schema()`, `current_database()`, `current_user`, ... as
//!   Postgres answers them (`session.rs`). The server says it is Postgres
//!   15.0 (`server_version` is `15.0 (fluxo x.y.z)`).
//! - Transaction control (`BEGIN`, `COMMIT`, `ROLLBACK`) and session settings
//!   (`SET`, `RESET`, `DISCARD`) that drivers send on their own are accepted
//!   and change nothing: each statement is applied on its own.
//! - Errors are ErrorResponses with the SQLSTATE of the engine's error
//!   (`42601` syntax, `42P01` unknown object, ...); the connection stays
//!   usable.
//!
//! Authentication (`auth.rs`): with no password configured, trust: anyone
//! who reaches the listener connects, as any user, so keep it on loopback
//! unless the network is trusted. With `--pg-password` (or
//! `FLUXO_PG_PASSWORD`), the client must log in as `--pg-user` (default
//! `fluxo`) with that password, sent in cleartext (Postgres's `password`
//! method: use it over a trusted network or an encrypting tunnel); a wrong
//! user or password gets SQLSTATE 28P01 and the connection is closed.
//!
//! A CancelRequest (on its own connection, as Postgres clients send it) is
//! routed by the connection's process id and secret key to the subscription
//! or the query it is running; one for no running query changes nothing.

mod auth;
mod catalog;
mod session;
mod subscribe;
mod tokens;
mod values;

use std::fmt::{self, Debug};
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use fluxo_sql::parser::{parse_statement_str, quote_ident, Statement};
use fluxo_sql::{Engine, QueryResult, SqlError};
use futures::{Sink, SinkExt};
use pgwire::api::auth::StartupHandler;
use pgwire::api::cancel::CancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{send_ready_for_query, ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DescribePortalResponse, DescribeStatementResponse, FieldInfo, QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{NoopQueryParser, StoredStatement};
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionManager, PgWireConnectionState, PgWireServerHandlers,
    Type, DEFAULT_NAME,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::{FieldDescription, RowDescription};
use pgwire::messages::extendedquery::Execute;
use pgwire::messages::simplequery::Query;
use pgwire::messages::PgWireBackendMessage;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::session::Session;
use crate::subscribe::{CancelKey, Canceller, Cancels, Subscription};

/// Who may connect to the Postgres listener.
#[derive(Clone)]
pub struct PgConfig {
    /// The user a password logs in, and the owner `\d` shows.
    pub user: String,
    /// `None`: trust. `Some`: cleartext password authentication of `user`.
    pub password: Option<String>,
}

impl Default for PgConfig {
    fn default() -> PgConfig {
        PgConfig {
            user: "fluxo".to_string(),
            password: None,
        }
    }
}

impl Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A running Postgres listener.
pub struct PgServer {
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl PgServer {
    /// Stops accepting and closes every connection, subscriptions included.
    pub fn abort(&self) {
        let _ = self.stop.send_replace(true);
        self.task.abort();
    }
}

/// Serves the Postgres protocol on `listener` until aborted.
pub fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    config: PgConfig,
) -> std::io::Result<PgServer> {
    let local_addr = listener.local_addr()?;
    let connections = Arc::new(ConnectionManager::new());
    let subscriptions = Arc::new(Cancels::default());
    let handlers = Arc::new(Handlers {
        front: Arc::new(PgFront {
            engine,
            parser: Arc::new(NoopQueryParser::new()),
            subscriptions: subscriptions.clone(),
            owner: config.user.clone(),
        }),
        startup: Arc::new(auth::Startup::new(&config, connections.clone())),
        cancel: Arc::new(Canceller {
            subscriptions,
            connections,
        }),
    });
    let (stop, stopped) = watch::channel(false);
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
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                tokio::select! {
                    result = pgwire::tokio::process_socket(socket, None, handlers) => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "postgres connection ended");
                        }
                    }
                    // A subscription has no end of its own: the server's
                    // stop is one.
                    _ = stopped.wait_for(|stop| *stop) => {}
                }
            });
        }
    });
    Ok(PgServer {
        local_addr,
        task,
        stop,
    })
}

struct Handlers {
    front: Arc<PgFront>,
    startup: Arc<auth::Startup>,
    cancel: Arc<Canceller>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.front.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.front.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }
}

struct PgFront {
    engine: Arc<Engine>,
    parser: Arc<NoopQueryParser>,
    subscriptions: Arc<Cancels>,
    /// The owner of every relation, as `\d` shows it.
    owner: String,
}

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

fn api_error(e: impl std::fmt::Display) -> PgWireError {
    PgWireError::ApiError(e.to_string().into())
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

/// What answers a statement.
#[derive(Debug)]
enum Route {
    Empty,
    /// A session or transaction statement, accepted without effect.
    Session(&'static str),
    /// `SHOW` of a setting.
    Show(String),
    Subscribe(String),
    /// A query of `pg_catalog`.
    Catalog(catalog::CatalogQuery),
    /// A SELECT of session functions (`version()`, `current_user`, ...).
    Functions(Vec<session::Call>),
    /// Everything else: fluxo's SQL.
    Engine,
}

/// The route of one statement.
fn route(sql: &str) -> Route {
    // What does not tokenize is the engine's to report.
    let Some(tokens) = tokens::significant(sql) else {
        return Route::Engine;
    };
    let Some(first) = tokens.first() else {
        return Route::Empty;
    };
    if let Some(tag) = session_statement(sql) {
        return Route::Session(tag);
    }
    if tokens::is_word(first, "show") {
        return session::show_target(&tokens).map_or(Route::Engine, Route::Show);
    }
    if tokens::is_word(first, "subscribe") {
        return match parse_statement_str(sql) {
            Ok(Statement::Subscribe(view)) => Route::Subscribe(view),
            _ => Route::Engine,
        };
    }
    if let Some(query) = catalog::CatalogQuery::parse(&tokens) {
        return Route::Catalog(query);
    }
    if let Some(calls) = session::function_select(&tokens) {
        return Route::Functions(calls);
    }
    Route::Engine
}

/// The route of a query string meant to hold one statement (an extended
/// protocol Parse, or a simple query that may be a SUBSCRIBE). Several
/// statements go to the engine as one script, which runs them all.
fn route_one(sql: &str) -> Route {
    let statements = tokens::split_statements(sql);
    match statements.as_slice() {
        [] => Route::Empty,
        [one] => route(one),
        _ => Route::Engine,
    }
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

/// The key a CancelRequest for this connection carries.
fn cancel_key<C: ClientInfo>(client: &C) -> CancelKey {
    let (pid, secret) = client.pid_and_secret_key();
    (pid, secret.to_bytes().to_vec())
}

impl PgFront {
    /// The rows of the statements answered here rather than by the engine.
    async fn table(
        &self,
        route: &Route,
        session: &Session,
    ) -> PgWireResult<Option<catalog::Table>> {
        Ok(Some(match route {
            Route::Show(target) => session::show(target, session)?,
            Route::Catalog(query) => query
                .answer(&self.engine, &self.owner, &session.database)
                .await
                .map_err(pg_error)?,
            Route::Functions(calls) => session::evaluate(calls, &self.engine, session).await?,
            _ => return Ok(None),
        }))
    }

    /// Runs one statement (not a SUBSCRIBE, whose rows are streamed).
    async fn respond(
        &self,
        sql: &str,
        route: Route,
        session: &Session,
        format: &Format,
    ) -> PgWireResult<Response> {
        if let Some(table) = self.table(&route, session).await? {
            return response(table.into_result().map_err(api_error)?, format);
        }
        match route {
            Route::Empty => Ok(Response::EmptyQuery),
            Route::Session(tag) => Ok(Response::Execution(Tag::new(tag))),
            Route::Subscribe(view) => Err(user_error(
                "0A000",
                format!(
                    "SUBSCRIBE {view} does not end, so it must be the only statement of its query"
                ),
            )),
            _ => {
                let result = self.engine.execute_one(sql).await.map_err(pg_error)?;
                response(result, format)
            }
        }
    }

    /// The columns one statement answers with, without running it.
    async fn describe(
        &self,
        sql: &str,
        session: &Session,
        format: &Format,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let route = route_one(sql);
        if let Some(table) = self.table(&route, session).await? {
            let result = table.into_result().map_err(api_error)?;
            return Ok(values::fields(&result.schema, format));
        }
        let schema = match route {
            Route::Empty | Route::Session(_) => None,
            Route::Subscribe(view) => {
                // As SUBSCRIBE itself would: 42P01 for what is not a view.
                let relations = catalog::relations(&self.engine).await.map_err(pg_error)?;
                if !relations
                    .iter()
                    .any(|r| r.kind == catalog::Kind::View && r.name == view)
                {
                    return Err(pg_error(SqlError::NotFound {
                        kind: "view",
                        name: view,
                    }));
                }
                self.engine
                    .describe_statement(&format!("SELECT * FROM {}", quote_ident(&view)))
                    .await
                    .map_err(pg_error)?
                    .map(|schema| Arc::new(subscribe::with_op(&schema)))
            }
            _ => self
                .engine
                .describe_statement(sql)
                .await
                .map_err(pg_error)?,
        };
        Ok(schema
            .map(|schema| values::fields(&schema, format))
            .unwrap_or_default())
    }

    fn subscription(
        &self,
        key: CancelKey,
        view: &str,
        format: &Format,
    ) -> PgWireResult<Subscription> {
        let subscription = self.engine.subscribe(view).map_err(pg_error)?;
        Subscription::new(
            self.engine.clone(),
            view.to_string(),
            subscription,
            format,
            self.subscriptions.register(key),
        )
    }

    /// Sends a subscription's rows as they come until it ends: for a simple
    /// query (after a RowDescription) and for an Execute without a row limit.
    async fn stream<C>(
        &self,
        client: &mut C,
        view: &str,
        format: &Format,
        describe: bool,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        let mut subscription = self.subscription(cancel_key(&*client), view, format)?;
        client.set_state(PgWireConnectionState::QueryInProgress);
        if describe {
            let fields: Vec<FieldDescription> = subscription
                .fields()
                .iter()
                .map(FieldDescription::from)
                .collect();
            client
                .feed(PgWireBackendMessage::RowDescription(RowDescription::new(
                    fields,
                )))
                .await?;
        }
        let mut sent = 0;
        while let Some(rows) = subscription.next_rows().await? {
            sent += rows.len();
            for row in rows {
                client.feed(PgWireBackendMessage::DataRow(row)).await?;
            }
            // pgwire holds what it sends until the query ends; a change must
            // reach the client when the view applies it.
            client.flush().await?;
        }
        client
            .feed(PgWireBackendMessage::CommandComplete(
                Tag::new("SUBSCRIBE").with_rows(sent).into(),
            ))
            .await?;
        client.set_state(PgWireConnectionState::ReadyForQuery);
        Ok(())
    }
}

#[async_trait]
impl SimpleQueryHandler for PgFront {
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Route::Subscribe(view) = route_one(&query.query) else {
            return self._on_query(client, query).await;
        };
        self.stream(client, &view, &Format::UnifiedText, true)
            .await?;
        let status = client.transaction_status();
        send_ready_for_query(client, status).await
    }

    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let session = Session::of(&*client);
        let statements = tokens::split_statements(query);
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let routes: Vec<Route> = statements.iter().map(|s| route(s)).collect();
        if routes.len() > 1 && routes.iter().all(|r| matches!(r, Route::Engine)) {
            // A script of fluxo statements runs as POST /api/v1/sql runs
            // it: parsed whole before any of it runs.
            let results = self.engine.execute(query).await.map_err(pg_error)?;
            return results
                .into_iter()
                .map(|r| response(r, &Format::UnifiedText))
                .collect();
        }
        let mut responses = Vec::with_capacity(statements.len());
        for (sql, how) in statements.iter().zip(routes) {
            match self.respond(sql, how, &session, &Format::UnifiedText).await {
                Ok(r) => responses.push(r),
                // The statements before keep their results, as in Postgres.
                Err(e) if !responses.is_empty() => {
                    responses.push(Response::Error(Box::new(ErrorInfo::from(e))));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(responses)
    }
}

/// `sql` with each `$n` placeholder replaced by `literals[n - 1]`.
fn bind(sql: &str, literals: &[String]) -> PgWireResult<String> {
    if literals.is_empty() {
        return Ok(sql.to_string());
    }
    // Literals stay as written (`'it''s'`), so the tokens print back to
    // the same SQL.
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .with_unescape(false)
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

    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // A SUBSCRIBE executed without a row limit (psycopg's
        // `cursor.stream()`) is streamed here, each change flushed as it
        // comes. With a limit, pgwire's portal sends it `max_rows` at a time
        // (from `do_query`), suspending in between.
        if message.max_rows <= 0 {
            let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
            if let Some(Entry::Value(portal)) = client.portal_store().get_portal(name) {
                if let Route::Subscribe(view) = route_one(&bound_statement(&portal)?) {
                    return self
                        .stream(client, &view, &portal.result_column_format, false)
                        .await;
                }
            }
        }
        self._on_execute(client, message).await
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let sql = bound_statement(portal)?;
        match route_one(&sql) {
            Route::Subscribe(view) => {
                let subscription =
                    self.subscription(cancel_key(&*client), &view, &portal.result_column_format)?;
                Ok(Response::Query(subscription.into_response()))
            }
            route => {
                let session = Session::of(&*client);
                self.respond(&sql, route, &session, &portal.result_column_format)
                    .await
            }
        }
    }

    async fn do_describe_statement<C>(
        &self,
        client: &mut C,
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
        let sql = bind(&stmt.statement, &vec!["NULL".to_string(); n])?;
        let fields = self
            .describe(&sql, &Session::of(&*client), &Format::UnifiedText)
            .await?;
        Ok(DescribeStatementResponse::new(parameter_types, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let sql = bound_statement(portal)?;
        let fields = self
            .describe(&sql, &Session::of(&*client), &portal.result_column_format)
            .await?;
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
    fn literals_around_placeholders_keep_their_quoting() {
        let bound = bind("SELECT 'it''s', $1", &["1".into()]).unwrap();
        assert_eq!(bound, "SELECT 'it''s', 1");
    }

    #[test]
    fn driver_session_statements_are_recognised() {
        assert_eq!(session_statement("begin"), Some("BEGIN"));
        assert_eq!(session_statement("  SET datestyle TO 'ISO'"), Some("SET"));
        assert_eq!(session_statement("COMMIT;"), Some("COMMIT"));
        assert_eq!(session_statement("SELECT 1"), None);
        assert_eq!(session_statement("settings"), None);
    }

    #[test]
    fn statements_are_routed_to_what_answers_them() {
        assert!(matches!(route_one(""), Route::Empty));
        assert!(matches!(route_one(" ; -- nothing"), Route::Empty));
        assert!(matches!(route_one("BEGIN"), Route::Session("BEGIN")));
        assert!(matches!(route_one("SHOW VIEWS"), Route::Engine));
        assert!(
            matches!(route_one("SHOW server_version"), Route::Show(p) if p == "server_version")
        );
        assert!(
            matches!(route_one("subscribe per_auction;"), Route::Subscribe(v) if v == "per_auction")
        );
        assert!(matches!(route_one("SUBSCRIBE TO \"Mixed\""), Route::Subscribe(v) if v == "Mixed"));
        assert!(matches!(route_one("SUBSCRIBE"), Route::Engine));
        assert!(matches!(route_one("SUBSCRIBE v; SELECT 1"), Route::Engine));
        assert!(matches!(
            route_one("SELECT current_database()"),
            Route::Functions(_)
        ));
        assert!(matches!(
            route_one("SELECT c.relname FROM pg_catalog.pg_class c"),
            Route::Catalog(_)
        ));
        assert!(matches!(route_one("SELECT * FROM bids"), Route::Engine));
        assert!(matches!(
            route_one("SELECT version() FROM bids"),
            Route::Engine
        ));
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let config = PgConfig {
            user: "fluxo".into(),
            password: Some("hunter2".into()),
        };
        let shown = format!("{config:?}");
        assert!(
            shown.contains("fluxo") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
