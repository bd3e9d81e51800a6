//! SQL text for spans: literals replaced by `?`, and the operation and
//! table a statement names, for `db.query.text`, `db.operation.name` and
//! `db.collection.name`.
//!
//! Not a SQL parser: a tokenizer that knows strings, quoted identifiers,
//! comments and numbers well enough to never leak a literal, and a look at
//! the first keywords for the operation and table. Input of any size is
//! accepted; output is bounded by [`MAX_SANITIZED`].

/// Longest sanitized text produced; longer statements are cut (with `…`).
pub const MAX_SANITIZED: usize = 2048;

/// `SELECT * FROM t WHERE a = 'x' AND b IN (1, 2, 3)` →
/// `SELECT * FROM t WHERE a = ? AND b IN (?)`.
///
/// String literals (`'…'`, `E'…'`, `$$…$$`, `$tag$…$tag$`), numbers,
/// and lists of literals inside `IN (…)` become `?`. Comments are dropped.
/// Quoted identifiers (`"col"`, `` `col` ``) are kept.
pub fn sanitize(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len().min(MAX_SANITIZED));
    let mut i = 0;
    let push = |out: &mut String, s: &str| {
        if out.len() < MAX_SANITIZED {
            out.push_str(s);
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
            // -- line comment
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            // /* block comment */
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i = (i + 2).min(b.len());
            }
            b'\'' => {
                i = skip_quoted(b, i, b'\'');
                push(&mut out, "?");
            }
            b'E' | b'e' if b.get(i + 1) == Some(&b'\'') && !prev_is_word(b, i) => {
                i = skip_quoted(b, i + 1, b'\'');
                push(&mut out, "?");
            }
            b'"' | b'`' => {
                let end = skip_quoted(b, i, c);
                push(&mut out, &sql[i..end]);
                i = end;
            }
            b'$' => match dollar_tag(b, i) {
                Some(tag_len) => {
                    let tag = &b[i..i + tag_len];
                    let mut j = i + tag_len;
                    while j < b.len() && !b[j..].starts_with(tag) {
                        j += 1;
                    }
                    i = (j + tag_len).min(b.len());
                    push(&mut out, "?");
                }
                None => {
                    // $1 placeholders stay as they are.
                    let start = i;
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    push(&mut out, &sql[start..i]);
                }
            },
            b'0'..=b'9' if !prev_is_word(b, i) => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
                push(&mut out, "?");
            }
            b'-' | b'+' if next_is_number(b, i) && !prev_is_operand(&out) => {
                // A signed literal: the sign goes with it.
                i += 1;
            }
            _ => {
                let ch_len = utf8_len(c);
                let end = (i + ch_len).min(b.len());
                if let Some(s) = sql.get(i..end) {
                    if c.is_ascii_whitespace() {
                        if !out.ends_with(' ') && !out.is_empty() {
                            push(&mut out, " ");
                        }
                    } else {
                        push(&mut out, s);
                    }
                }
                i = end;
            }
        }
    }
    let mut out = collapse_lists(out.trim_end());
    if out.len() >= MAX_SANITIZED {
        let mut cut = MAX_SANITIZED;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

fn prev_is_word(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

fn next_is_number(b: &[u8], i: usize) -> bool {
    b.get(i + 1).is_some_and(u8::is_ascii_digit)
}

/// Whether the text so far ends with something a `-` would subtract from.
fn prev_is_operand(out: &str) -> bool {
    out.trim_end()
        .bytes()
        .last()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == b')' || c == b'?' || c == b'_')
}

/// End (exclusive) of a quoted run starting at `start`, doubled quotes and
/// backslash escapes included; an unterminated run ends the input.
fn skip_quoted(b: &[u8], start: usize, quote: u8) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        if b[i] == b'\\' && quote == b'\'' {
            i += 2;
            continue;
        }
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// Length of a PostgreSQL dollar-quote tag (`$$`, `$body$`) at `i`.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        if j == i + 1 && b[j].is_ascii_digit() {
            return None;
        }
        j += 1;
    }
    (b.get(j) == Some(&b'$')).then_some(j + 1 - i)
}

/// `IN (?, ?, ?)` → `IN (?)`, so IN lists of any length read the same.
/// Other lists (`VALUES (?, ?)`) keep their shape.
fn collapse_lists(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('(') {
        let before = rest[..open].trim_end().as_bytes();
        let after_in = before.len() >= 2
            && before[before.len() - 2..].eq_ignore_ascii_case(b"IN")
            && !prev_is_word(before, before.len() - 2);
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        let close = after.find(')');
        match close {
            Some(c) if after_in && is_placeholder_list(&after[..c]) => {
                out.push('?');
                rest = &after[c..];
            }
            _ => rest = after,
        }
    }
    out.push_str(rest);
    out
}

fn is_placeholder_list(inner: &str) -> bool {
    let mut any = false;
    for item in inner.split(',') {
        if item.trim() != "?" {
            return false;
        }
        any = true;
    }
    any
}

/// The operation (`SELECT`, `INSERT`) and, where the statement names one
/// table, that table: `INSERT INTO tasks …` → (`INSERT`, `tasks`).
pub fn operation_and_table(sql: &str) -> (Option<String>, Option<String>) {
    let sanitized = sanitize(sql);
    let words: Vec<&str> = sanitized
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',' || c == ';')
        .filter(|w| !w.is_empty())
        .take(64)
        .collect();
    let Some(first) = words.first() else {
        return (None, None);
    };
    let op = first.to_ascii_uppercase();
    if !op.bytes().all(|c| c.is_ascii_alphabetic()) {
        return (None, None);
    }
    let after = |kw: &str| {
        let pos = words.iter().position(|w| w.eq_ignore_ascii_case(kw))?;
        words.get(pos + 1).map(|t| clean_table(t))
    };
    let table = match op.as_str() {
        "SELECT" | "DELETE" => after("FROM"),
        "INSERT" => after("INTO"),
        "UPDATE" => words.get(1).map(|t| clean_table(t)),
        "COPY" => words.get(1).map(|t| clean_table(t)),
        _ => None,
    };
    // Joins and sub-queries name several tables: report none rather than
    // a wrong one.
    let several = words.iter().any(|w| w.eq_ignore_ascii_case("JOIN"))
        || words
            .iter()
            .filter(|w| w.eq_ignore_ascii_case("SELECT"))
            .count()
            > 1;
    // `FROM generate_series(…)` reads a function, not a table.
    let function = matches!(op.as_str(), "SELECT" | "DELETE")
        && sanitized
            .split_whitespace()
            .skip_while(|w| !w.eq_ignore_ascii_case("FROM"))
            .nth(1)
            .is_some_and(|w| w.contains('('));
    let table = table.filter(|t| !several && !function && !t.is_empty() && t != "?");
    (Some(op), table)
}

fn clean_table(t: &str) -> String {
    t.trim_matches(|c| c == '"' || c == '`').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_never_survive() {
        let cases = [
            (
                "SELECT * FROM users WHERE name = 'alice' AND age > 30",
                "SELECT * FROM users WHERE name = ? AND age > ?",
            ),
            (
                "INSERT INTO tasks (title, done) VALUES ('it''s secret', false)",
                "INSERT INTO tasks (title, done) VALUES (?, false)",
            ),
            (
                "SELECT id FROM t WHERE id IN (1, 2, 3, 4)",
                "SELECT id FROM t WHERE id IN (?)",
            ),
            (
                "SELECT id FROM t WHERE id IN ('a','b')",
                "SELECT id FROM t WHERE id IN (?)",
            ),
            (
                "UPDATE t SET x = -1.5e3 WHERE y = E'a\\'b'",
                "UPDATE t SET x = ? WHERE y = ?",
            ),
            ("SELECT $$dollar secret$$, $tag$x$tag$", "SELECT ?, ?"),
            (
                "SELECT * FROM t WHERE a = $1 AND b = $2",
                "SELECT * FROM t WHERE a = $1 AND b = $2",
            ),
            ("SELECT 1 -- trailing secret\n", "SELECT ?"),
            (
                "SELECT /* secret */ col2 FROM \"Table1\"",
                "SELECT col2 FROM \"Table1\"",
            ),
            ("SELECT a-1 FROM t", "SELECT a-? FROM t"),
            ("SELECT 'unterminated", "SELECT ?"),
        ];
        for (sql, want) in cases {
            assert_eq!(sanitize(sql), want, "{sql}");
        }
    }

    #[test]
    fn operation_and_table_when_there_is_one() {
        let t = |s: &str| operation_and_table(s);
        assert_eq!(
            t("INSERT INTO tasks (a) VALUES (1)"),
            (Some("INSERT".into()), Some("tasks".into()))
        );
        assert_eq!(
            t("select * from users where id = 1"),
            (Some("SELECT".into()), Some("users".into()))
        );
        assert_eq!(
            t("UPDATE accounts SET x = 1"),
            (Some("UPDATE".into()), Some("accounts".into()))
        );
        assert_eq!(
            t("DELETE FROM \"Tasks\" WHERE id = 3"),
            (Some("DELETE".into()), Some("Tasks".into()))
        );
        assert_eq!(
            t("SELECT * FROM a JOIN b ON a.id = b.id"),
            (Some("SELECT".into()), None)
        );
        assert_eq!(
            sanitize("INSERT INTO t VALUES (?, ?)"),
            "INSERT INTO t VALUES (?, ?)"
        );
        assert_eq!(
            sanitize("SELECT a FROM t WHERE b IN (?, ?)"),
            "SELECT a FROM t WHERE b IN (?)"
        );
        assert_eq!(sanitize("SELECT min(1, 2)"), "SELECT min(?, ?)");
        assert_eq!(t("BEGIN"), (Some("BEGIN".into()), None));
        assert_eq!(t("   "), (None, None));
        assert_eq!(
            t("SELECT repeat('x', 2) FROM generate_series(1, 5)"),
            (Some("SELECT".into()), None)
        );
        assert_eq!(t("SELECT * FROM users(x)"), (Some("SELECT".into()), None));
    }

    #[test]
    fn any_input_is_safe_and_bounded() {
        let mut x: u32 = 7;
        for _ in 0..2000 {
            let mut s = String::new();
            for _ in 0..300 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                s.push(
                    [
                        '\'', '"', '$', '-', '/', '*', '(', ')', ',', '1', 'a', ' ', 'é', '\\',
                        '\n', '`',
                    ][(x % 16) as usize],
                );
            }
            let out = sanitize(&s);
            assert!(out.len() <= MAX_SANITIZED + 4);
            let _ = operation_and_table(&s);
        }
        let huge = "SELECT ".to_owned() + &"x, ".repeat(5000);
        assert!(sanitize(&huge).ends_with('…'));
    }
}
