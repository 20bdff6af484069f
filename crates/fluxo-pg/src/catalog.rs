//! The part of `pg_catalog` that psql's `\d` commands and drivers read,
//! answered from fluxo's own catalog.
//!
//! fluxo's engine has no `pg_catalog`, and psql's queries lean on Postgres
//! constructs DataFusion does not plan (`OPERATOR(pg_catalog.~)`,
//! `COLLATE pg_catalog.default`, `::pg_catalog.regclass`, correlated scalar
//! subqueries). So a SELECT that reads a catalog relation is recognized by
//! its shape (the relation in its FROM, the columns it selects, the filters
//! psql puts in it) and answered with the rows psql expects, one value per
//! item of its SELECT list, in order:
//!
//! - the relation list of `\d`, `\dt`, `\dv`, `\dm` (and `+`, and patterns):
//!   `pg_class` rows filtered by `c.relkind IN (...)` and the name pattern;
//! - `\d NAME`: the lookup of `c.oid, n.nspname, c.relname` by name
//!   pattern, the relation's details by `c.oid = '...'`, its columns from
//!   `pg_attribute` by `a.attrelid = '...'`;
//! - `\dn` and `\l`: the `public` schema and the session's database.
//!
//! Sources and Parquet tables are tables (relkind `r`), views materialized
//! views (`m`); `\dv` lists them too, as fluxo has no other kind of view.
//! Each relation's oid is a hash of its name, so it is the same in psql's
//! second query as in its first, and across restarts. A catalog query of
//! any other shape (indexes, constraints, policies, publications,
//! inheritance, ... which fluxo does not have) is answered with no rows, in
//! the columns it asked for.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::sql::sqlparser::tokenizer::Token;
use fluxo_sql::parser::{parse_statement_str, quote_ident, Statement};
use fluxo_sql::{Engine, QueryResult, SqlError};

use crate::tokens::{is_word, literal, select_list, Item};

/// The one schema fluxo's relations are in.
pub const SCHEMA: &str = "public";

/// Postgres gives user objects oids from here up.
const FIRST_OID: i64 = 16_384;

/// A value of a small answer built here.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Int(i64),
    Bool(bool),
    Null,
}

impl Value {
    pub fn text(s: impl Into<String>) -> Value {
        Value::Text(s.into())
    }
}

/// A small result: named columns and rows of values. Each column takes the
/// type of its first non-null value (with none, the type its name has in
/// the catalog: text for most).
#[derive(Debug, Default, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

impl Table {
    pub fn into_result(self) -> Result<QueryResult, arrow::error::ArrowError> {
        let types: Vec<DataType> = self
            .columns
            .iter()
            .enumerate()
            .map(|(c, name)| column_type(&self.rows, c).unwrap_or_else(|| type_by_name(name)))
            .collect();
        let schema = Arc::new(Schema::new(
            self.columns
                .iter()
                .zip(&types)
                .map(|(name, t)| Field::new(name.as_str(), t.clone(), true))
                .collect::<Vec<_>>(),
        ));
        // No rows, no batch: a batch of no columns could not say how many
        // rows it has.
        let batches = if self.rows.is_empty() {
            Vec::new()
        } else {
            let arrays: Vec<ArrayRef> = types
                .iter()
                .enumerate()
                .map(|(c, t)| column_array(&self.rows, c, t))
                .collect();
            vec![RecordBatch::try_new(schema.clone(), arrays)?]
        };
        Ok(QueryResult {
            schema,
            batches,
            message: None,
        })
    }
}

fn column_type(rows: &[Vec<Value>], column: usize) -> Option<DataType> {
    rows.iter().find_map(|row| match row.get(column) {
        Some(Value::Int(_)) => Some(DataType::Int64),
        Some(Value::Bool(_)) => Some(DataType::Boolean),
        Some(Value::Text(_)) => Some(DataType::Utf8),
        Some(Value::Null) | None => None,
    })
}

/// The type of a column with no values to tell, so that a query describes
/// the same columns with rows as without (a driver describes a statement
/// before it runs it).
fn type_by_name(name: &str) -> DataType {
    match name {
        "oid" | "relchecks" | "reltablespace" | "attnum" | "atttypid" | "atttypmod"
        | "attrelid" | "pg_backend_pid" => DataType::Int64,
        "relhasindex"
        | "relhasrules"
        | "relhastriggers"
        | "relrowsecurity"
        | "relforcerowsecurity"
        | "relhasoids"
        | "relispartition"
        | "attnotnull"
        | "attisdropped"
        | "atthasdef"
        | "pg_is_in_recovery" => DataType::Boolean,
        _ => DataType::Utf8,
    }
}

fn column_array(rows: &[Vec<Value>], column: usize, t: &DataType) -> ArrayRef {
    match t {
        DataType::Int64 => Arc::new(Int64Array::from(
            rows.iter()
                .map(|row| match row.get(column) {
                    Some(Value::Int(i)) => Some(*i),
                    Some(Value::Text(s)) => s.parse().ok(),
                    _ => None,
                })
                .collect::<Vec<Option<i64>>>(),
        )),
        DataType::Boolean => Arc::new(BooleanArray::from(
            rows.iter()
                .map(|row| match row.get(column) {
                    Some(Value::Bool(b)) => Some(*b),
                    _ => None,
                })
                .collect::<Vec<Option<bool>>>(),
        )),
        _ => Arc::new(StringArray::from(
            rows.iter()
                .map(|row| match row.get(column) {
                    Some(Value::Text(s)) => Some(s.clone()),
                    Some(Value::Int(i)) => Some(i.to_string()),
                    Some(Value::Bool(b)) => Some(if *b { "t" } else { "f" }.to_string()),
                    Some(Value::Null) | None => None,
                })
                .collect::<Vec<Option<String>>>(),
        )),
    }
}

/// What kind of object a relation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Source,
    Table,
    View,
}

impl Kind {
    /// Its `pg_class.relkind`.
    pub fn relkind(self) -> char {
        match self {
            Kind::Source | Kind::Table => 'r',
            Kind::View => 'm',
        }
    }

    /// psql's name for that relkind.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Source | Kind::Table => "table",
            Kind::View => "materialized view",
        }
    }

    /// Whether a listing of `relkinds` shows it. fluxo's views are all
    /// materialized, so `\dv` (relkind `v`) lists them as well as `\dm`.
    fn listed_for(self, relkinds: &[char]) -> bool {
        relkinds.contains(&self.relkind()) || (self == Kind::View && relkinds.contains(&'v'))
    }
}

/// A source, table or view, as `pg_class` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub name: String,
    pub kind: Kind,
    pub oid: i64,
    /// What `\d+` shows in its Description column.
    pub description: String,
}

/// The oid of the relation named `name`: FNV-1a of the name, the same in
/// every query, connection and run, as psql asks for the details of a
/// relation by the oid its lookup returned.
pub fn oid_of(name: &str) -> i64 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.as_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    FIRST_OID + i64::from(hash % 2_000_000_000)
}

/// A column of a relation, with its Postgres type.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub pg_type: PgType,
    pub not_null: bool,
}

/// A Postgres type as `format_type` names it, its oid and its storage
/// (`p` plain, `x` extended, `m` main: psql's Storage column).
#[derive(Debug, Clone, PartialEq)]
pub struct PgType {
    pub name: String,
    pub oid: i64,
    pub storage: char,
}

/// The Postgres type of a column whose `DESCRIBE` type is `sql_type`; the
/// same type its values are sent as (text for what Postgres has no
/// counterpart of).
pub fn pg_type_of(sql_type: &str) -> PgType {
    let upper = sql_type.trim().to_ascii_uppercase();
    let (name, oid, storage) = match upper.as_str() {
        // The names `DESCRIBE` gives (fluxo_sql::json::sql_type_name), then
        // Arrow's names for the types it has no SQL name for.
        "BIGINT" => ("bigint", 20, 'p'),
        "INT" | "INTEGER" => ("integer", 23, 'p'),
        "SMALLINT" => ("smallint", 21, 'p'),
        "REAL" | "FLOAT16" => ("real", 700, 'p'),
        "DOUBLE" | "DOUBLE PRECISION" => ("double precision", 701, 'p'),
        "BOOLEAN" => ("boolean", 16, 'p'),
        "TEXT" | "VARCHAR" => ("text", 25, 'x'),
        "DATE" => ("date", 1082, 'p'),
        "TIMESTAMP" => ("timestamp without time zone", 1114, 'p'),
        "TIMESTAMPTZ" => ("timestamp with time zone", 1184, 'p'),
        "INTERVAL" => ("interval", 1186, 'p'),
        // Wider than BIGINT: sent as numeric.
        "BIGINT UNSIGNED" => ("numeric", 1700, 'm'),
        "BINARY" | "LARGEBINARY" | "BINARYVIEW" => ("bytea", 17, 'x'),
        other => {
            if other.starts_with("DECIMAL") || other.starts_with("NUMERIC") {
                let name = numeric_name(other).unwrap_or_else(|| "numeric".to_string());
                return PgType {
                    name,
                    oid: 1700,
                    storage: 'm',
                };
            }
            if other.starts_with("TIME32") || other.starts_with("TIME64") {
                ("time without time zone", 1083, 'p')
            } else if other.starts_with("DURATION") {
                ("interval", 1186, 'p')
            } else if other.starts_with("FIXEDSIZEBINARY") {
                ("bytea", 17, 'x')
            } else {
                ("text", 25, 'x')
            }
        }
    };
    PgType {
        name: name.to_string(),
        oid,
        storage,
    }
}

/// `numeric(p,s)` from `DECIMAL(p, s)` or `Decimal128(p, s)`.
fn numeric_name(sql_type: &str) -> Option<String> {
    let inside = sql_type.split_once('(')?.1.strip_suffix(')')?;
    let (precision, scale) = inside.split_once(',')?;
    let precision: u32 = precision.trim().parse().ok()?;
    let scale: i32 = scale.trim().parse().ok()?;
    Some(format!("numeric({precision},{scale})"))
}

/// Relations every catalog query might name without `pg_catalog.`.
const KNOWN_RELATIONS: &[&str] = &[
    "pg_am",
    "pg_attrdef",
    "pg_attribute",
    "pg_auth_members",
    "pg_authid",
    "pg_available_extensions",
    "pg_cast",
    "pg_class",
    "pg_collation",
    "pg_constraint",
    "pg_conversion",
    "pg_database",
    "pg_default_acl",
    "pg_depend",
    "pg_description",
    "pg_enum",
    "pg_event_trigger",
    "pg_extension",
    "pg_foreign_data_wrapper",
    "pg_foreign_server",
    "pg_foreign_table",
    "pg_index",
    "pg_indexes",
    "pg_inherits",
    "pg_language",
    "pg_matviews",
    "pg_namespace",
    "pg_opclass",
    "pg_operator",
    "pg_partitioned_table",
    "pg_policy",
    "pg_proc",
    "pg_publication",
    "pg_publication_namespace",
    "pg_publication_rel",
    "pg_range",
    "pg_rewrite",
    "pg_roles",
    "pg_sequence",
    "pg_sequences",
    "pg_settings",
    "pg_shdescription",
    "pg_stat_activity",
    "pg_stat_user_tables",
    "pg_statistic_ext",
    "pg_subscription",
    "pg_tables",
    "pg_tablespace",
    "pg_timezone_names",
    "pg_trigger",
    "pg_type",
    "pg_user",
    "pg_views",
];

/// The catalog relations whose rows are modelled here; a query that reads
/// any other one is about something fluxo does not have.
const MODELLED: &[&str] = &[
    "pg_am",
    "pg_attrdef",
    "pg_attribute",
    "pg_class",
    "pg_collation",
    "pg_database",
    "pg_namespace",
    "pg_type",
];

/// What a catalog query is about, read from its tokens.
#[derive(Debug)]
pub struct CatalogQuery {
    /// The catalog relations it reads, in order of appearance.
    relations: Vec<String>,
    /// The first relation of its top-level FROM.
    main: Option<String>,
    items: Vec<Item>,
    /// From `c.relkind IN ('r', 'p', ...)`.
    relkinds: Option<Vec<char>>,
    /// Regular expressions for the relation's, schema's and database's names.
    relname: Option<String>,
    nspname: Option<String>,
    datname: Option<String>,
    /// From `c.oid = '16384'` and `a.attrelid = '16384'`.
    oid: Option<i64>,
    attrelid: Option<i64>,
}

#[derive(Debug, PartialEq)]
enum Shape {
    Relations,
    Lookup,
    RelationInfo(i64),
    Attributes(i64),
    Namespaces,
    Databases,
    Unmodelled,
}

impl CatalogQuery {
    /// `None` unless `tokens` (one statement's significant tokens) is a
    /// query that reads a catalog relation.
    pub fn parse(tokens: &[Token]) -> Option<CatalogQuery> {
        if !tokens
            .first()
            .is_some_and(|t| is_word(t, "select") || is_word(t, "with"))
        {
            return None;
        }
        let relations = catalog_relations(tokens);
        if relations.is_empty() {
            return None;
        }
        let (items, end) = select_list(tokens).unwrap_or_default();
        let main = if tokens.get(end).is_some_and(|t| is_word(t, "from")) {
            first_relation(&tokens[end + 1..])
        } else {
            None
        };
        Some(CatalogQuery {
            relations,
            main,
            items,
            relkinds: relkinds(tokens),
            relname: pattern(tokens, "relname"),
            nspname: pattern(tokens, "nspname"),
            datname: pattern(tokens, "datname"),
            oid: equals_number(tokens, "oid"),
            attrelid: equals_number(tokens, "attrelid"),
        })
    }

    fn has(&self, name: &str) -> bool {
        self.items.iter().any(|i| i.name == name)
    }

    fn shape(&self) -> Shape {
        if self
            .relations
            .iter()
            .any(|r| !MODELLED.contains(&r.as_str()))
        {
            return Shape::Unmodelled;
        }
        let names: Vec<&str> = self.items.iter().map(|i| i.name.as_str()).collect();
        match self.main.as_deref() {
            Some("pg_class") if self.has("relchecks") => {
                self.oid.map_or(Shape::Unmodelled, Shape::RelationInfo)
            }
            Some("pg_class") if self.relkinds.is_some() && self.has("Name") => Shape::Relations,
            Some("pg_class") if names == ["oid", "nspname", "relname"] => Shape::Lookup,
            Some("pg_attribute") => self.attrelid.map_or(Shape::Unmodelled, Shape::Attributes),
            Some("pg_namespace") if self.has("Name") => Shape::Namespaces,
            Some("pg_database") if self.has("Name") => Shape::Databases,
            _ => Shape::Unmodelled,
        }
    }

    /// The answer: rows from fluxo's catalog for the shapes above, none for
    /// any other.
    pub async fn answer(
        &self,
        engine: &Engine,
        owner: &str,
        database: &str,
    ) -> Result<Table, SqlError> {
        Ok(match self.shape() {
            Shape::Relations => self.relation_list(&relations(engine).await?, owner),
            Shape::Lookup => self.lookup(&relations(engine).await?),
            Shape::RelationInfo(oid) => self.relation_info(find(&relations(engine).await?, oid)),
            Shape::Attributes(oid) => {
                let relations = relations(engine).await?;
                match find(&relations, oid) {
                    Some(relation) => {
                        let columns = columns(engine, &relation.name).await?;
                        self.attributes(relation, &columns)
                    }
                    None => self.empty(),
                }
            }
            Shape::Namespaces => self.namespaces(owner),
            Shape::Databases => self.databases(owner, database),
            Shape::Unmodelled => self.empty(),
        })
    }

    fn table(&self, rows: Vec<Vec<Value>>) -> Table {
        Table {
            columns: self.items.iter().map(|i| i.name.clone()).collect(),
            rows,
        }
    }

    fn empty(&self) -> Table {
        self.table(Vec::new())
    }

    /// One row: `value` of each item of the SELECT list.
    fn row(&self, value: impl Fn(&str) -> Value) -> Vec<Value> {
        self.items.iter().map(|i| value(i.name.as_str())).collect()
    }

    fn relation_list(&self, relations: &[Relation], owner: &str) -> Table {
        let relkinds = self.relkinds.clone().unwrap_or_default();
        let named = name_filter(self.relname.as_deref());
        if !name_filter(self.nspname.as_deref())(SCHEMA) {
            return self.empty();
        }
        let rows = relations
            .iter()
            .filter(|r| r.kind.listed_for(&relkinds) && named(r.name.as_str()))
            .map(|r| {
                self.row(|item| match item {
                    "Schema" => Value::text(SCHEMA),
                    "Name" => Value::text(&r.name),
                    "Type" => Value::text(r.kind.label()),
                    "Owner" => Value::text(owner),
                    "Persistence" => Value::text("permanent"),
                    "Description" => Value::text(&r.description),
                    _ => Value::Null,
                })
            })
            .collect();
        self.table(rows)
    }

    fn lookup(&self, relations: &[Relation]) -> Table {
        let named = name_filter(self.relname.as_deref());
        if !name_filter(self.nspname.as_deref())(SCHEMA) {
            return self.empty();
        }
        let rows = relations
            .iter()
            .filter(|r| named(r.name.as_str()))
            .map(|r| {
                self.row(|item| match item {
                    "oid" => Value::Int(r.oid),
                    "nspname" => Value::text(SCHEMA),
                    "relname" => Value::text(&r.name),
                    _ => Value::Null,
                })
            })
            .collect();
        self.table(rows)
    }

    /// psql's second query for `\d NAME`: what kind of relation, and which
    /// of the features it would describe next (indexes, rules, triggers,
    /// row security, partitions) the relation has: none.
    fn relation_info(&self, relation: Option<&Relation>) -> Table {
        let Some(r) = relation else {
            return self.empty();
        };
        let row = self.row(|item| match item {
            "relchecks" | "reltablespace" => Value::Int(0),
            "relkind" => Value::Text(r.kind.relkind().to_string()),
            "relhasindex"
            | "relhasrules"
            | "relhastriggers"
            | "relrowsecurity"
            | "relforcerowsecurity"
            | "relhasoids"
            | "relispartition" => Value::Bool(false),
            "relpersistence" => Value::text("p"),
            "relreplident" => Value::text("d"),
            "relname" => Value::text(&r.name),
            "oid" => Value::Int(r.oid),
            // No access method: psql then prints none.
            "amname" => Value::Null,
            // Options, the type a table is of: none.
            _ => Value::text(""),
        });
        self.table(vec![row])
    }

    fn attributes(&self, relation: &Relation, columns: &[Column]) -> Table {
        let rows = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                self.row(|item| match item {
                    "attname" => Value::text(&c.name),
                    "format_type" => Value::text(&c.pg_type.name),
                    "attnotnull" => Value::Bool(c.not_null),
                    "attidentity" | "attgenerated" | "attcompression" => Value::text(""),
                    "attstorage" => Value::Text(c.pg_type.storage.to_string()),
                    "attnum" => Value::Int(i as i64 + 1),
                    "atttypid" => Value::Int(c.pg_type.oid),
                    "atttypmod" => Value::Int(-1),
                    "attrelid" => Value::Int(relation.oid),
                    "attisdropped" | "atthasdef" => Value::Bool(false),
                    // Defaults, collations, statistics targets, comments: none.
                    _ => Value::Null,
                })
            })
            .collect();
        self.table(rows)
    }

    fn namespaces(&self, owner: &str) -> Table {
        if !name_filter(self.nspname.as_deref())(SCHEMA) {
            return self.empty();
        }
        let row = self.row(|item| match item {
            "Name" => Value::text(SCHEMA),
            "Owner" => Value::text(owner),
            "Description" => Value::text("fluxo's sources, tables and views"),
            _ => Value::Null,
        });
        self.table(vec![row])
    }

    fn databases(&self, owner: &str, database: &str) -> Table {
        if !name_filter(self.datname.as_deref())(database) {
            return self.empty();
        }
        let row = self.row(|item| match item {
            "Name" => Value::text(database),
            "Owner" => Value::text(owner),
            "Encoding" => Value::text("UTF8"),
            "Collate" | "Ctype" => Value::text("C"),
            "Locale Provider" => Value::text("libc"),
            "Tablespace" => Value::text("pg_default"),
            _ => Value::Null,
        });
        self.table(vec![row])
    }
}

/// Whether a name passes the query's regular expression (always, without
/// one; never, with one that does not compile).
fn name_filter(pattern: Option<&str>) -> Box<dyn Fn(&str) -> bool> {
    match pattern {
        None => Box::new(|_| true),
        Some(pattern) => match regex::Regex::new(pattern) {
            Ok(re) => Box::new(move |name| re.is_match(name)),
            Err(_) => Box::new(|_| false),
        },
    }
}

fn find(relations: &[Relation], oid: i64) -> Option<&Relation> {
    relations.iter().find(|r| r.oid == oid)
}

fn catalog_relations(tokens: &[Token]) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let Token::Word(word) = token else {
            continue;
        };
        // A function, not a relation.
        if tokens.get(i + 1) == Some(&Token::LParen) {
            continue;
        }
        let name = word.value.to_lowercase();
        let is_relation = if i >= 1 && tokens[i - 1] == Token::Period {
            let qualified = i >= 2 && is_word(&tokens[i - 2], "pg_catalog");
            // `::pg_catalog.regclass`, `AS pg_catalog.text` and
            // `COLLATE pg_catalog.default` name types and collations.
            let type_or_collation = i >= 3
                && (tokens[i - 3] == Token::DoubleColon
                    || is_word(&tokens[i - 3], "as")
                    || is_word(&tokens[i - 3], "collate"));
            qualified && !type_or_collation
        } else {
            // Unqualified, a catalog relation's name is one only where a
            // relation goes (not, say, a column that happens to be named so).
            let where_relations_go = i >= 1
                && (is_word(&tokens[i - 1], "from")
                    || is_word(&tokens[i - 1], "join")
                    || tokens[i - 1] == Token::Comma);
            where_relations_go && KNOWN_RELATIONS.contains(&name.as_str())
        };
        if is_relation && !found.contains(&name) {
            found.push(name);
        }
    }
    found
}

fn first_relation(tokens: &[Token]) -> Option<String> {
    match tokens {
        [schema, Token::Period, Token::Word(w), ..] if is_word(schema, "pg_catalog") => {
            Some(w.value.to_lowercase())
        }
        [Token::Word(w), ..] => Some(w.value.to_lowercase()),
        _ => None,
    }
}

/// The kinds in `relkind IN ('r', 'p', ...)`.
fn relkinds(tokens: &[Token]) -> Option<Vec<char>> {
    let start = tokens
        .windows(3)
        .position(|w| is_word(&w[0], "relkind") && is_word(&w[1], "in") && w[2] == Token::LParen)?;
    let mut kinds = Vec::new();
    for token in &tokens[start + 3..] {
        match token {
            Token::RParen => return Some(kinds),
            Token::Comma => {}
            other => {
                if let Some(kind) = literal(other).and_then(|s| s.chars().next()) {
                    kinds.push(kind);
                }
            }
        }
    }
    None
}

/// The regular expression `column` is matched with (`c.relname
/// OPERATOR(pg_catalog.~) '^(v)$'`, `c.relname ~ '...'`), or, for `column =
/// 'name'`, one that matches exactly that name.
fn pattern(tokens: &[Token], column: &str) -> Option<String> {
    for (i, token) in tokens.iter().enumerate() {
        if !is_word(token, column) {
            continue;
        }
        let found = match &tokens[i + 1..] {
            [Token::Tilde, value, ..] => literal(value),
            [operator, Token::LParen, schema, Token::Period, Token::Tilde, Token::RParen, value, ..]
                if is_word(operator, "operator") && is_word(schema, "pg_catalog") =>
            {
                literal(value)
            }
            [Token::Eq, value @ Token::SingleQuotedString(_), ..] => {
                literal(value).map(|name| format!("^({})$", regex::escape(&name)))
            }
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// The number in `column = 'N'` (or `column = N`).
fn equals_number(tokens: &[Token], column: &str) -> Option<i64> {
    for w in tokens.windows(3) {
        if is_word(&w[0], column) && w[1] == Token::Eq {
            if let Some(n) = literal(&w[2]).and_then(|v| v.trim().parse().ok()) {
                return Some(n);
            }
        }
    }
    None
}

/// Every source, table and view, by name.
pub async fn relations(engine: &Engine) -> Result<Vec<Relation>, SqlError> {
    let mut relations = Vec::new();
    for (kind, show) in [
        (Kind::Source, "SHOW SOURCES"),
        (Kind::Table, "SHOW TABLES"),
        (Kind::View, "SHOW VIEWS"),
    ] {
        for row in text_rows(&engine.execute_one(show).await?) {
            // SHOW's columns: the name, then two that describe the object.
            let mut columns = row.into_iter();
            let Some(name) = columns.next() else {
                continue;
            };
            let a = columns.next().unwrap_or_default();
            let b = columns.next().unwrap_or_default();
            let description = match kind {
                Kind::Source => format!("source over topic {a} ({b})"),
                Kind::Table => format!("{a} table in {b}"),
                Kind::View => format!("materialized view over {a} ({b})"),
            };
            relations.push(Relation {
                oid: oid_of(&name),
                name,
                kind,
                description,
            });
        }
    }
    relations.sort_by(|x, y| x.name.cmp(&y.name));
    Ok(relations)
}

/// The rows of a result whose columns are all text (SHOW's).
fn text_rows(result: &QueryResult) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for batch in &result.batches {
        let columns: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| c.as_string_opt::<i32>())
            .collect();
        for row in 0..batch.num_rows() {
            rows.push(
                columns
                    .iter()
                    .map(|c| match c {
                        Some(c) => c.value(row).to_string(),
                        None => String::new(),
                    })
                    .collect(),
            );
        }
    }
    rows
}

/// The columns of relation `name`, from `DESCRIBE`.
pub async fn columns(engine: &Engine, name: &str) -> Result<Vec<Column>, SqlError> {
    let result = engine
        .execute_one(&format!("DESCRIBE {}", quote_ident(name)))
        .await?;
    let mut columns = Vec::new();
    for batch in &result.batches {
        if batch.num_columns() < 3 {
            continue;
        }
        let (Some(names), Some(types), Some(nullable)) = (
            batch.column(0).as_string_opt::<i32>(),
            batch.column(1).as_string_opt::<i32>(),
            batch.column(2).as_boolean_opt(),
        ) else {
            continue;
        };
        for row in 0..batch.num_rows() {
            columns.push(Column {
                name: names.value(row).to_string(),
                pg_type: pg_type_of(types.value(row)),
                not_null: !nullable.value(row),
            });
        }
    }
    Ok(columns)
}

/// `pg_get_viewdef`: the query of the view with oid (or name) `view`.
pub async fn view_definition(engine: &Engine, view: &str) -> Result<Option<String>, SqlError> {
    let name = match view.trim().parse::<i64>() {
        Ok(oid) => match find(&relations(engine).await?, oid) {
            Some(relation) => relation.name.clone(),
            None => return Ok(None),
        },
        Err(_) => view.to_string(),
    };
    for pipeline in engine.pipelines() {
        if pipeline.name != name {
            continue;
        }
        if let Ok(Statement::CreateView(def)) = parse_statement_str(&pipeline.sql) {
            return Ok(Some(format!(" {};", def.query)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::significant;

    // The queries psql 15 sends (`psql -E`), verbatim.
    const LIST: &str = r#"SELECT n.nspname as "Schema",
  c.relname as "Name",
  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' WHEN 't' THEN 'TOAST table' WHEN 'f' THEN 'foreign table' WHEN 'p' THEN 'partitioned table' WHEN 'I' THEN 'partitioned index' END as "Type",
  pg_catalog.pg_get_userbyid(c.relowner) as "Owner"
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam
WHERE c.relkind IN ('r','p','v','m','S','f','')
      AND n.nspname <> 'pg_catalog'
      AND n.nspname !~ '^pg_toast'
      AND n.nspname <> 'information_schema'
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 1,2;"#;

    const LIST_VIEWS: &str = r#"SELECT n.nspname as "Schema",
  c.relname as "Name",
  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' WHEN 't' THEN 'TOAST table' WHEN 'f' THEN 'foreign table' WHEN 'p' THEN 'partitioned table' WHEN 'I' THEN 'partitioned index' END as "Type",
  pg_catalog.pg_get_userbyid(c.relowner) as "Owner",
  CASE c.relpersistence WHEN 'p' THEN 'permanent' WHEN 't' THEN 'temporary' WHEN 'u' THEN 'unlogged' END as "Persistence",
  pg_catalog.pg_size_pretty(pg_catalog.pg_table_size(c.oid)) as "Size",
  pg_catalog.obj_description(c.oid, 'pg_class') as "Description"
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('v','')
      AND n.nspname <> 'pg_catalog'
      AND n.nspname !~ '^pg_toast'
      AND n.nspname <> 'information_schema'
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 1,2;"#;

    const LIST_TABLES_LIKE: &str = r#"SELECT n.nspname as "Schema",
  c.relname as "Name",
  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' WHEN 't' THEN 'TOAST table' WHEN 'f' THEN 'foreign table' WHEN 'p' THEN 'partitioned table' WHEN 'I' THEN 'partitioned index' END as "Type",
  pg_catalog.pg_get_userbyid(c.relowner) as "Owner"
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam
WHERE c.relkind IN ('r','p','t','s','')
  AND c.relname OPERATOR(pg_catalog.~) '^(b.*)$' COLLATE pg_catalog.default
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 1,2;"#;

    const LOOKUP: &str = r#"SELECT c.oid,
  n.nspname,
  c.relname
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname OPERATOR(pg_catalog.~) '^(per_auction)$' COLLATE pg_catalog.default
  AND n.nspname OPERATOR(pg_catalog.~) '^(public)$' COLLATE pg_catalog.default
ORDER BY 2, 3;"#;

    const INFO: &str = r#"SELECT c.relchecks, c.relkind, c.relhasindex, c.relhasrules, c.relhastriggers, c.relrowsecurity, c.relforcerowsecurity, false AS relhasoids, c.relispartition, '', c.reltablespace, CASE WHEN c.reloftype = 0 THEN '' ELSE c.reloftype::pg_catalog.regtype::pg_catalog.text END, c.relpersistence, c.relreplident, am.amname
FROM pg_catalog.pg_class c
 LEFT JOIN pg_catalog.pg_class tc ON (c.reltoastrelid = tc.oid)
LEFT JOIN pg_catalog.pg_am am ON (c.relam = am.oid)
WHERE c.oid = 'OID';"#;

    const ATTRIBUTES: &str = r#"SELECT a.attname,
  pg_catalog.format_type(a.atttypid, a.atttypmod),
  (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true)
   FROM pg_catalog.pg_attrdef d
   WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.atthasdef),
  a.attnotnull,
  (SELECT c.collname FROM pg_catalog.pg_collation c, pg_catalog.pg_type t
   WHERE c.oid = a.attcollation AND t.oid = a.atttypid AND a.attcollation <> t.typcollation) AS attcollation,
  a.attidentity,
  a.attgenerated,
  a.attstorage,
  a.attcompression AS attcompression,
  CASE WHEN a.attstattarget=-1 THEN NULL ELSE a.attstattarget END AS attstattarget,
  pg_catalog.col_description(a.attrelid, a.attnum)
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = 'OID' AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;"#;

    const INHERITS: &str = r#"SELECT c.oid::pg_catalog.regclass
FROM pg_catalog.pg_class c, pg_catalog.pg_inherits i
WHERE c.oid = i.inhparent AND i.inhrelid = 'OID'
  AND c.relkind != 'p' AND c.relkind != 'I'
ORDER BY inhseqno;"#;

    const POLICIES: &str = r#"SELECT pol.polname, pol.polpermissive,
  CASE WHEN pol.polroles = '{0}' THEN NULL ELSE pg_catalog.array_to_string(array(select rolname from pg_catalog.pg_roles where oid = any (pol.polroles) order by 1),',') END,
  pg_catalog.pg_get_expr(pol.polqual, pol.polrelid),
  pg_catalog.pg_get_expr(pol.polwithcheck, pol.polrelid),
  CASE pol.polcmd
    WHEN 'r' THEN 'SELECT'
    WHEN 'a' THEN 'INSERT'
    WHEN 'w' THEN 'UPDATE'
    WHEN 'd' THEN 'DELETE'
    END AS cmd
FROM pg_catalog.pg_policy pol
WHERE pol.polrelid = 'OID' ORDER BY 1;"#;

    const SCHEMAS: &str = r#"SELECT n.nspname AS "Name",
  pg_catalog.pg_get_userbyid(n.nspowner) AS "Owner"
FROM pg_catalog.pg_namespace n
WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
ORDER BY 1;"#;

    fn query(sql: &str) -> CatalogQuery {
        CatalogQuery::parse(&significant(sql).unwrap()).unwrap()
    }

    fn with_oid(sql: &str, oid: i64) -> String {
        sql.replace("OID", &oid.to_string())
    }

    fn relations() -> Vec<Relation> {
        let mut all = vec![
            relation("bids", Kind::Source),
            relation("per_auction", Kind::View),
            relation("archive", Kind::Table),
        ];
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    fn relation(name: &str, kind: Kind) -> Relation {
        Relation {
            name: name.into(),
            kind,
            oid: oid_of(name),
            description: format!("about {name}"),
        }
    }

    fn texts(table: &Table, column: usize) -> Vec<String> {
        table
            .rows
            .iter()
            .map(|r| match &r[column] {
                Value::Text(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn list_queries_show_relations_of_the_kinds_asked_for() {
        let all = query(LIST);
        assert_eq!(all.shape(), Shape::Relations);
        let table = all.relation_list(&relations(), "fluxo");
        assert_eq!(table.columns, ["Schema", "Name", "Type", "Owner"]);
        assert_eq!(texts(&table, 1), ["archive", "bids", "per_auction"]);
        assert_eq!(texts(&table, 2), ["table", "table", "materialized view"]);
        assert_eq!(texts(&table, 3), ["fluxo", "fluxo", "fluxo"]);

        // \dv+ lists the (materialized) views, with their description.
        let views = query(LIST_VIEWS).relation_list(&relations(), "fluxo");
        assert_eq!(texts(&views, 1), ["per_auction"]);
        assert_eq!(views.columns.len(), 7);
        assert_eq!(texts(&views, 6), ["about per_auction"]);
        assert_eq!(views.rows[0][5], Value::Null);

        // \dt b*: tables whose name matches.
        let tables = query(LIST_TABLES_LIKE).relation_list(&relations(), "fluxo");
        assert_eq!(texts(&tables, 1), ["bids"]);
    }

    #[test]
    fn describe_looks_up_by_name_then_by_oid() {
        let lookup = query(LOOKUP);
        assert_eq!(lookup.shape(), Shape::Lookup);
        let found = lookup.lookup(&relations());
        assert_eq!(
            found.rows,
            [[
                Value::Int(oid_of("per_auction")),
                Value::text("public"),
                Value::text("per_auction")
            ]]
        );

        let oid = oid_of("per_auction");
        let info = query(&with_oid(INFO, oid));
        assert_eq!(info.shape(), Shape::RelationInfo(oid));
        let all = relations();
        let table = info.relation_info(find(&all, oid));
        assert_eq!(table.rows.len(), 1);
        let row = &table.rows[0];
        assert_eq!(row.len(), 15);
        assert_eq!(row[0], Value::Int(0));
        assert_eq!(row[1], Value::text("m"));
        assert_eq!(row[2], Value::Bool(false));
        assert_eq!(row[7], Value::Bool(false));
        assert_eq!(row[9], Value::text(""));
        assert_eq!(row[11], Value::text(""));
        assert_eq!(row[12], Value::text("p"));
        assert_eq!(row[14], Value::Null);

        let attributes = query(&with_oid(ATTRIBUTES, oid));
        assert_eq!(attributes.shape(), Shape::Attributes(oid));
        let columns = vec![
            Column {
                name: "auction".into(),
                pg_type: pg_type_of("BIGINT"),
                not_null: true,
            },
            Column {
                name: "window_start".into(),
                pg_type: pg_type_of("TIMESTAMP"),
                not_null: false,
            },
        ];
        let table = attributes.attributes(&all[find_index(&all, oid)], &columns);
        assert_eq!(table.columns.len(), 11);
        assert_eq!(texts(&table, 0), ["auction", "window_start"]);
        assert_eq!(texts(&table, 1), ["bigint", "timestamp without time zone"]);
        assert_eq!(table.rows[0][2], Value::Null);
        assert_eq!(table.rows[0][3], Value::Bool(true));
        assert_eq!(table.rows[1][3], Value::Bool(false));
        assert_eq!(table.rows[0][4], Value::Null);
        assert_eq!(texts(&table, 7), ["p", "p"]);
    }

    fn find_index(all: &[Relation], oid: i64) -> usize {
        all.iter().position(|r| r.oid == oid).unwrap()
    }

    #[test]
    fn queries_about_what_fluxo_does_not_have_are_empty() {
        for sql in [INHERITS, POLICIES] {
            let q = query(&with_oid(sql, oid_of("bids")));
            assert_eq!(q.shape(), Shape::Unmodelled, "{sql}");
            assert!(q.empty().rows.is_empty());
        }
        assert_eq!(query(&with_oid(POLICIES, 1)).empty().columns.len(), 6);
        // Not catalog queries at all.
        for sql in [
            "SELECT * FROM bids",
            "SELECT pg_class FROM v",
            "SELECT pg_catalog.version()",
            "SELECT '1'::pg_catalog.oid",
            "CREATE MATERIALIZED VIEW v AS SELECT * FROM pg_class",
        ] {
            assert!(
                CatalogQuery::parse(&significant(sql).unwrap()).is_none(),
                "{sql}"
            );
        }
    }

    #[test]
    fn schemas_and_databases() {
        let q = query(SCHEMAS);
        assert_eq!(q.shape(), Shape::Namespaces);
        let table = q.namespaces("fluxo");
        assert_eq!(table.rows, [[Value::text("public"), Value::text("fluxo")]]);
    }

    #[test]
    fn oids_are_stable_and_in_the_user_range() {
        assert_eq!(oid_of("per_auction"), oid_of("per_auction"));
        assert_ne!(oid_of("per_auction"), oid_of("per_auction2"));
        for name in ["", "a", "bids", "a much longer name than usual"] {
            let oid = oid_of(name);
            assert!(
                (FIRST_OID..i64::from(i32::MAX)).contains(&oid),
                "{name}: {oid}"
            );
        }
    }

    #[test]
    fn describe_types_become_postgres_type_names() {
        let cases = [
            ("BIGINT", "bigint", 20),
            ("INT", "integer", 23),
            ("SMALLINT", "smallint", 21),
            ("REAL", "real", 700),
            ("DOUBLE", "double precision", 701),
            ("BOOLEAN", "boolean", 16),
            ("TEXT", "text", 25),
            ("DATE", "date", 1082),
            ("TIMESTAMP", "timestamp without time zone", 1114),
            ("TIMESTAMPTZ", "timestamp with time zone", 1184),
            ("INTERVAL", "interval", 1186),
            ("DECIMAL(10, 2)", "numeric(10,2)", 1700),
            ("Decimal256(40, 0)", "numeric(40,0)", 1700),
            ("BIGINT UNSIGNED", "numeric", 1700),
            ("Binary", "bytea", 17),
            ("Time64(Microsecond)", "time without time zone", 1083),
            ("List(Field { name: \"item\" })", "text", 25),
        ];
        for (sql_type, name, oid) in cases {
            let t = pg_type_of(sql_type);
            assert_eq!((t.name.as_str(), t.oid), (name, oid), "{sql_type}");
        }
        assert_eq!(pg_type_of("TEXT").storage, 'x');
        assert_eq!(pg_type_of("BIGINT").storage, 'p');
    }

    #[test]
    fn tables_become_typed_query_results() {
        let table = Table {
            columns: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            rows: vec![
                vec![
                    Value::Int(1),
                    Value::text("x"),
                    Value::Bool(true),
                    Value::Null,
                ],
                vec![Value::Null, Value::Null, Value::Bool(false), Value::Null],
            ],
        };
        let result = table.into_result().unwrap();
        let types: Vec<DataType> = result
            .schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        assert_eq!(
            types,
            [
                DataType::Int64,
                DataType::Utf8,
                DataType::Boolean,
                DataType::Utf8
            ]
        );
        assert_eq!(result.batches[0].num_rows(), 2);
        let empty = Table {
            columns: vec!["x".into(), "oid".into(), "attnotnull".into()],
            rows: vec![],
        }
        .into_result()
        .unwrap();
        assert!(empty.batches.is_empty());
        let types: Vec<DataType> = empty
            .schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        assert_eq!(types, [DataType::Utf8, DataType::Int64, DataType::Boolean]);
    }
}
