//! What the statements written once (`shared.rs`) need to know about a database: the few
//! ways the backends differ there, as data.

/// The differences between the backends' SQL that the shared statements take into account.
/// (Public only to the sealed backend steps; not reachable from outside the crate.)
#[derive(Debug, Clone, Copy)]
pub struct Dialect {
    /// Who a ledger row (`applied_by`) and a run-history row (`db_user`) name as having
    /// done it.
    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    pub(crate) actor: Actor,
    /// Whether a statement stays prepared on its connection, under a name, for the next
    /// time (sqlx's `persistent`). PostgreSQL's are all unnamed: through a transaction
    /// pooler a named statement may be met, or missed, by another client's session.
    pub(crate) persistent: bool,
    /// How the shared statements' text is written for this database.
    pub(crate) syntax: Syntax,
}

/// How a statement written once (standard SQL: `"name"` identifiers, `$1` parameters)
/// reaches the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Syntax {
    /// As written (PostgreSQL, SQLite).
    Standard,
    /// MySQL and MariaDB: identifiers in backticks, parameters as `?` (numbered parameters
    /// must then appear once each, in order: [`Dialect::render`] refuses others).
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    MySql,
}

/// Who did what a ledger or run-history row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Actor {
    /// The database's own user, `current_user` in the statement (PostgreSQL).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    DatabaseUser,
    /// The operating-system user running datamig, bound as a parameter (SQLite, which has
    /// no users of its own).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    OsUser,
}

impl Dialect {
    /// `sql`, written in standard SQL, as this database reads it.
    pub(crate) fn render(&self, sql: &str) -> String {
        match self.syntax {
            Syntax::Standard => sql.to_string(),
            Syntax::MySql => to_mysql(sql),
        }
    }

    /// The SQL naming who did it, where the statement's next free parameter is `$n`.
    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    pub(crate) fn actor_sql(&self, n: usize) -> String {
        match self.actor {
            Actor::DatabaseUser => "current_user".to_string(),
            Actor::OsUser => format!("${n}"),
        }
    }

    /// The value bound at that parameter, where there is one.
    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    pub(crate) fn actor_value(&self) -> Option<String> {
        match self.actor {
            Actor::DatabaseUser => None,
            Actor::OsUser => Some(os_user()),
        }
    }
}

/// The operating-system user running datamig, recorded as `applied_by` where the database
/// has no users of its own (SQLite).
#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".to_string())
}

/// A statement written in standard SQL as MySQL reads it: each `"identifier"` in backticks
/// (a doubled `"` inside it single, a backtick doubled), each `$n` outside quotes a `?`.
/// `CAST(x AS bigint)` (or `integer`) is `CAST(x AS signed)`, `CAST(x AS text)` is
/// `CAST(x AS char)`. String literals (`'..'`, with `''` and backslash escapes) and names
/// already in backticks are copied as they are. MySQL binds `?` in the order they appear, so a statement whose numbered
/// parameters are not `$1`, `$2`.. once each, in order, is a mistake of datamig's: it
/// panics in debug builds.
pub(crate) fn to_mysql(sql: &str) -> String {
    let (out, params) = to_mysql_params(sql);
    debug_assert!(
        params.iter().enumerate().all(|(i, n)| *n == i + 1),
        "MySQL parameters out of order in: {sql}"
    );
    out
}

/// [`to_mysql`] for a statement whose numbered parameters may repeat or come in any
/// order: also returns, for each `?` in order, the number of the parameter it stands for,
/// so that the caller binds `values[n - 1]` at each.
pub(crate) fn to_mysql_params(sql: &str) -> (String, Vec<usize>) {
    let mut params = Vec::new();
    let out = to_mysql_with(sql, |n| {
        params.push(n);
        "?".to_string()
    });
    (out, params)
}

/// [`to_mysql`] with each numbered parameter `$n` written as `param(n)` says (a `?`, or a
/// literal for a statement sent as text among others).
pub(crate) fn to_mysql_with(sql: &str, mut param: impl FnMut(usize) -> String) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                out.push(c);
                while let Some(c) = chars.next() {
                    out.push(c);
                    if c == '\\' {
                        if let Some(escaped) = chars.next() {
                            out.push(escaped);
                        }
                    } else if c == '\'' {
                        if chars.peek() == Some(&'\'') {
                            out.push(chars.next().unwrap_or('\''));
                        } else {
                            break;
                        }
                    }
                }
            }
            '`' => {
                out.push(c);
                for c in chars.by_ref() {
                    out.push(c);
                    if c == '`' {
                        break;
                    }
                }
            }
            '"' => {
                out.push('`');
                while let Some(c) = chars.next() {
                    if c == '"' {
                        if chars.peek() == Some(&'"') {
                            chars.next();
                            out.push('"');
                        } else {
                            break;
                        }
                    } else if c == '`' {
                        out.push_str("``");
                    } else {
                        out.push(c);
                    }
                }
                out.push('`');
            }
            '$' if chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut n = 0usize;
                while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                    n = n * 10 + d as usize;
                    chars.next();
                }
                out.push_str(&param(n));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut word = String::from(c);
                while let Some(&c) = chars.peek() {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        word.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                // The types of `CAST(x AS type)`: MySQL's names for PostgreSQL's.
                let cast_to = out.trim_end().to_ascii_uppercase().ends_with(" AS");
                match word.to_ascii_lowercase().as_str() {
                    "bigint" | "integer" if cast_to => out.push_str("signed"),
                    "text" if cast_to => out.push_str("char"),
                    _ => out.push_str(&word),
                }
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{Actor, Dialect, Syntax, to_mysql};

    #[test]
    fn mysql_reads_backticks_and_question_marks_and_strings_stay_as_they_are() {
        assert_eq!(
            to_mysql(r#"SELECT "a""b", 'it''s "x" $9', 'c\'$' FROM "t`1" WHERE x = $1 AND y > $2"#),
            r#"SELECT `a"b`, 'it''s "x" $9', 'c\'$' FROM `t``1` WHERE x = ? AND y > ?"#
        );
        assert_eq!(
            to_mysql("SELECT `it's` FROM `a``b` WHERE x = $1"),
            "SELECT `it's` FROM `a``b` WHERE x = ?"
        );
        assert_eq!(
            to_mysql("SELECT CAST(max(v) AS bigint), CAST(\"text\" AS text) AS bigint_col FROM t"),
            "SELECT CAST(max(v) AS signed), CAST(`text` AS char) AS bigint_col FROM t"
        );
    }

    #[test]
    fn the_actor_is_current_user_or_a_bound_parameter() {
        let postgres = Dialect {
            actor: Actor::DatabaseUser,
            persistent: false,
            syntax: Syntax::Standard,
        };
        let sqlite = Dialect {
            actor: Actor::OsUser,
            persistent: true,
            syntax: Syntax::Standard,
        };
        assert_eq!(postgres.actor_sql(17), "current_user");
        assert_eq!(postgres.actor_value(), None);
        assert_eq!(sqlite.actor_sql(17), "$17");
        assert!(sqlite.actor_value().is_some());
    }
}
