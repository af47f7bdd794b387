//! Declared indexes: the `indexes = [...]` key of a managed table, validated
//! at load time, and the (pure) SQL made from it. Built and repaired by
//! `partitions::indexes`.
//!
//! A column entry is either a string, strictly a column name with optional
//! opclass and ordering (`"created_at DESC"`, `"email text_pattern_ops"`,
//! `"\"Odd Name\" NULLS FIRST"`), or a table stating what it is:
//! `{ column = "email", opclass = "...", order = "desc", nulls = "last" }` or
//! `{ expr = "lower(email)" }`. Expressions (and `where`) are SQL written by
//! the operator; they are checked only so far that they cannot leave the
//! parentheses they are put in (balanced, no `;`, comments, `$` or `\`),
//! and the server judges the rest when the index is built.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Reason};
use crate::pg::{quote_ident, QualifiedName};

/// Longest identifier PostgreSQL keeps (NAMEDATALEN - 1).
pub const MAX_IDENT_BYTES: usize = 63;
/// Longest expression or predicate accepted.
const MAX_EXPR_CHARS: usize = 2000;

/// One declared index of a managed table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IndexSpec {
    /// The parent index's name, in the table's schema; partitions' indexes are
    /// named after it (see [`child_index_name`]).
    pub name: String,
    /// Key columns in order; at least one.
    pub columns: Vec<IndexColumn>,
    #[serde(default)]
    pub unique: bool,
    /// Access method (`btree` when absent): any identifier the server knows.
    #[serde(default)]
    pub method: Option<String>,
    /// Non-key columns stored in the index (`INCLUDE`).
    #[serde(default)]
    pub include: Vec<String>,
    /// Partial index predicate, an SQL boolean expression.
    #[serde(default, rename = "where")]
    pub predicate: Option<String>,
}

/// A key column as written in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum IndexColumn {
    /// `"name [opclass] [ASC|DESC] [NULLS FIRST|LAST]"`.
    Text(String),
    Table(ColumnTable),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnTable {
    /// A column name, taken literally (no folding, no quotes needed).
    #[serde(default)]
    pub column: Option<String>,
    /// An SQL expression over the table's columns, e.g. `lower(email)`.
    #[serde(default)]
    pub expr: Option<String>,
    #[serde(default)]
    pub opclass: Option<String>,
    /// `asc` or `desc`.
    #[serde(default)]
    pub order: Option<String>,
    /// `first` or `last`.
    #[serde(default)]
    pub nulls: Option<String>,
}

/// What a key column is after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Column(String),
    Expr(String),
}

/// A validated key column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumn {
    pub key: Key,
    pub opclass: Option<String>,
    pub desc: bool,
    /// `Some(true)` NULLS FIRST, `Some(false)` NULLS LAST.
    pub nulls_first: Option<bool>,
}

impl KeyColumn {
    fn sql(&self) -> String {
        let mut s = match &self.key {
            Key::Column(c) => quote_ident(c),
            Key::Expr(e) => format!("({e})"),
        };
        if let Some(o) = &self.opclass {
            s.push(' ');
            s.push_str(&quote_ident(o));
        }
        if self.desc {
            s.push_str(" DESC");
        }
        match self.nulls_first {
            Some(true) => s.push_str(" NULLS FIRST"),
            Some(false) => s.push_str(" NULLS LAST"),
            None => {}
        }
        s
    }
}

/// What an index is, independent of the table it is on: `unique` and the
/// text after `USING` as `pg_get_indexdef` prints it or as we generate it
/// (`btree (user_id, created_at DESC) INCLUDE (...) WHERE (...)`). Both a
/// declared index and one found in the catalog become this, so the build
/// does not care where an index came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexDef {
    pub unique: bool,
    pub tail: String,
}

impl IndexDef {
    /// `CREATE [UNIQUE] INDEX [CONCURRENTLY] "name" ON [ONLY] table USING tail`.
    pub fn create_sql(
        &self,
        name: &str,
        table: &QualifiedName,
        only: bool,
        concurrently: bool,
    ) -> String {
        format!(
            "CREATE {}INDEX {}{} ON {}{} USING {}",
            if self.unique { "UNIQUE " } else { "" },
            if concurrently { "CONCURRENTLY " } else { "" },
            quote_ident(name),
            if only { "ONLY " } else { "" },
            table.quoted(),
            self.tail
        )
    }
}

impl IndexSpec {
    /// Checks everything that can be checked without the server; the message
    /// names the key under `at` (e.g. `partitions.tables[0].indexes[1]`).
    pub fn validate(&self, at: &str) -> Result<(), ConfigError> {
        check_ident(&self.name).map_err(|e| e.at(format!("{at}.name")))?;
        if self.columns.is_empty() {
            return Err(Reason::new(
                "expected at least one column, e.g. [\"user_id\", \"created_at DESC\"]",
            )
            .at(format!("{at}.columns")));
        }
        self.key_columns().map_err(|e| e.under(at))?;
        if let Some(m) = &self.method {
            if !is_simple_word(m) {
                return Err(Reason::new(format!(
                    "{m:?} is not an access method name such as btree, hash, gist, gin, brin"
                ))
                .at(format!("{at}.method")));
            }
            if self.unique && m != "btree" {
                return Err(Reason::new(format!("unique indexes need btree, not {m:?}"))
                    .at(format!("{at}.method")));
            }
        }
        for (i, c) in self.include.iter().enumerate() {
            check_ident(c).map_err(|e| e.at(format!("{at}.include[{i}]")))?;
        }
        if let Some(p) = &self.predicate {
            check_expr(p).map_err(|e| e.at(format!("{at}.where")))?;
        }
        Ok(())
    }

    /// The key columns, parsed; an error names the key `columns[i]` (below
    /// the spec's own key: see [`ConfigError::Key`]).
    pub fn key_columns(&self) -> Result<Vec<KeyColumn>, ConfigError> {
        self.columns
            .iter()
            .enumerate()
            .map(|(i, c)| parse_column(c).map_err(|e| e.at(format!("columns[{i}]"))))
            .collect()
    }

    /// The definition to build; fails only on a spec that did not validate.
    pub fn def(&self) -> Result<IndexDef, ConfigError> {
        let cols: Vec<String> = self.key_columns()?.iter().map(KeyColumn::sql).collect();
        let mut tail = format!(
            "{} ({})",
            quote_ident(self.method.as_deref().unwrap_or("btree")),
            cols.join(", ")
        );
        if !self.include.is_empty() {
            let inc: Vec<String> = self.include.iter().map(|c| quote_ident(c)).collect();
            tail.push_str(&format!(" INCLUDE ({})", inc.join(", ")));
        }
        if let Some(p) = &self.predicate {
            tail.push_str(&format!(" WHERE ({p})"));
        }
        Ok(IndexDef {
            unique: self.unique,
            tail,
        })
    }
}

fn check_ident(s: &str) -> Result<(), Reason> {
    if s.is_empty() {
        return Err("an empty name".into());
    }
    if s.len() > MAX_IDENT_BYTES {
        return Err(Reason::new(format!(
            "{s:?} is {} bytes; PostgreSQL keeps at most {MAX_IDENT_BYTES}",
            s.len()
        )));
    }
    if s.contains('\0') {
        return Err(Reason::new(format!("{s:?} contains a NUL character")));
    }
    Ok(())
}

fn is_simple_word(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && s.len() <= MAX_IDENT_BYTES
}

/// An expression must stay inside the parentheses it is put in: balanced
/// parentheses outside quotes, and nothing that could end the statement or
/// hide text from this scan (`;`, comments, dollar quotes, backslash escapes).
fn check_expr(e: &str) -> Result<(), Reason> {
    let expected = "expected an SQL expression such as \"lower(email)\" or \"deleted_at IS NULL\"";
    if e.trim().is_empty() {
        return Err(Reason::new(format!("empty; {expected}")));
    }
    if e.chars().count() > MAX_EXPR_CHARS {
        return Err(Reason::new(format!(
            "longer than {MAX_EXPR_CHARS} characters"
        )));
    }
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for c in e.chars() {
        if c == '\0' || c == '\\' {
            return Err(Reason::new(format!(
                "{e:?} contains {c:?}; not accepted in expressions"
            )));
        }
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '\'' | '"' => quote = Some(c),
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth < 0 {
                        return Err(Reason::new(format!(
                            "{e:?} closes a parenthesis it did not open"
                        )));
                    }
                }
                ';' | '$' => return Err(Reason::new(format!("{e:?} contains {c:?}; {expected}"))),
                '-' if prev == '-' => return Err(Reason::new(format!("{e:?} contains a comment"))),
                '*' if prev == '/' => return Err(Reason::new(format!("{e:?} contains a comment"))),
                _ => {}
            },
        }
        // A doubled quote inside quotes closes and reopens: same state, so
        // `prev` need not track it.
        prev = c;
    }
    if quote.is_some() {
        return Err(Reason::new(format!("{e:?} has an unterminated quote")));
    }
    if depth != 0 {
        return Err(Reason::new(format!("{e:?} has unbalanced parentheses")));
    }
    Ok(())
}

/// Tokens of a column string: `Word` (unquoted, as written) or `Quoted`.
#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
}

fn tokens(s: &str) -> Result<Vec<Token>, Reason> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let part = crate::pg::ident::read_quoted(&mut chars).ok_or("unterminated quote")?;
            out.push(Token::Quoted(part));
        } else if c.is_alphanumeric() || c == '_' {
            let mut w = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_alphanumeric() || c == '_' || c == '$' {
                    w.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Token::Word(w));
        } else {
            return Err(Reason::new(format!(
                "{c:?} is not part of a column name; write an expression as {{ expr = \"...\" }}"
            )));
        }
    }
    Ok(out)
}

fn parse_column(c: &IndexColumn) -> Result<KeyColumn, Reason> {
    match c {
        IndexColumn::Text(s) => parse_column_text(s),
        IndexColumn::Table(t) => {
            let key = match (&t.column, &t.expr) {
                (Some(c), None) => {
                    check_ident(c)?;
                    Key::Column(c.clone())
                }
                (None, Some(e)) => {
                    check_expr(e)?;
                    Key::Expr(e.trim().to_string())
                }
                _ => return Err("give exactly one of `column` or `expr`".into()),
            };
            if let Some(o) = &t.opclass {
                check_ident(o).map_err(|e| e.after("opclass"))?;
            }
            let desc = match t.order.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("asc") => false,
                Some("desc") => true,
                Some(o) => {
                    return Err(Reason::new(format!(
                        "order {o:?}: expected \"asc\" or \"desc\""
                    )))
                }
            };
            let nulls_first = match t.nulls.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None => None,
                Some("first") => Some(true),
                Some("last") => Some(false),
                Some(o) => {
                    return Err(Reason::new(format!(
                        "nulls {o:?}: expected \"first\" or \"last\""
                    )))
                }
            };
            Ok(KeyColumn {
                key,
                opclass: t.opclass.clone(),
                desc,
                nulls_first,
            })
        }
    }
}

/// `name [opclass] [ASC|DESC] [NULLS FIRST|LAST]`; unquoted names fold to
/// lower case as in SQL.
fn parse_column_text(s: &str) -> Result<KeyColumn, Reason> {
    let toks = tokens(s).map_err(|e| e.after(format!("{s:?}")))?;
    let word = |t: &Token| match t {
        Token::Word(w) => Some(w.to_ascii_lowercase()),
        Token::Quoted(_) => None,
    };
    let name = |t: &Token| match t {
        Token::Word(w) => w.to_lowercase(),
        Token::Quoted(q) => q.clone(),
    };
    let mut it = toks.iter().peekable();
    let Some(first) = it.next() else {
        return Err("an empty column".into());
    };
    let column = name(first);
    check_ident(&column)?;
    let mut col = KeyColumn {
        key: Key::Column(column),
        opclass: None,
        desc: false,
        nulls_first: None,
    };
    let keyword = |t: Option<&&Token>| t.and_then(|t| word(t));
    if let Some(t) = it.peek() {
        if !matches!(keyword(Some(t)).as_deref(), Some("asc" | "desc" | "nulls")) {
            let op = name(t);
            check_ident(&op)?;
            col.opclass = Some(op);
            it.next();
        }
    }
    match keyword(it.peek()).as_deref() {
        Some("asc") => {
            it.next();
        }
        Some("desc") => {
            col.desc = true;
            it.next();
        }
        _ => {}
    }
    if keyword(it.peek()).as_deref() == Some("nulls") {
        it.next();
        col.nulls_first = match keyword(it.next().as_ref()).as_deref() {
            Some("first") => Some(true),
            Some("last") => Some(false),
            _ => {
                return Err(Reason::new(format!(
                    "{s:?}: NULLS must be followed by FIRST or LAST"
                )))
            }
        };
    }
    if it.next().is_some() {
        return Err(Reason::new(format!(
            "{s:?} is not \"column [opclass] [ASC|DESC] [NULLS FIRST|LAST]\"; write an expression as {{ expr = \"...\" }}"
        )));
    }
    Ok(col)
}

/// The name of `partition`'s index for the parent index `index` of `parent`:
/// the parent's name prefix swapped for the partition's
/// (`audit_log_user_idx` → `audit_log_2025_01_user_idx`), else
/// `<partition>_<index>`; over 63 bytes it is cut and a hash of the full name
/// appended, so it stays unique and the same on every pass.
pub fn child_index_name(parent: &str, partition: &str, index: &str) -> String {
    let rest = index
        .strip_prefix(parent)
        .and_then(|r| r.strip_prefix('_'))
        .unwrap_or(index);
    let full = format!("{partition}_{rest}");
    if full.len() <= MAX_IDENT_BYTES {
        return full;
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in full.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let suffix = format!("_{h:08x}");
    let mut cut = MAX_IDENT_BYTES - suffix.len();
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &full[..cut])
}

/// Validates every declared index of table `i` (`indexes` key) and that
/// names do not repeat within a schema (indexes share it with tables).
pub fn validate(cfg: &super::PartitionsConfig) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for (i, t) in cfg.tables.iter().enumerate() {
        for (k, spec) in t.indexes.iter().enumerate() {
            let at = format!("partitions.tables[{i}].indexes[{k}]");
            spec.validate(&at)?;
            if !seen.insert((t.table.schema.clone(), spec.name.clone())) {
                return Err(Reason::new(format!(
                    "{:?} is declared twice in schema {:?}; index names are unique per schema",
                    spec.name, t.table.schema
                ))
                .at(format!("{at}.name")));
            }
        }
    }
    let p = cfg.index_parallelism;
    if p == 0 || p > 16 {
        return Err(Reason::new(format!(
            "{p}; expected 1..=16 sessions for concurrent index builds"
        ))
        .at("partitions.index_parallelism"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec, or the text of why it was refused (by serde or by `validate`).
    fn spec(toml_text: &str) -> Result<IndexSpec, Box<dyn std::error::Error>> {
        #[derive(Deserialize)]
        struct W {
            i: IndexSpec,
        }
        let w: W = toml::from_str(&format!("i = {toml_text}"))?;
        w.i.validate("t.indexes[0]")?;
        Ok(w.i)
    }

    #[test]
    fn columns_render_quoted_with_order_and_opclass() {
        let s = spec(
            r#"{ name = "a_idx", columns = ["user_id", "Created_At DESC NULLS LAST", "\"Odd \"\"x\" text_pattern_ops", { expr = "lower(email)" }, { column = "Mixed", order = "desc", nulls = "first" }], include = ["note"], where = "deleted_at IS NULL" }"#,
        )
        .unwrap();
        let d = s.def().unwrap();
        assert_eq!(
            d.tail,
            r#""btree" ("user_id", "created_at" DESC NULLS LAST, "Odd ""x" "text_pattern_ops", (lower(email)), "Mixed" DESC NULLS FIRST) INCLUDE ("note") WHERE (deleted_at IS NULL)"#
        );
        let t = QualifiedName::new("public", "audit log");
        assert_eq!(
            d.create_sql("a_idx", &t, true, false),
            format!(
                r#"CREATE INDEX "a_idx" ON ONLY "public"."audit log" USING {}"#,
                d.tail
            )
        );
    }

    #[test]
    fn bad_entries_name_the_key() {
        for (text, want) in [
            (r#"{ name = "", columns = ["a"] }"#, "indexes[0].name`"),
            (r#"{ name = "x", columns = [] }"#, "indexes[0].columns`"),
            (
                r#"{ name = "x", columns = ["lower(a)"] }"#,
                "columns[0]`: \"lower(a)\"",
            ),
            (
                r#"{ name = "x", columns = ["a", "b DESC junk"] }"#,
                "columns[1]`",
            ),
            (r#"{ name = "x", columns = ["a NULLS"] }"#, "FIRST or LAST"),
            (
                r#"{ name = "x", columns = [{ expr = "a); DROP TABLE t; (" }] }"#,
                "columns[0]`",
            ),
            (
                r#"{ name = "x", columns = [{ expr = "a", column = "b" }] }"#,
                "exactly one",
            ),
            (
                r#"{ name = "x", columns = ["a"], where = "a) OR (true" }"#,
                "indexes[0].where`",
            ),
            (
                r#"{ name = "x", columns = ["a"], where = "a -- x" }"#,
                "comment",
            ),
            (
                r#"{ name = "x", columns = ["a"], where = "$$x$$" }"#,
                "where`",
            ),
            (
                r#"{ name = "x", columns = ["a"], unique = true, method = "gin" }"#,
                "need btree",
            ),
            (
                r#"{ name = "x", columns = ["a"], method = "b tree" }"#,
                "method`",
            ),
            (
                r#"{ name = "x", columns = ["a"], include = [""] }"#,
                "include[0]`",
            ),
        ] {
            let e = spec(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        assert!(spec(r#"{ name = "x", columns = ["a"], bogus = 1 }"#).is_err());
        // Parentheses inside quotes do not count.
        spec(r#"{ name = "x", columns = [{ expr = "coalesce(a, ')')" }] }"#).unwrap();
    }

    #[test]
    fn child_names_follow_the_partition_and_stay_within_63_bytes() {
        assert_eq!(
            child_index_name("audit_log", "audit_log_2025_01", "audit_log_user_idx"),
            "audit_log_2025_01_user_idx"
        );
        assert_eq!(child_index_name("t", "t_2025", "by_user"), "t_2025_by_user");
        let long = "x".repeat(60);
        let a = child_index_name("t", &format!("{long}_2025_01"), "t_user_idx");
        let b = child_index_name("t", &format!("{long}_2025_02"), "t_user_idx");
        assert!(a.len() <= 63 && b.len() <= 63 && a != b, "{a} {b}");
        assert_eq!(
            a,
            child_index_name("t", &format!("{long}_2025_01"), "t_user_idx")
        );
        let multibyte = "é".repeat(40);
        assert!(child_index_name("t", &multibyte, "t_i").len() <= 63);
    }
}
