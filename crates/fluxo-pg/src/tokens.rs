//! Statements as tokens: enough structure to route a statement (a psql
//! catalog query, a session function, `SHOW`, `SUBSCRIBE`) and to read the
//! few facts a catalog answer needs, without a parser that would have to
//! accept every Postgres construct those queries use (`OPERATOR(pg_catalog.~)`,
//! `COLLATE pg_catalog.default`, `::pg_catalog.regclass`, ...).
//!
//! Literals are kept exactly as written (`''` stays doubled), so tokens
//! print back to the SQL they came from.

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// Every token of `sql`, whitespace and comments included; `None` if it does
/// not tokenize (an unterminated string), which the engine then reports.
pub fn all_tokens(sql: &str) -> Option<Vec<Token>> {
    Tokenizer::new(&PostgreSqlDialect {}, sql)
        .with_unescape(false)
        .tokenize()
        .ok()
}

fn is_blank(token: &Token) -> bool {
    matches!(token, Token::Whitespace(_) | Token::EOF)
}

/// The tokens that carry meaning: no whitespace, no comments.
pub fn significant(sql: &str) -> Option<Vec<Token>> {
    Some(
        all_tokens(sql)?
            .into_iter()
            .filter(|t| !is_blank(t))
            .collect(),
    )
}

/// `sql` cut at the semicolons between statements (never at one inside a
/// string or a comment). Statements with nothing but whitespace or comments
/// are dropped.
pub fn split_statements(sql: &str) -> Vec<String> {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .with_unescape(false)
        .tokenize_with_location()
    else {
        return vec![sql.to_string()];
    };
    // Statements are cut out of the text itself, so every literal and
    // comment stays exactly as the client wrote it.
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let byte_at = |line: u64, column: u64| -> usize {
        let Some(&from) = line_starts.get((line as usize).saturating_sub(1)) else {
            return sql.len();
        };
        sql[from..]
            .char_indices()
            .nth((column as usize).saturating_sub(1))
            .map_or(sql.len(), |(i, _)| from + i)
    };
    let mut statements = Vec::new();
    let mut from = 0;
    let mut has_content = false;
    for token in tokens {
        if token.token == Token::SemiColon {
            let at = byte_at(token.span.start.line, token.span.start.column);
            if has_content {
                statements.push(sql[from..at.max(from)].trim().to_string());
            }
            from = (at + 1).min(sql.len());
            has_content = false;
        } else {
            has_content |= !is_blank(&token.token);
        }
    }
    if has_content {
        statements.push(sql[from..].trim().to_string());
    }
    statements
}

/// Whether `token` is the unquoted word `word` (in any case).
pub fn is_word(token: &Token, word: &str) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

/// An identifier as Postgres folds it: unquoted in lower case, quoted as is.
pub fn ident(token: &Token) -> Option<String> {
    match token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_lowercase()),
        Token::Word(w) => Some(w.value.clone()),
        _ => None,
    }
}

/// The value of a string or number literal.
pub fn literal(token: &Token) -> Option<String> {
    match token {
        Token::SingleQuotedString(s) => Some(s.replace("''", "'")),
        Token::Number(n, _) => Some(n.clone()),
        _ => None,
    }
}

/// One item of a SELECT list.
#[derive(Debug, Clone)]
pub struct Item {
    /// The column name Postgres would give it: its alias, the column it
    /// names, the function it calls, or `?column?`.
    pub name: String,
    pub tokens: Vec<Token>,
}

impl Item {
    fn new(tokens: Vec<Token>) -> Item {
        Item {
            name: item_name(&tokens),
            tokens,
        }
    }
}

fn item_name(tokens: &[Token]) -> String {
    let n = tokens.len();
    if n >= 2 && is_word(&tokens[n - 2], "as") {
        if let Some(alias) = ident(&tokens[n - 1]) {
            return alias;
        }
    }
    match tokens {
        [column] | [_, Token::Period, column] => {
            if let Some(name) = ident(column) {
                return name;
            }
        }
        _ => {}
    }
    if tokens.first().is_some_and(|t| is_word(t, "case")) {
        return "case".to_string();
    }
    let function = match tokens {
        [name, Token::LParen, ..] => Some(name),
        [_, Token::Period, name, Token::LParen, ..] => Some(name),
        _ => None,
    };
    if let Some(name) = function {
        if tokens.last() == Some(&Token::RParen) {
            if let Some(name) = ident(name) {
                return name;
            }
        }
    }
    "?column?".to_string()
}

/// Words that end a SELECT list at the top level.
const END_OF_SELECT_LIST: &[&str] = &[
    "from",
    "where",
    "group",
    "having",
    "window",
    "order",
    "limit",
    "offset",
    "fetch",
    "for",
    "into",
    "union",
    "intersect",
    "except",
];

/// The items of the top-level SELECT list of `tokens` (significant tokens of
/// one statement), and the index of the token that ends the list (`len` if
/// nothing follows it).
pub fn select_list(tokens: &[Token]) -> Option<(Vec<Item>, usize)> {
    if !tokens.first().is_some_and(|t| is_word(t, "select")) {
        return None;
    }
    let mut i = 1;
    if tokens
        .get(i)
        .is_some_and(|t| is_word(t, "distinct") || is_word(t, "all"))
    {
        i += 1;
    }
    let mut items = Vec::new();
    let mut current = Vec::new();
    let mut depth = 0usize;
    while i < tokens.len() {
        let token = &tokens[i];
        match token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth == 0 {
            if *token == Token::Comma {
                items.push(Item::new(std::mem::take(&mut current)));
                i += 1;
                continue;
            }
            if *token == Token::SemiColon || END_OF_SELECT_LIST.iter().any(|w| is_word(token, w)) {
                break;
            }
        }
        current.push(token.clone());
        i += 1;
    }
    if !current.is_empty() {
        items.push(Item::new(current));
    }
    Some((items, i))
}

/// `tokens` (the inside of a parenthesis) cut at its top-level commas.
pub fn split_top_level_commas(tokens: &[Token]) -> Vec<&[Token]> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, token) in tokens.iter().enumerate() {
        match token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
            Token::Comma if depth == 0 => {
                parts.push(&tokens[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < tokens.len() {
        parts.push(&tokens[start..]);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_at_semicolons_outside_strings_and_comments() {
        let script = "SET a = 'x;y'; -- c; d\n SELECT 1 ;; /* ; */ ; SHOW VIEWS";
        assert_eq!(
            split_statements(script),
            vec!["SET a = 'x;y'", "-- c; d\n SELECT 1", "SHOW VIEWS"]
        );
        assert!(split_statements(" ; -- nothing\n").is_empty());
        // Literals print back exactly as written.
        assert_eq!(
            split_statements("SELECT 'it''s', E'a\\nb'"),
            vec!["SELECT 'it''s', E'a\\nb'"]
        );
    }

    #[test]
    fn select_items_are_named_as_postgres_names_columns() {
        let tokens = significant(
            "SELECT n.nspname as \"Schema\", c.relname, pg_catalog.format_type(a.atttypid, a.atttypmod), \
             CASE WHEN x THEN 'a' END, '', (SELECT 1), false AS relhasoids, count(*) \
             FROM pg_catalog.pg_class c WHERE c.oid = '1'",
        )
        .unwrap();
        let (items, end) = select_list(&tokens).unwrap();
        let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Schema",
                "relname",
                "format_type",
                "case",
                "?column?",
                "?column?",
                "relhasoids",
                "count"
            ]
        );
        assert!(is_word(&tokens[end], "from"));
    }

    #[test]
    fn literals_and_identifiers() {
        let tokens = significant("x \"MixedCase\" 'it''s' 42").unwrap();
        assert_eq!(ident(&tokens[0]).as_deref(), Some("x"));
        assert_eq!(ident(&tokens[1]).as_deref(), Some("MixedCase"));
        assert_eq!(literal(&tokens[2]).as_deref(), Some("it's"));
        assert_eq!(literal(&tokens[3]).as_deref(), Some("42"));
        let args = significant("'1'::oid, true, f(a, b)").unwrap();
        assert_eq!(split_top_level_commas(&args).len(), 3);
    }
}
