//! What a session asks about itself and the server: `SHOW name`,
//! `current_setting(...)`, `version()`, `current_user`, `current_schema()`,
//! `current_database()`, ... Drivers and tools send these at connect; they
//! are answered here, as Postgres answers them, rather than by the engine,
//! which has no settings and calls itself DataFusion.

use datafusion::sql::sqlparser::tokenizer::Token;
use fluxo_sql::Engine;
use pgwire::api::{ClientInfo, METADATA_APPLICATION_NAME, METADATA_DATABASE, METADATA_USER};
use pgwire::error::PgWireResult;

use crate::auth::{version, SERVER_VERSION, SERVER_VERSION_NUM};
use crate::catalog::{self, Table, Value, SCHEMA};
use crate::tokens::{ident, is_word, literal, select_list, split_top_level_commas};

/// Who is connected, to what.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub pid: i32,
}

impl Session {
    pub fn of<C: ClientInfo>(client: &C) -> Session {
        let metadata = client.metadata();
        let user = metadata
            .get(METADATA_USER)
            .cloned()
            .unwrap_or_else(|| "fluxo".to_string());
        Session {
            // libpq's default database is the user's name.
            database: metadata
                .get(METADATA_DATABASE)
                .cloned()
                .unwrap_or_else(|| user.clone()),
            application_name: metadata
                .get(METADATA_APPLICATION_NAME)
                .cloned()
                .unwrap_or_default(),
            pid: client.pid_and_secret_key().0,
            user,
        }
    }
}

/// The settings `SHOW` and `current_setting` report, named as Postgres
/// names them: the ones announced at startup, and the others drivers ask for.
fn settings(session: &Session) -> Vec<(&'static str, String)> {
    vec![
        ("application_name", session.application_name.clone()),
        ("bytea_output", "hex".into()),
        ("client_encoding", "UTF8".into()),
        ("DateStyle", "ISO, YMD".into()),
        ("default_transaction_isolation", "read committed".into()),
        ("default_transaction_read_only", "off".into()),
        ("extra_float_digits", "1".into()),
        ("integer_datetimes", "on".into()),
        ("IntervalStyle", "postgres".into()),
        ("is_superuser", "on".into()),
        ("lc_collate", "C".into()),
        ("lc_ctype", "C".into()),
        ("max_identifier_length", "63".into()),
        ("search_path", SCHEMA.into()),
        ("server_encoding", "UTF8".into()),
        ("server_version", SERVER_VERSION.into()),
        ("server_version_num", SERVER_VERSION_NUM.into()),
        ("session_authorization", session.user.clone()),
        ("standard_conforming_strings", "on".into()),
        ("TimeZone", "Etc/UTC".into()),
        ("transaction_isolation", "read committed".into()),
        ("transaction_read_only", "off".into()),
    ]
}

/// The setting `name` names, in any case (and `SHOW`'s spelled-out forms).
fn setting(name: &str, session: &Session) -> Option<(&'static str, String)> {
    let name = match name.to_ascii_lowercase().as_str() {
        "transaction isolation level" => "transaction_isolation".to_string(),
        "time zone" => "timezone".to_string(),
        other => other.to_string(),
    };
    settings(session)
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(&name))
}

fn unrecognized(name: &str) -> pgwire::error::PgWireError {
    crate::user_error(
        "42704",
        format!("unrecognized configuration parameter \"{name}\""),
    )
}

/// For `SHOW name` (not one of fluxo's `SHOW SOURCES`, `TABLES`, `VIEWS`,
/// `MATERIALIZED VIEWS`, `SINKS`): the setting it names.
pub fn show_target(tokens: &[Token]) -> Option<String> {
    let (first, rest) = tokens.split_first()?;
    if !is_word(first, "show") || rest.is_empty() {
        return None;
    }
    if ["sources", "tables", "views", "materialized", "sinks"]
        .iter()
        .any(|w| is_word(&rest[0], w))
    {
        return None;
    }
    rest.iter()
        .map(ident)
        .collect::<Option<Vec<_>>>()
        .map(|words| words.join(" "))
}

/// `SHOW name`, or `SHOW ALL`.
pub fn show(target: &str, session: &Session) -> PgWireResult<Table> {
    if target.eq_ignore_ascii_case("all") {
        return Ok(Table {
            columns: vec!["name".into(), "setting".into(), "description".into()],
            rows: settings(session)
                .into_iter()
                .map(|(name, value)| vec![Value::text(name), Value::Text(value), Value::text("")])
                .collect(),
        });
    }
    let (name, value) = setting(target, session).ok_or_else(|| unrecognized(target))?;
    Ok(Table {
        columns: vec![name.to_string()],
        rows: vec![vec![Value::Text(value)]],
    })
}

/// A call of a session function, with literal arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub function: String,
    /// `None` for a NULL argument.
    pub args: Vec<Option<String>>,
    /// The result column's name: the alias, else the function's.
    pub column: String,
}

const FUNCTIONS: &[&str] = &[
    "current_catalog",
    "current_database",
    "current_role",
    "current_schema",
    "current_schemas",
    "current_setting",
    "current_user",
    "pg_backend_pid",
    "pg_get_viewdef",
    "pg_is_in_recovery",
    "session_user",
    "user",
    "version",
];

/// Those that SQL spells without parentheses too.
const WITHOUT_PARENTHESES: &[&str] = &[
    "current_catalog",
    "current_role",
    "current_schema",
    "current_user",
    "session_user",
    "user",
];

/// For a SELECT (with no FROM) of nothing but session functions with
/// literal arguments (`SELECT version()`, `SELECT current_schema(),
/// current_user AS u`): the calls.
pub fn function_select(tokens: &[Token]) -> Option<Vec<Call>> {
    let tokens = match tokens {
        [statement @ .., Token::SemiColon] => statement,
        _ => tokens,
    };
    let (items, end) = select_list(tokens)?;
    if end != tokens.len() || items.is_empty() {
        return None;
    }
    items.iter().map(|item| call(&item.tokens)).collect()
}

fn call(tokens: &[Token]) -> Option<Call> {
    let (expr, alias) = match tokens {
        [expr @ .., as_, alias] if is_word(as_, "as") => (expr, Some(ident(alias)?)),
        _ => (tokens, None),
    };
    let expr = match expr {
        [schema, Token::Period, rest @ ..] if is_word(schema, "pg_catalog") => rest,
        _ => expr,
    };
    let (name, rest) = expr.split_first()?;
    let Token::Word(word) = name else {
        return None;
    };
    if word.quote_style.is_some() {
        return None;
    }
    let function = word.value.to_lowercase();
    if !FUNCTIONS.contains(&function.as_str()) {
        return None;
    }
    let args = match rest {
        [] if WITHOUT_PARENTHESES.contains(&function.as_str()) => Vec::new(),
        [Token::LParen, inner @ .., Token::RParen] => split_top_level_commas(inner)
            .into_iter()
            .map(argument)
            .collect::<Option<Vec<_>>>()?,
        _ => return None,
    };
    Some(Call {
        column: alias.unwrap_or_else(|| function.clone()),
        function,
        args,
    })
}

/// A literal argument (a cast after it, as in `'16384'::pg_catalog.oid`,
/// changes nothing here): `Some(None)` for NULL, `None` for an expression.
fn argument(tokens: &[Token]) -> Option<Option<String>> {
    let first = tokens.first()?;
    if is_word(first, "null") {
        return Some(None);
    }
    if is_word(first, "true") || is_word(first, "false") {
        return Some(Some(first.to_string().to_lowercase()));
    }
    literal(first).map(Some)
}

/// One row: the value of each call.
pub async fn evaluate(calls: &[Call], engine: &Engine, session: &Session) -> PgWireResult<Table> {
    let mut row = Vec::with_capacity(calls.len());
    for call in calls {
        row.push(value_of(call, engine, session).await?);
    }
    Ok(Table {
        columns: calls.iter().map(|c| c.column.clone()).collect(),
        rows: vec![row],
    })
}

async fn value_of(call: &Call, engine: &Engine, session: &Session) -> PgWireResult<Value> {
    let arg = |i: usize| call.args.get(i).cloned().flatten();
    Ok(match call.function.as_str() {
        "version" => Value::Text(version()),
        "current_schema" => Value::text(SCHEMA),
        "current_schemas" => Value::text(if arg(0).as_deref() == Some("true") {
            "{pg_catalog,public}"
        } else {
            "{public}"
        }),
        "current_database" | "current_catalog" => Value::Text(session.database.clone()),
        "current_user" | "session_user" | "user" | "current_role" => {
            Value::Text(session.user.clone())
        }
        "current_setting" => {
            let name = arg(0).unwrap_or_default();
            match setting(&name, session) {
                Some((_, value)) => Value::Text(value),
                // current_setting(name, missing_ok => true)
                None if arg(1).as_deref() == Some("true") => Value::Null,
                None => return Err(unrecognized(&name)),
            }
        }
        "pg_backend_pid" => Value::Int(i64::from(session.pid)),
        "pg_is_in_recovery" => Value::Bool(false),
        "pg_get_viewdef" => match arg(0) {
            Some(view) => catalog::view_definition(engine, &view)
                .await
                .map_err(crate::pg_error)?
                .map_or(Value::Null, Value::Text),
            None => Value::Null,
        },
        other => {
            return Err(crate::user_error(
                "XX000",
                format!(
                "internal error: no value for {other}(). This is a bug in fluxo; please report it"
            ),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::significant;

    fn session() -> Session {
        Session {
            user: "alice".into(),
            database: "fluxo".into(),
            application_name: "psql".into(),
            pid: 100_001,
        }
    }

    fn calls(sql: &str) -> Option<Vec<Call>> {
        function_select(&significant(sql).unwrap())
    }

    #[test]
    fn session_function_selects_are_recognised() {
        let c = calls("SELECT pg_catalog.version()").unwrap();
        assert_eq!(c[0].function, "version");
        assert_eq!(c[0].column, "version");
        let c = calls("select current_schema(), CURRENT_USER as who, current_database()").unwrap();
        let names: Vec<&str> = c.iter().map(|c| c.column.as_str()).collect();
        assert_eq!(names, ["current_schema", "who", "current_database"]);
        let c = calls("SELECT pg_catalog.pg_get_viewdef('16389'::pg_catalog.oid, true);").unwrap();
        assert_eq!(
            c[0].args,
            [Some("16389".to_string()), Some("true".to_string())]
        );
        let c = calls("SELECT current_setting('server_version_num')").unwrap();
        assert_eq!(c[0].args, [Some("server_version_num".to_string())]);

        for sql in [
            "SELECT 1",
            "SELECT version",
            "SELECT version(), 1",
            "SELECT version() FROM bids",
            "SELECT current_setting(name) ",
            "SELECT now()",
            "SHOW VIEWS",
        ] {
            assert_eq!(calls(sql), None, "{sql}");
        }
    }

    #[test]
    fn show_names_a_setting_unless_it_lists_fluxo_objects() {
        let target = |sql: &str| show_target(&significant(sql).unwrap());
        assert_eq!(
            target("SHOW server_version").as_deref(),
            Some("server_version")
        );
        assert_eq!(
            target("SHOW TRANSACTION ISOLATION LEVEL").as_deref(),
            Some("transaction isolation level")
        );
        assert_eq!(target("SHOW \"TimeZone\"").as_deref(), Some("TimeZone"));
        for sql in [
            "SHOW SOURCES",
            "show views",
            "SHOW MATERIALIZED VIEWS",
            "SHOW SINKS",
            "SHOW",
        ] {
            assert_eq!(target(sql), None, "{sql}");
        }

        let s = session();
        let t = show("transaction isolation level", &s).unwrap();
        assert_eq!(t.columns, ["transaction_isolation"]);
        assert_eq!(t.rows, [[Value::text("read committed")]]);
        let t = show("DATESTYLE", &s).unwrap();
        assert_eq!(t.columns, ["DateStyle"]);
        let t = show("server_version", &s).unwrap();
        assert_eq!(t.rows, [[Value::text(SERVER_VERSION)]]);
        assert!(show("all", &s).unwrap().rows.len() > 10);
        let e = pgwire::error::ErrorInfo::from(show("no_such_thing", &s).unwrap_err());
        assert_eq!(e.code, "42704");
    }
}
