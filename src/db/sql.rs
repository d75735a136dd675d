//! The SQL analyser: a lexer (not regular expressions) and a small analysis over its tokens,
//! giving a query's operation, collection, semantic-convention summary and sanitised text.
//!
//! - Comments (`--`, `/* */`, nested in PostgreSQL), string literals with escapes (`''`,
//!   `E'\''`), PostgreSQL dollar-quoted strings, quoted identifiers (`"…"`, `` `…` ``, `[…]`),
//!   numbers, placeholders (`$1`, `?`, `:name`, `@p1`).
//! - Summary: `{operation} {target} …` in the order they appear (`INSERT shipping_details
//!   SELECT orders`, `SELECT songs artists` for a join), CTE names and aliases left out, at most
//!   255 characters and never cut inside a name.
//! - Sanitised text: literals replaced by `?`, lists of literals collapsed (`IN (?)`),
//!   parameters kept, comments removed, whitespace folded, bounded in length.
//! - Total on any input, linear in its length; results are cached by query text in a bounded
//!   cache, so a repeated query costs a lookup.

use std::sync::Arc;

use super::cache::TextCache;

/// What the analyser found in a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// `db.operation.name`: the first statement's main operation (`SELECT`, `CREATE TABLE`, …).
    pub operation: Option<String>,
    /// `db.collection.name`: the main operation's first target.
    pub collection: Option<String>,
    /// `db.query.summary`.
    pub summary: String,
    /// `db.query.text`, sanitised.
    pub sanitized: String,
}

/// Bound of the summary, per the semantic conventions.
pub const MAX_SUMMARY: usize = 255;
/// Bound of the sanitised text.
pub const MAX_SANITIZED: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok<'a> {
    Word(&'a str),
    /// A quoted identifier's text, and whether its quotes were `"` (not `` ` `` or `[ ]`).
    Quoted(&'a str, bool),
    Literal,
    Param(&'a str),
    Punct(char),
    Op(&'a str),
}

/// Splits SQL into tokens, dropping whitespace and comments. Never fails: anything it does not
/// recognise becomes an operator token of one character.
fn lex(sql: &str) -> Vec<Tok<'_>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let n = b.len();
    while i < n {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < n && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Nested, as PostgreSQL does.
                let mut depth = 0usize;
                while i < n {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'\'' => {
                i = skip_string(b, i + 1, false);
                out.push(Tok::Literal);
            }
            b'E' | b'e' if b.get(i + 1) == Some(&b'\'') => {
                i = skip_string(b, i + 2, true);
                out.push(Tok::Literal);
            }
            b'$' if b.get(i + 1).is_some_and(|d| d.is_ascii_digit()) => {
                let s = i;
                i += 1;
                while i < n && b[i].is_ascii_digit() {
                    i += 1;
                }
                out.push(Tok::Param(&sql[s..i]));
            }
            b'$' => {
                // Dollar-quoted string: $tag$ … $tag$.
                let s = i;
                let mut j = i + 1;
                while j < n && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                if j < n && b[j] == b'$' {
                    let tag = &b[s..=j];
                    let mut k = j + 1;
                    let mut end = n;
                    while k + tag.len() <= n {
                        if &b[k..k + tag.len()] == tag {
                            end = k + tag.len();
                            break;
                        }
                        k += 1;
                    }
                    i = end;
                    out.push(Tok::Literal);
                } else {
                    i += 1;
                    out.push(Tok::Op("$"));
                }
            }
            b'"' | b'`' | b'[' => {
                let close = match c {
                    b'"' => b'"',
                    b'`' => b'`',
                    _ => b']',
                };
                let s = i + 1;
                let mut j = s;
                while j < n && b[j] != close {
                    j += 1;
                }
                out.push(Tok::Quoted(sql.get(s..j).unwrap_or(""), c == b'"'));
                i = (j + 1).min(n);
            }
            b'?' => {
                out.push(Tok::Param("?"));
                i += 1;
            }
            b':' | b'@'
                if b.get(i + 1)
                    .is_some_and(|d| d.is_ascii_alphabetic() || *d == b'_')
                    && b.get(i.wrapping_sub(1)) != Some(&b':') =>
            {
                let s = i;
                i += 1;
                while i < n && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push(Tok::Param(&sql[s..i]));
            }
            b'0'..=b'9' => {
                while i < n && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
                out.push(Tok::Literal);
            }
            b'.' if b.get(i + 1).is_some_and(|d| d.is_ascii_digit()) => {
                i += 1;
                while i < n && b[i].is_ascii_digit() {
                    i += 1;
                }
                out.push(Tok::Literal);
            }
            b'(' | b')' | b',' | b';' | b'.' | b'*' => {
                out.push(Tok::Punct(c as char));
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let s = i;
                while i < n
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                out.push(Tok::Word(&sql[s..i]));
            }
            _ => {
                let s = i;
                i += 1;
                while i < n
                    && b"<>=!|&+-/%^~:".contains(&b[i])
                    && !(b[i] == b'-' && b.get(i + 1) == Some(&b'-'))
                {
                    i += 1;
                }
                out.push(Tok::Op(sql.get(s..i).unwrap_or("?")));
            }
        }
    }
    out
}

/// Index after a string literal whose opening quote was just before `i`. `''` is a quote;
/// with `backslash`, `\'` is too.
fn skip_string(b: &[u8], mut i: usize, backslash: bool) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' if backslash => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

fn kw(t: &Tok<'_>, k: &str) -> bool {
    matches!(t, Tok::Word(w) if w.eq_ignore_ascii_case(k))
}

const OPERATIONS: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "REPLACE",
    "UPSERT",
    "CREATE",
    "ALTER",
    "DROP",
    "TRUNCATE",
    "CALL",
    "EXECUTE",
    "EXEC",
    "GRANT",
    "REVOKE",
    "VACUUM",
    "ANALYZE",
    "COPY",
    "SHOW",
    "EXPLAIN",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "SET",
    "PRAGMA",
    "REFRESH",
    "LOCK",
];

/// Keywords that end a list of targets after FROM / JOIN.
fn clause_end(t: &Tok<'_>) -> bool {
    match t {
        Tok::Word(w) => [
            "WHERE",
            "GROUP",
            "ORDER",
            "HAVING",
            "LIMIT",
            "OFFSET",
            "ON",
            "USING",
            "SET",
            "RETURNING",
            "UNION",
            "EXCEPT",
            "INTERSECT",
            "WINDOW",
            "FOR",
            "VALUES",
            "JOIN",
            "INNER",
            "LEFT",
            "RIGHT",
            "FULL",
            "CROSS",
            "NATURAL",
            "LATERAL",
            "FETCH",
            "SELECT",
        ]
        .iter()
        .any(|k| w.eq_ignore_ascii_case(k)),
        Tok::Punct(')') | Tok::Punct(';') => true,
        _ => false,
    }
}

/// Words that are never a target name.
const NOT_NAMES: &[&str] = &[
    "SET", "WHERE", "VALUES", "DEFAULT", "SELECT", "WITH", "ON", "AS", "FROM", "USING", "WHEN",
    "THEN",
];

/// A possibly qualified name at `i` (`schema.table`, quoted parts kept unquoted); the index
/// after it.
fn name_at(toks: &[Tok<'_>], mut i: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    loop {
        match toks.get(i)? {
            Tok::Word(w)
                if name.is_empty() && NOT_NAMES.iter().any(|k| w.eq_ignore_ascii_case(k)) =>
            {
                return None
            }
            Tok::Word(w) => name.push_str(w),
            Tok::Quoted(q, _) => name.push_str(q),
            _ => return None,
        }
        i += 1;
        if toks.get(i) == Some(&Tok::Punct('.'))
            && matches!(toks.get(i + 1), Some(Tok::Word(_) | Tok::Quoted(..)))
        {
            name.push('.');
            i += 1;
        } else {
            return Some((name, i));
        }
    }
}

/// Operation and targets, in order, over all statements.
fn summarise(toks: &[Tok<'_>]) -> (Option<String>, Option<String>, String) {
    let mut parts: Vec<String> = Vec::new();
    let mut op_name: Option<String> = None;
    let mut collection: Option<String> = None;
    let mut cte: Vec<String> = Vec::new();
    let mut main_seen = false; // the first statement's main operation has been found
    let mut in_cte_header = false;
    // Parenthesis depth before token `i`, and the last operation seen, kept as the loop goes:
    // rescanning for them made adversarial input quadratic.
    let mut depth = 0i32;
    let mut depth_at = 0usize;
    let mut last_op: Option<String> = None;
    let mut i = 0;
    while i < toks.len() {
        while depth_at < i {
            match toks[depth_at] {
                Tok::Punct('(') => depth += 1,
                Tok::Punct(')') => depth -= 1,
                _ => {}
            }
            depth_at += 1;
        }
        let t = &toks[i];
        let prev = i.checked_sub(1).and_then(|p| toks.get(p));
        if kw(t, "WITH") && !main_seen {
            in_cte_header = true;
            i += 1;
            if toks.get(i).is_some_and(|t| kw(t, "RECURSIVE")) {
                i += 1;
            }
            if let Some((n, j)) = name_at(toks, i) {
                cte.push(n.to_ascii_lowercase());
                i = j;
            }
            continue;
        }
        if in_cte_header && t == &Tok::Punct(',') {
            if let Some((n, j)) = name_at(toks, i + 1) {
                if toks
                    .get(j)
                    .is_some_and(|t| kw(t, "AS") || *t == Tok::Punct('('))
                {
                    cte.push(n.to_ascii_lowercase());
                    i = j;
                    continue;
                }
            }
        }
        if let Tok::Word(w) = t {
            let upper = w.to_ascii_uppercase();
            let at_start = matches!(prev, None | Some(Tok::Punct(';')));
            let is_op = OPERATIONS.contains(&upper.as_str())
                && match upper.as_str() {
                    // Anywhere: subqueries, CTE bodies, INSERT … SELECT; but not the UPDATE of
                    // FOR UPDATE / DO UPDATE / ON DUPLICATE KEY UPDATE, nor ON DELETE / ON
                    // UPDATE of a foreign key.
                    "SELECT" | "INSERT" => true,
                    "UPDATE" | "DELETE" => !prev.is_some_and(|p| {
                        kw(p, "FOR") || kw(p, "DO") || kw(p, "KEY") || kw(p, "ON")
                    }),
                    // Statement keywords: only where a statement starts.
                    _ => at_start,
                };
            if is_op {
                let mut op = upper.clone();
                let mut j = i + 1;
                if matches!(upper.as_str(), "CREATE" | "ALTER" | "DROP") {
                    // CREATE [OR REPLACE] [UNIQUE|TEMP…] TABLE|INDEX|VIEW … [IF [NOT] EXISTS] name
                    while toks.get(j).is_some_and(|t| {
                        [
                            "OR",
                            "REPLACE",
                            "UNIQUE",
                            "TEMP",
                            "TEMPORARY",
                            "MATERIALIZED",
                            "UNLOGGED",
                            "GLOBAL",
                            "LOCAL",
                        ]
                        .iter()
                        .any(|k| kw(t, k))
                    }) {
                        j += 1;
                    }
                    if let Some(Tok::Word(kind)) = toks.get(j) {
                        op = format!("{upper} {}", kind.to_ascii_uppercase());
                        j += 1;
                    }
                    while toks.get(j).is_some_and(|t| {
                        kw(t, "IF") || kw(t, "NOT") || kw(t, "EXISTS") || kw(t, "CONCURRENTLY")
                    }) {
                        j += 1;
                    }
                }
                parts.push(op.clone());
                last_op = Some(upper.clone());
                let in_cte_body = in_cte_header && depth > 0;
                if !main_seen && !in_cte_body {
                    op_name = Some(op.clone());
                    main_seen = true;
                    in_cte_header = false;
                }
                // Targets that follow the operation keyword directly.
                let direct = match upper.as_str() {
                    "UPDATE" | "CALL" | "EXECUTE" | "EXEC" | "TRUNCATE" | "CREATE" | "ALTER"
                    | "DROP" | "LOCK" | "REFRESH" | "VACUUM" | "ANALYZE" | "COPY" => {
                        if upper == "TRUNCATE" && toks.get(j).is_some_and(|t| kw(t, "TABLE")) {
                            j += 1;
                        }
                        if upper == "LOCK" && toks.get(j).is_some_and(|t| kw(t, "TABLE")) {
                            j += 1;
                        }
                        while toks.get(j).is_some_and(|t| {
                            ["ONLY", "FULL", "VERBOSE", "FREEZE", "ANALYZE"]
                                .iter()
                                .any(|k| kw(t, k))
                        }) {
                            j += 1;
                        }
                        name_at(toks, j)
                    }
                    _ => None,
                };
                if let Some((n, jj)) = direct {
                    let first = op_name.as_deref() == Some(op.as_str()) && collection.is_none();
                    push_target(&mut parts, &mut collection, first, &cte, n);
                    i = jj;
                    continue;
                }
                i = j;
                continue;
            }
            let upper_is = |k: &str| upper == k;
            if upper_is("FROM")
                || upper_is("JOIN")
                || upper_is("INTO")
                || (upper_is("USING") && matches!(last_op.as_deref(), Some("DELETE" | "MERGE")))
                || upper_is("MERGE")
            {
                let mut j = i + 1;
                if toks
                    .get(j)
                    .is_some_and(|t| kw(t, "ONLY") || kw(t, "LATERAL"))
                {
                    j += 1;
                }
                // FROM a [AS x], b [y], …
                while let Some((n, jj)) = name_at(toks, j) {
                    let first = collection.is_none() && main_seen;
                    push_target(&mut parts, &mut collection, first, &cte, n);
                    j = jj;
                    // An alias.
                    if toks.get(j).is_some_and(|t| kw(t, "AS")) {
                        j += 1;
                    }
                    if let Some(t) = toks.get(j) {
                        if matches!(t, Tok::Word(_) | Tok::Quoted(..))
                            && !clause_end(t)
                            && !kw(t, "SET")
                            && !kw(t, "DEFAULT")
                        {
                            j += 1;
                        }
                    }
                    if toks.get(j) == Some(&Tok::Punct(','))
                        && (upper_is("FROM") || upper_is("USING"))
                    {
                        j += 1;
                    } else {
                        break;
                    }
                }
                i = j.max(i + 1);
                continue;
            }
        }
        i += 1;
    }
    let mut summary = String::new();
    for p in parts {
        let extra = if summary.is_empty() {
            p.len()
        } else {
            p.len() + 1
        };
        if summary.len() + extra > MAX_SUMMARY {
            break;
        }
        if !summary.is_empty() {
            summary.push(' ');
        }
        summary.push_str(&p);
    }
    (op_name, collection, summary)
}

fn push_target(
    parts: &mut Vec<String>,
    collection: &mut Option<String>,
    first: bool,
    cte: &[String],
    name: String,
) {
    if cte.contains(&name.to_ascii_lowercase()) {
        return;
    }
    if first && collection.is_none() {
        *collection = Some(name.clone());
    }
    parts.push(name);
}

/// The sanitised text: literals as `?`, literal lists collapsed, whitespace folded.
fn sanitize(toks: &[Tok<'_>]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < toks.len() {
        // ( literal-or-param , … ) after IN / VALUES: one `(?)`.
        if toks[i] == Tok::Punct('(') {
            let mut j = i + 1;
            let mut only_values = false;
            while let Some(t) = toks.get(j) {
                match t {
                    Tok::Literal | Tok::Param(_) => only_values = true,
                    Tok::Punct(',') => {}
                    _ => break,
                }
                j += 1;
            }
            if only_values && toks.get(j) == Some(&Tok::Punct(')')) && j > i + 2 {
                push_tok(&mut out, "(?)");
                i = j + 1;
                continue;
            }
        }
        let text: std::borrow::Cow<'_, str> = match &toks[i] {
            Tok::Word(w) => (*w).into(),
            Tok::Quoted(q, _) => format!("\"{q}\"").into(),
            Tok::Literal => "?".into(),
            Tok::Param(p) => (*p).into(),
            Tok::Punct(c) => c.to_string().into(),
            Tok::Op(o) => (*o).into(),
        };
        push_tok(&mut out, &text);
        if out.len() > MAX_SANITIZED {
            let mut cut = MAX_SANITIZED;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            break;
        }
        i += 1;
    }
    out
}

fn push_tok(out: &mut String, t: &str) {
    let glue = matches!(t, "," | ")" | "." | ";") || out.ends_with('(') || out.ends_with('.');
    if !out.is_empty() && !glue {
        out.push(' ');
    }
    out.push_str(t);
}

/// Analyses a query (uncached), reading double-quoted tokens as identifiers (PostgreSQL and
/// standard SQL).
pub fn analyze(sql: &str) -> Analysis {
    analyze_tokens(lex(sql))
}

/// Analyses a query (uncached) as the database `system` (`db.system.name`) reads it. For
/// `sqlite`, a double-quoted token in a value position (after a comparison or `LIKE`, in a
/// `VALUES` or `IN` list, and not part of a qualified name) is masked in the sanitised text as
/// a literal: SQLite reads it as a string when no column has that name (its "DQS" rule, on by
/// default), so `WHERE email = "a@b.c"` must not keep the address. Identifier positions (`FROM`,
/// column lists, `SET` targets, `"t"."c"`) keep theirs.
pub fn analyze_for(system: &str, sql: &str) -> Analysis {
    let mut toks = lex(sql);
    if system == "sqlite" {
        sqlite_strings(&mut toks);
    }
    analyze_tokens(toks)
}

/// Masks the double-quoted tokens SQLite may read as strings (see [`analyze_for`]).
fn sqlite_strings(toks: &mut [Tok<'_>]) {
    // For each open parenthesis, whether it holds a list of values: after VALUES or IN, or
    // after the comma that follows a VALUES tuple.
    let mut lists: Vec<bool> = Vec::new();
    let mut closed_values = false;
    for i in 0..toks.len() {
        let prev = i.checked_sub(1).map(|p| toks[p]);
        match toks[i] {
            Tok::Punct('(') => lists.push(prev.is_some_and(|p| {
                kw(&p, "VALUES") || kw(&p, "IN") || (p == Tok::Punct(',') && closed_values)
            })),
            Tok::Punct(')') => closed_values = lists.pop().unwrap_or(false),
            Tok::Quoted(_, true) => {
                let qualified =
                    prev == Some(Tok::Punct('.')) || toks.get(i + 1) == Some(&Tok::Punct('.'));
                let in_list =
                    lists.last() == Some(&true) && matches!(prev, Some(Tok::Punct('(' | ',')));
                let after_operator = prev.is_some_and(|p| {
                    matches!(p, Tok::Op(_))
                        || ["LIKE", "GLOB", "REGEXP", "MATCH", "BETWEEN", "THEN", "ELSE"]
                            .iter()
                            .any(|k| kw(&p, k))
                });
                if !qualified && (in_list || after_operator) {
                    toks[i] = Tok::Literal;
                }
            }
            _ => {}
        }
    }
}

fn analyze_tokens(toks: Vec<Tok<'_>>) -> Analysis {
    let (operation, collection, summary) = summarise(&toks);
    Analysis {
        operation,
        collection,
        summary,
        sanitized: sanitize(&toks),
    }
}

/// A bounded cache of analyses by query text.
pub struct AnalysisCache {
    cache: TextCache<Analysis>,
}

impl std::fmt::Debug for AnalysisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnalysisCache")
            .field("len", &self.len())
            .finish()
    }
}

impl AnalysisCache {
    /// A cache of at most `capacity` queries.
    pub fn new(capacity: usize) -> Self {
        Self {
            cache: TextCache::new(capacity),
        }
    }

    /// The analysis of `sql`, computed on first sight. When full, an arbitrary entry makes room.
    pub fn get(&self, sql: &str) -> Arc<Analysis> {
        self.cache.get_or_insert_with(sql, || analyze(sql))
    }

    /// Queries cached.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
