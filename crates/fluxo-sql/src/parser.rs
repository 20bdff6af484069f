//! fluxo's statements on top of `sqlparser`.
//!
//! The streaming statements (`CREATE SOURCE` with a `WATERMARK` clause,
//! `CREATE SINK`, `SUBSCRIBE`, `SHOW SOURCES`, ...) are not in any SQL
//! dialect, so they are parsed here with the parser's own primitives; every
//! query inside them, and every plain `SELECT`, is parsed by sqlparser
//! itself and planned by DataFusion. Each statement prints back as canonical
//! SQL (`Display`), which is what the durable catalog stores.

use std::fmt;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::sql::sqlparser::ast::{
    self, BinaryOperator, DataType as SqlType, ExactNumberInfo, Expr, Query, Value,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Word};

use crate::error::{Result, SqlError};

/// One statement of fluxo's SQL surface.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    CreateSource(SourceDef),
    CreateTable(TableDef),
    CreateView(ViewDef),
    CreateSink(SinkDef),
    Show(ObjectKind),
    Describe(String),
    Drop {
        kind: ObjectKind,
        name: String,
        if_exists: bool,
    },
    Subscribe(String),
    /// `EXPLAIN` of a view definition or a query.
    Explain(Box<Statement>),
    /// `EXPLAIN ANALYZE` of a query: runs it and shows the plan with what
    /// each operator did (rows, time; a batch scan's skipped records).
    ExplainAnalyze(Box<Query>),
    /// Anything else sqlparser understands (a `SELECT`), run by DataFusion.
    Query(Box<Query>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Source,
    Table,
    View,
    Sink,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Source => "source",
            ObjectKind::Table => "table",
            ObjectKind::View => "view",
            ObjectKind::Sink => "sink",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDef {
    pub name: String,
    pub data_type: DataType,
    /// The type as the user wrote it, for `Display` and `DESCRIBE`.
    pub sql_type: String,
    pub nullable: bool,
}

/// `WATERMARK FOR column AS column - INTERVAL ...`
#[derive(Debug, Clone, PartialEq)]
pub struct WatermarkDef {
    pub column: String,
    pub delay_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceDef {
    pub name: String,
    pub if_not_exists: bool,
    pub columns: Vec<ColumnDef>,
    pub watermark: Option<WatermarkDef>,
    pub options: Options,
    /// Set for a table over a topic (`CREATE TABLE ... PRIMARY KEY (...)`):
    /// its rows are the newest record per key, and a tombstone (a record
    /// with a key and no value) deletes the key's row.
    pub primary_key: Vec<String>,
    /// Not part of the statement: the schema registry the engine gives an
    /// Avro source to decode through.
    pub registry: Option<crate::format::Registry>,
}

impl SourceDef {
    /// Whether this is an upsert table rather than a stream of events.
    pub fn is_table(&self) -> bool {
        !self.primary_key.is_empty()
    }

    /// The primary key's columns, by index.
    pub fn key_indices(&self) -> Vec<usize> {
        self.primary_key
            .iter()
            .filter_map(|k| self.columns.iter().position(|c| &c.name == k))
            .collect()
    }

    /// The topic of fluxo's log the source reads (an MQTT source's `topic`
    /// is its broker's filter; it lands in `log_topic`).
    pub fn log_topic(&self) -> Result<&str> {
        fluxo_connectors::source::log_topic(&self.options)
            .ok_or_else(|| SqlError::Plan(format!("source {} names no topic", self.name)))
    }

    /// What must hold of a source's columns, key and watermark.
    pub fn check(&self) -> Result<()> {
        let name = &self.name;
        let (table, what) = match self.is_table() {
            true => (true, "table"),
            false => (false, "source"),
        };
        let columns = &self.columns;
        if columns.is_empty() {
            return Err(SqlError::Plan(format!(
                "{what} {name} has no columns; declare them, or with format = 'avro' leave them out to take them from the schema registry"
            )));
        }
        if table && self.watermark.is_some() {
            return Err(SqlError::Plan(format!(
            "table {name} holds the newest row per key and has no WATERMARK; event time belongs to sources"
        )));
        }
        for key in &self.primary_key {
            if !columns.iter().any(|c| &c.name == key) {
                return Err(SqlError::Plan(format!(
                    "PRIMARY KEY ({key}): table {name} has no column {key}"
                )));
            }
        }
        if let Some(w) = &self.watermark {
            let column = columns.iter().find(|c| c.name == w.column).ok_or_else(|| {
                SqlError::Plan(format!(
                    "WATERMARK FOR {}: source {name} has no column {}",
                    w.column, w.column
                ))
            })?;
            if !matches!(column.data_type, DataType::Timestamp(_, _)) {
                return Err(SqlError::Plan(format!(
                    "WATERMARK FOR {}: the column must be a TIMESTAMP, not {}",
                    w.column, column.sql_type
                )));
            }
        }
        Ok(())
    }

    /// The source's format, from its options.
    pub fn format(&self) -> Result<crate::format::Format> {
        crate::format::Format::parse(self.options.get("format").unwrap_or("json"))
    }

    /// A decoder of the source's records into rows of `schema`.
    pub fn decoder(
        &self,
        schema: arrow::datatypes::SchemaRef,
    ) -> Result<crate::format::RecordDecoder> {
        crate::format::RecordDecoder::new(schema, self.format()?, self.registry.as_ref())
    }

    pub fn schema(&self) -> Schema {
        Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.data_type.clone(), c.nullable))
                .collect::<Vec<_>>(),
        )
    }
}

/// `CREATE TABLE name WITH (connector = 'parquet', path = '...')`: files
/// written elsewhere, for batch queries.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDef {
    pub name: String,
    pub if_not_exists: bool,
    pub options: Options,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ViewDef {
    pub name: String,
    pub if_not_exists: bool,
    pub options: Options,
    pub query: Box<Query>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SinkDef {
    pub name: String,
    pub if_not_exists: bool,
    /// The view or source it writes out (`CREATE SINK s FROM v`); empty for
    /// a sink with a query of its own.
    pub from: String,
    pub options: Options,
    /// `CREATE SINK s WITH (...) AS SELECT ...`: the sink runs this query
    /// itself, with no view kept in between.
    pub query: Option<Box<Query>>,
}

pub use fluxo_connectors::options::{parse_duration_ms, Options};

/// Parses a script of one or more statements separated by `;`.
pub fn parse_statements(sql: &str) -> Result<Vec<Statement>> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| SqlError::Syntax(e.to_string()))?;
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(temporal_tables(tokens)?);
    let mut statements = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        if parser.peek_token().token == Token::EOF {
            break;
        }
        statements.push(parse_statement(&mut parser)?);
        let next = parser.peek_token();
        if next.token != Token::EOF && next.token != Token::SemiColon {
            return Err(SqlError::Syntax(format!(
                "expected ';' or the end of the statement, found {} at {}",
                next.token, next.span.start
            )));
        }
    }
    if statements.is_empty() {
        return Err(SqlError::Syntax("empty statement".into()));
    }
    Ok(statements)
}

/// What ends the name under which the planner knows a table read `FOR
/// SYSTEM_TIME AS OF`; no unquoted identifier can write it.
const AS_OF_SUFFIX: &str = "$as_of";

/// The name under which the planner knows `table` read `FOR SYSTEM_TIME AS OF`.
pub fn as_of_name(table: &str) -> String {
    format!("{table}{AS_OF_SUFFIX}")
}

/// The table a relation name reads (itself, or the table read `AS OF`).
pub fn as_of_table(name: &str) -> &str {
    name.strip_suffix(AS_OF_SUFFIX).unwrap_or(name)
}

/// `table FOR SYSTEM_TIME AS OF alias.column`, SQL:2011's temporal table
/// reference (Flink's temporal join), which PostgreSQL's grammar lacks: the
/// clause is taken out of the tokens and the table is named as the planner
/// knows its AS OF reading ([`as_of_name`]), so the query's AST and its
/// printed form carry it.
fn temporal_tables(tokens: Vec<TokenWithSpan>) -> Result<Vec<TokenWithSpan>> {
    let significant = |t: &TokenWithSpan| !matches!(t.token, Token::Whitespace(_));
    let keyword = |t: &TokenWithSpan, k: Keyword| matches!(&t.token, Token::Word(w) if w.keyword == k && w.quote_style.is_none());
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let next: Vec<usize> = (i + 1..tokens.len())
            .filter(|&k| significant(&tokens[k]))
            .take(6)
            .collect();
        let is = |n: usize, k: Keyword| next.get(n).is_some_and(|&j| keyword(&tokens[j], k));
        if !(keyword(&tokens[i], Keyword::FOR)
            && is(0, Keyword::SYSTEM_TIME)
            && is(1, Keyword::AS)
            && is(2, Keyword::OF))
        {
            out.push(tokens[i].clone());
            i += 1;
            continue;
        }
        let at = tokens[i].span.start;
        let word = |n: usize| {
            next.get(n)
                .filter(|&&j| matches!(tokens[j].token, Token::Word(_)))
        };
        let Some(&column) = word(3) else {
            return Err(SqlError::Syntax(format!(
                "FOR SYSTEM_TIME AS OF takes a time column of the stream joined (o.ts), at {at}"
            )));
        };
        let qualified = next
            .get(4)
            .is_some_and(|&j| tokens[j].token == Token::Period);
        let end = match (qualified, word(5)) {
            (true, Some(&j)) => j,
            (true, None) => {
                return Err(SqlError::Syntax(format!(
                    "FOR SYSTEM_TIME AS OF takes a column name after the '.', at {at}"
                )))
            }
            (false, _) => column,
        };
        let table = out.iter().rposition(significant);
        let Some(Token::Word(name)) = table.map(|t| &out[t].token) else {
            return Err(SqlError::Syntax(format!(
                "FOR SYSTEM_TIME AS OF follows the name of a table, at {at}"
            )));
        };
        let name = match name.quote_style {
            Some(_) => name.value.clone(),
            None => name.value.to_lowercase(),
        };
        if let Some(t) = table {
            out[t].token = Token::Word(Word {
                value: as_of_name(&name),
                quote_style: Some('"'),
                keyword: Keyword::NoKeyword,
            });
        }
        i = end + 1;
    }
    Ok(out)
}

/// Parses exactly one statement.
pub fn parse_statement_str(sql: &str) -> Result<Statement> {
    let mut all = parse_statements(sql)?;
    if all.len() != 1 {
        return Err(SqlError::Syntax(format!(
            "expected one statement, found {}",
            all.len()
        )));
    }
    Ok(all.remove(0))
}

fn parse_statement(p: &mut Parser) -> Result<Statement> {
    if p.parse_keyword(Keyword::CREATE) {
        if p.parse_keyword(Keyword::SOURCE) {
            return parse_create_source(p);
        }
        if p.parse_keyword(Keyword::TABLE) {
            let if_not_exists = parse_if_not_exists(p);
            let name = parse_name(p)?;
            if p.peek_token().token == Token::LParen {
                // A table over a topic: declared columns and a primary key.
                let def = parse_source_body(p, name, if_not_exists, true)?;
                if !matches!(def.options.get("connector"), None | Some("topic")) {
                    return Err(SqlError::Plan(format!(
                        "a table's columns come from its files: CREATE TABLE {} WITH \
                         (connector = 'parquet', path = '...'); a table with declared columns \
                         is kept from a topic (connector = 'topic')",
                        def.name
                    )));
                }
                if def.primary_key.is_empty() {
                    return Err(SqlError::Plan(format!(
                        "table {0} needs a PRIMARY KEY: its rows are the newest record per key (CREATE TABLE {0} (id BIGINT, ..., PRIMARY KEY (id)) WITH (...))",
                        def.name
                    )));
                }
                return Ok(Statement::CreateSource(def));
            }
            let options = parse_with_options(p)?;
            return Ok(Statement::CreateTable(TableDef {
                name,
                if_not_exists,
                options,
            }));
        }
        if p.parse_keywords(&[Keyword::MATERIALIZED, Keyword::VIEW]) {
            return parse_create_view(p);
        }
        if parse_word(p, "SINK") {
            return parse_create_sink(p);
        }
        if p.parse_keyword(Keyword::VIEW) {
            return Err(SqlError::Plan(
                "fluxo keeps views up to date: use CREATE MATERIALIZED VIEW".into(),
            ));
        }
        let found = p.peek_token();
        return Err(SqlError::Syntax(format!(
            "expected SOURCE, TABLE, MATERIALIZED VIEW or SINK after CREATE, found {} at {}",
            found.token, found.span.start
        )));
    }
    if p.parse_keyword(Keyword::SHOW) {
        let kind = if parse_word(p, "SOURCES") {
            ObjectKind::Source
        } else if p.parse_keyword(Keyword::TABLES) {
            ObjectKind::Table
        } else if p.parse_keyword(Keyword::VIEWS)
            || p.parse_keywords(&[Keyword::MATERIALIZED, Keyword::VIEWS])
        {
            ObjectKind::View
        } else if parse_word(p, "SINKS") {
            ObjectKind::Sink
        } else {
            let found = p.peek_token();
            return Err(SqlError::Syntax(format!(
                "expected SOURCES, TABLES, VIEWS or SINKS after SHOW, found {} at {}",
                found.token, found.span.start
            )));
        };
        return Ok(Statement::Show(kind));
    }
    if p.parse_keyword(Keyword::DESCRIBE) || p.parse_keyword(Keyword::DESC) {
        return Ok(Statement::Describe(parse_name(p)?));
    }
    if p.parse_keyword(Keyword::DROP) {
        let kind = if p.parse_keyword(Keyword::SOURCE) {
            ObjectKind::Source
        } else if p.parse_keyword(Keyword::TABLE) {
            ObjectKind::Table
        } else if p.parse_keywords(&[Keyword::MATERIALIZED, Keyword::VIEW])
            || p.parse_keyword(Keyword::VIEW)
        {
            ObjectKind::View
        } else if parse_word(p, "SINK") {
            ObjectKind::Sink
        } else {
            let found = p.peek_token();
            return Err(SqlError::Syntax(format!(
                "expected SOURCE, TABLE, MATERIALIZED VIEW or SINK after DROP, found {} at {}",
                found.token, found.span.start
            )));
        };
        let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let name = parse_name(p)?;
        return Ok(Statement::Drop {
            kind,
            name,
            if_exists,
        });
    }
    if parse_word(p, "SUBSCRIBE") {
        let _ = p.parse_keyword(Keyword::TO);
        return Ok(Statement::Subscribe(parse_name(p)?));
    }
    if p.parse_keyword(Keyword::EXPLAIN) {
        if p.parse_keyword(Keyword::ANALYZE) {
            return match parse_statement(p)? {
                Statement::Query(q) => Ok(Statement::ExplainAnalyze(q)),
                _ => Err(SqlError::Plan(
                    "EXPLAIN ANALYZE takes a query (it runs it)".into(),
                )),
            };
        }
        let inner = parse_statement(p)?;
        return match inner {
            Statement::CreateView(_) | Statement::Query(_) => {
                Ok(Statement::Explain(Box::new(inner)))
            }
            _ => Err(SqlError::Plan(
                "EXPLAIN takes a query or a CREATE MATERIALIZED VIEW".into(),
            )),
        };
    }
    match p.parse_statement()? {
        ast::Statement::Query(q) => Ok(Statement::Query(q)),
        other => {
            let text = other.to_string();
            let head: String = text
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            Err(SqlError::Plan(format!(
                "fluxo does not support {head} statements; see SHOW SOURCES, CREATE SOURCE, CREATE MATERIALIZED VIEW, CREATE SINK, SELECT, SUBSCRIBE"
            )))
        }
    }
}

/// Matches a word that is not one of sqlparser's keywords.
fn parse_word(p: &mut Parser, word: &str) -> bool {
    if let Token::Word(w) = &p.peek_token().token {
        if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word) {
            p.next_token();
            return true;
        }
    }
    false
}

/// An object name: unquoted names are folded to lower case, as in Postgres.
fn parse_name(p: &mut Parser) -> Result<String> {
    let name = p.parse_object_name(false)?;
    if name.0.len() != 1 {
        return Err(SqlError::Plan(format!(
            "qualified names are not supported: {name}"
        )));
    }
    let ident = name.0[0]
        .as_ident()
        .ok_or_else(|| SqlError::Syntax(format!("expected a name, found {name}")))?;
    Ok(ident_value(ident))
}

pub(crate) fn ident_value(ident: &ast::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

fn parse_if_not_exists(p: &mut Parser) -> bool {
    p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS])
}

fn parse_create_source(p: &mut Parser) -> Result<Statement> {
    let if_not_exists = parse_if_not_exists(p);
    let name = parse_name(p)?;
    Ok(Statement::CreateSource(parse_source_body(
        p,
        name,
        if_not_exists,
        false,
    )?))
}

/// The columns, WATERMARK, PRIMARY KEY (tables only) and options of a
/// source or a table over a topic.
fn parse_source_body(
    p: &mut Parser,
    name: String,
    if_not_exists: bool,
    table: bool,
) -> Result<SourceDef> {
    let what = if table { "table" } else { "source" };
    let mut columns: Vec<ColumnDef> = Vec::new();
    let mut watermark = None;
    let mut primary_key: Vec<String> = Vec::new();
    // Without a list, an Avro source takes its columns from the registry.
    let listed = p.consume_token(&Token::LParen);
    while listed {
        if p.parse_keywords(&[Keyword::PRIMARY, Keyword::KEY]) {
            if !table {
                return Err(SqlError::Plan(format!(
                    "a source is a stream of events and has no PRIMARY KEY; for the newest row per key declare a table: CREATE TABLE {name} (..., PRIMARY KEY (...))"
                )));
            }
            if !primary_key.is_empty() {
                return Err(SqlError::Plan(format!(
                    "table {name} has more than one PRIMARY KEY"
                )));
            }
            p.expect_token(&Token::LParen)?;
            loop {
                primary_key.push(ident_value(&p.parse_identifier()?));
                if !p.consume_token(&Token::Comma) {
                    break;
                }
            }
            p.expect_token(&Token::RParen)?;
        } else if parse_word(p, "WATERMARK") {
            if watermark.is_some() {
                return Err(SqlError::Plan(format!(
                    "source {name} has more than one WATERMARK clause"
                )));
            }
            p.expect_keyword(Keyword::FOR)?;
            let column = ident_value(&p.parse_identifier()?);
            p.expect_keyword(Keyword::AS)?;
            let expr = p.parse_expr()?;
            watermark = Some(parse_watermark(&column, &expr)?);
        } else {
            let column_name = ident_value(&p.parse_identifier()?);
            let sql_type = p.parse_data_type()?;
            let data_type = arrow_type(&sql_type)?;
            let nullable = !p.parse_keywords(&[Keyword::NOT, Keyword::NULL]);
            if columns.iter().any(|c| c.name == column_name) {
                return Err(SqlError::Plan(format!(
                    "column {column_name} appears twice in {what} {name}"
                )));
            }
            if table && p.parse_keywords(&[Keyword::PRIMARY, Keyword::KEY]) {
                primary_key.push(column_name.clone());
            }
            columns.push(ColumnDef {
                name: column_name,
                data_type,
                sql_type: sql_type.to_string(),
                nullable,
            });
        }
        if p.consume_token(&Token::Comma) {
            continue;
        }
        p.expect_token(&Token::RParen)?;
        break;
    }
    let options = parse_with_options(p)?;
    let def = SourceDef {
        name,
        if_not_exists,
        columns,
        watermark,
        options,
        primary_key,
        registry: None,
    };
    if def.columns.is_empty() && def.format().ok() == Some(crate::format::Format::Avro) {
        // Checked once the engine has the columns from the registry.
        return Ok(def);
    }
    def.check()?;
    Ok(def)
}

fn parse_watermark(column: &str, expr: &Expr) -> Result<WatermarkDef> {
    let bad = || {
        SqlError::Plan(format!(
            "WATERMARK FOR {column} AS ...: expected {column} or {column} - INTERVAL '...', found {expr}"
        ))
    };
    let is_column = |e: &Expr| matches!(e, Expr::Identifier(i) if ident_value(i) == column);
    match expr {
        e if is_column(e) => Ok(WatermarkDef {
            column: column.to_string(),
            delay_ms: 0,
        }),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Minus,
            right,
        } if is_column(left) => {
            let delay_ms = interval_ms(right).map_err(|_| bad())?;
            if delay_ms < 0 {
                return Err(bad());
            }
            Ok(WatermarkDef {
                column: column.to_string(),
                delay_ms,
            })
        }
        _ => Err(bad()),
    }
}

/// The length of an `INTERVAL '5' SECOND` or `INTERVAL '5 seconds'` literal.
pub fn interval_ms(expr: &Expr) -> Result<i64> {
    let Expr::Interval(interval) = expr else {
        return Err(SqlError::Plan(format!(
            "expected an INTERVAL, found {expr}"
        )));
    };
    let text = match interval.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::Number(s, _) => s.clone(),
            other => return Err(SqlError::Plan(format!("bad interval value {other}"))),
        },
        other => return Err(SqlError::Plan(format!("bad interval value {other}"))),
    };
    match &interval.leading_field {
        Some(unit) => {
            let n: f64 = text
                .trim()
                .parse()
                .map_err(|_| SqlError::Plan(format!("bad interval value '{text}'")))?;
            let unit_ms = unit_ms(&unit.to_string())
                .ok_or_else(|| SqlError::Plan(format!("unsupported interval unit {unit}")))?;
            Ok((n * unit_ms as f64).round() as i64)
        }
        None => parse_duration_ms(&text).map_err(SqlError::Plan),
    }
}

use fluxo_connectors::options::duration_unit_ms as unit_ms;

fn parse_with_options(p: &mut Parser) -> Result<Options> {
    let mut options = Options::default();
    if !p.parse_keyword(Keyword::WITH) {
        return Ok(options);
    }
    p.expect_token(&Token::LParen)?;
    loop {
        let key = p
            .parse_identifiers()?
            .iter()
            .map(|i| i.value.to_lowercase())
            .collect::<Vec<_>>()
            .join(".");
        p.expect_token(&Token::Eq)?;
        let token = p.next_token();
        let value = match token.token {
            Token::SingleQuotedString(s) => s,
            Token::Number(n, _) => n,
            Token::Word(w) => w.value,
            other => {
                return Err(SqlError::Syntax(format!(
                    "expected a value for option {key}, found {other} at {}",
                    token.span.start
                )))
            }
        };
        if options.0.insert(key.clone(), value).is_some() {
            return Err(SqlError::Plan(format!("option {key} given twice")));
        }
        if p.consume_token(&Token::Comma) {
            continue;
        }
        p.expect_token(&Token::RParen)?;
        return Ok(options);
    }
}

fn parse_create_view(p: &mut Parser) -> Result<Statement> {
    let if_not_exists = parse_if_not_exists(p);
    let name = parse_name(p)?;
    let options = parse_with_options(p)?;
    p.expect_keyword(Keyword::AS)?;
    let query = p.parse_query()?;
    Ok(Statement::CreateView(ViewDef {
        name,
        if_not_exists,
        options,
        query,
    }))
}

fn parse_create_sink(p: &mut Parser) -> Result<Statement> {
    let if_not_exists = parse_if_not_exists(p);
    let name = parse_name(p)?;
    if p.parse_keyword(Keyword::FROM) {
        let from = parse_name(p)?;
        let options = parse_with_options(p)?;
        return Ok(Statement::CreateSink(SinkDef {
            name,
            if_not_exists,
            from,
            options,
            query: None,
        }));
    }
    let options = parse_with_options(p)?;
    if !p.parse_keyword(Keyword::AS) {
        return Err(SqlError::Syntax(format!(
            "expected FROM <view or source> or WITH (...) AS <query> after CREATE SINK {name}, found {}",
            p.peek_token()
        )));
    }
    let query = p.parse_query()?;
    Ok(Statement::CreateSink(SinkDef {
        name,
        if_not_exists,
        from: String::new(),
        options,
        query: Some(query),
    }))
}

/// Maps a SQL column type to the Arrow type fluxo keeps it in.
pub fn arrow_type(t: &SqlType) -> Result<DataType> {
    Ok(match t {
        SqlType::BigInt(_) | SqlType::Int8(_) | SqlType::Int64 => DataType::Int64,
        SqlType::Int(_) | SqlType::Integer(_) | SqlType::Int4(_) | SqlType::Int32 => {
            DataType::Int32
        }
        SqlType::SmallInt(_) | SqlType::Int2(_) | SqlType::Int16 => DataType::Int16,
        SqlType::Double(_) | SqlType::DoublePrecision | SqlType::Float8 | SqlType::Float64 => {
            DataType::Float64
        }
        SqlType::Float(_) => DataType::Float64,
        SqlType::Real | SqlType::Float4 | SqlType::Float32 => DataType::Float32,
        SqlType::Boolean | SqlType::Bool => DataType::Boolean,
        SqlType::Text | SqlType::String(_) | SqlType::Varchar(_) | SqlType::Char(_) => {
            DataType::Utf8
        }
        SqlType::Character(_) | SqlType::CharacterVarying(_) => DataType::Utf8,
        SqlType::Date => DataType::Date32,
        SqlType::Timestamp(_, tz) => match tz {
            ast::TimezoneInfo::Tz | ast::TimezoneInfo::WithTimeZone => {
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
            }
            _ => DataType::Timestamp(TimeUnit::Millisecond, None),
        },
        SqlType::Decimal(info) | SqlType::Numeric(info) => match info {
            ExactNumberInfo::PrecisionAndScale(p, s) => DataType::Decimal128(
                u8::try_from(*p).map_err(|_| SqlError::Plan(format!("bad precision in {t}")))?,
                i8::try_from(*s).map_err(|_| SqlError::Plan(format!("bad scale in {t}")))?,
            ),
            ExactNumberInfo::Precision(p) => DataType::Decimal128(
                u8::try_from(*p).map_err(|_| SqlError::Plan(format!("bad precision in {t}")))?,
                0,
            ),
            ExactNumberInfo::None => DataType::Decimal128(38, 10),
        },
        other => {
            return Err(SqlError::Plan(format!(
                "column type {other} is not supported; use BIGINT, INT, SMALLINT, DOUBLE, REAL, BOOLEAN, TEXT, DATE, TIMESTAMP or DECIMAL(p, s)"
            )))
        }
    })
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Statement::CreateSource(s) => {
                let what = if s.is_table() { "TABLE" } else { "SOURCE" };
                write!(f, "CREATE {what} {} ", quote_ident(&s.name))?;
                let mut parts: Vec<String> = s
                    .columns
                    .iter()
                    .map(|c| {
                        let not_null = if c.nullable { "" } else { " NOT NULL" };
                        format!("{} {}{not_null}", quote_ident(&c.name), c.sql_type)
                    })
                    .collect();
                if let Some(w) = &s.watermark {
                    let col = quote_ident(&w.column);
                    parts.push(format!(
                        "WATERMARK FOR {col} AS {col} - INTERVAL '{} milliseconds'",
                        w.delay_ms
                    ));
                }
                if s.is_table() {
                    let keys: Vec<String> = s.primary_key.iter().map(|k| quote_ident(k)).collect();
                    parts.push(format!("PRIMARY KEY ({})", keys.join(", ")));
                }
                // Columns may be left to the schema registry.
                if !parts.is_empty() {
                    write!(f, "({}) ", parts.join(", "))?;
                }
                write!(f, "{}", s.options)
            }
            Statement::CreateTable(t) => {
                write!(f, "CREATE TABLE {} {}", quote_ident(&t.name), t.options)
            }
            Statement::CreateView(v) => {
                write!(f, "CREATE MATERIALIZED VIEW {} ", quote_ident(&v.name))?;
                if !v.options.0.is_empty() {
                    write!(f, "{} ", v.options)?;
                }
                write!(f, "AS {}", v.query)
            }
            Statement::CreateSink(s) => match &s.query {
                None => write!(
                    f,
                    "CREATE SINK {} FROM {} {}",
                    quote_ident(&s.name),
                    quote_ident(&s.from),
                    s.options
                ),
                Some(query) => write!(
                    f,
                    "CREATE SINK {} {} AS {query}",
                    quote_ident(&s.name),
                    s.options
                ),
            },
            Statement::Show(kind) => write!(f, "SHOW {}S", kind.as_str().to_uppercase()),
            Statement::Describe(name) => write!(f, "DESCRIBE {}", quote_ident(name)),
            Statement::Drop {
                kind,
                name,
                if_exists,
            } => {
                let kind = match kind {
                    ObjectKind::View => "MATERIALIZED VIEW".to_string(),
                    other => other.as_str().to_uppercase(),
                };
                let if_exists = if *if_exists { "IF EXISTS " } else { "" };
                write!(f, "DROP {kind} {if_exists}{}", quote_ident(name))
            }
            Statement::Subscribe(name) => write!(f, "SUBSCRIBE {}", quote_ident(name)),
            Statement::Explain(inner) => write!(f, "EXPLAIN {inner}"),
            Statement::ExplainAnalyze(q) => write!(f, "EXPLAIN ANALYZE {q}"),
            Statement::Query(q) => write!(f, "{q}"),
        }
    }
}

/// Quotes a name unless it is a plain lower-case identifier.
pub fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIDS: &str =
        "CREATE SOURCE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
        date_time TIMESTAMP, extra TEXT,
        WATERMARK FOR date_time AS date_time - INTERVAL '5' SECOND)
      WITH (connector = 'topic', topic = 'bids', format = 'json')";

    #[test]
    fn a_source_without_columns_prints_as_it_parses() {
        let sql = "CREATE SOURCE o WITH (topic = 'orders', format = 'avro')";
        let stmt = parse_statement_str(sql).unwrap();
        let printed = stmt.to_string();
        assert_eq!(parse_statement_str(&printed).unwrap().to_string(), printed);
        assert!(!printed.contains("()"), "{printed}");
    }

    #[test]
    fn create_source_with_watermark_round_trips() {
        let stmt = parse_statement_str(BIDS).unwrap();
        let Statement::CreateSource(s) = &stmt else {
            panic!("{stmt:?}")
        };
        assert_eq!(s.name, "bids");
        assert_eq!(s.columns.len(), 7);
        assert_eq!(
            s.columns[5].data_type,
            DataType::Timestamp(TimeUnit::Millisecond, None)
        );
        assert_eq!(
            s.watermark,
            Some(WatermarkDef {
                column: "date_time".into(),
                delay_ms: 5000
            })
        );
        assert_eq!(s.options.get("topic"), Some("bids"));
        let again = parse_statement_str(&stmt.to_string()).unwrap();
        assert_eq!(again, stmt);
    }

    #[test]
    fn watermark_must_name_a_timestamp_column_of_the_source() {
        let err = parse_statement_str(
            "CREATE SOURCE s (a BIGINT, WATERMARK FOR b AS b) WITH (topic = 't')",
        )
        .unwrap_err();
        assert!(err.to_string().contains("no column b"), "{err}");
        let err = parse_statement_str(
            "CREATE SOURCE s (a BIGINT, WATERMARK FOR a AS a) WITH (topic = 't')",
        )
        .unwrap_err();
        assert!(err.to_string().contains("must be a TIMESTAMP"), "{err}");
        let err = parse_statement_str(
            "CREATE SOURCE s (t TIMESTAMP, WATERMARK FOR t AS t + INTERVAL '1' SECOND)",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("expected t or t - INTERVAL"),
            "{err}"
        );
    }

    #[test]
    fn views_sinks_and_small_statements() {
        let all = parse_statements(
            "CREATE MATERIALIZED VIEW v WITH (allowed_lateness = '10 seconds') AS SELECT count(*) FROM bids;
             CREATE SINK out FROM v WITH (connector = 'topic', topic = 'o');
             SHOW SOURCES; show views; SHOW SINKS; DESCRIBE v; DROP MATERIALIZED VIEW IF EXISTS v;
             DROP SINK out; SUBSCRIBE v; EXPLAIN SELECT 1; SELECT * FROM v ORDER BY 1 LIMIT 3;
             CREATE SINK hot WITH (topic = 'hot', tasks = 4) AS SELECT a FROM bids WHERE a > 1",
        )
        .unwrap();
        assert_eq!(all.len(), 12);
        for stmt in &all {
            assert_eq!(&parse_statement_str(&stmt.to_string()).unwrap(), stmt);
        }
        assert!(
            matches!(&all[0], Statement::CreateView(v) if v.options.duration_ms("allowed_lateness").unwrap() == Some(10_000))
        );
        assert_eq!(all[3], Statement::Show(ObjectKind::View));
        assert!(
            matches!(&all[11], Statement::CreateSink(s) if s.query.is_some() && s.from.is_empty())
        );
        let err = parse_statement_str("CREATE SINK s SELECT 1").unwrap_err();
        assert!(err.to_string().contains("expected FROM"), "{err}");
    }

    #[test]
    fn errors_name_what_is_wrong_and_where() {
        let err = parse_statements("CREATE SOURCE s (a BIGINT,, b INT)").unwrap_err();
        assert!(err.to_string().contains("Line: 1"), "{err}");
        let err = parse_statements("CREATE TABLE t (a INT)").unwrap_err();
        assert!(err.to_string().contains("needs a PRIMARY KEY"), "{err}");
        let err = parse_statements(
            "CREATE TABLE t (a INT, PRIMARY KEY (a)) WITH (connector = 'parquet', path = 'x')",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("columns come from its files"),
            "{err}"
        );
        let err = parse_statements("CREATE SOURCE s (a INT, PRIMARY KEY (a))").unwrap_err();
        assert!(err.to_string().contains("has no PRIMARY KEY"), "{err}");
        let table = "CREATE TABLE t (a BIGINT, b TEXT, PRIMARY KEY (a)) WITH (topic = 't')";
        let parsed = parse_statements(table).unwrap();
        assert_eq!(parse_statements(&parsed[0].to_string()).unwrap(), parsed);
        let err = parse_statements("CREATE INDEX i ON t (a)").unwrap_err();
        assert!(err.to_string().contains("expected SOURCE, TABLE"), "{err}");
        let err = parse_statements("CREATE SOURCE s (a GEOMETRY)").unwrap_err();
        assert!(err.to_string().contains("not supported"), "{err}");
        let err = parse_statements("SELECT 1 SELECT 2").unwrap_err();
        assert!(err.to_string().contains("expected ';'"), "{err}");
        let err = parse_statements("INSERT INTO t VALUES (1)").unwrap_err();
        assert!(err.to_string().contains("does not support INSERT"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("5 seconds"), Ok(5000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("1 minute 30 s"), Ok(90_000));
        assert!(parse_duration_ms("5 parsecs").is_err());
    }
}
