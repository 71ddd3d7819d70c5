//! A fleet's targets: each a database URL and, for a schema-per-tenant database, the
//! tenant's schema. Read from a file (one a line) or from a query's rows; a malformed line
//! is named by its number, a target named twice is refused, and a URL's password is never
//! shown (a target's name is built from the URL's parts without it).

use std::collections::HashMap;
use std::path::Path;

use crate::error::Error;

/// One database (or one schema of a database) a fleet migrates.
///
/// Its [`name`](Target::name) is what every report, progress line, error and trace shows:
/// the URL without its password and its parameters, and the schema
/// (`postgres://app@db1:5432/shop schema=tenant_7`, `sqlite:data/eu.db`). The URL itself,
/// which may hold the password, is shown nowhere.
#[derive(Clone)]
pub struct Target {
    url: String,
    schema: Option<String>,
    line: usize,
    name: String,
    /// What makes two targets one: the server, port and database (the file for SQLite)
    /// and the schema, whoever connects.
    identity: String,
    /// The database alone: the server, port and database (the file for SQLite).
    database: String,
    backend: &'static str,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may hold the password.
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// A target: the database at `url`, and for a schema-per-tenant database the tenant's
    /// `schema` (the ledger lives there, and the migrations run with it first on the
    /// search path). `line` is where it was read from (1 for the first), for messages.
    ///
    /// # Errors
    ///
    /// [`Error::BadTarget`] when `url` is not a `postgres://` or `sqlite:` URL this build
    /// can connect to, or names a schema for a SQLite file.
    ///
    /// # Examples
    ///
    /// ```
    /// let target = datamig::Target::new(1, "postgres://app:secret@db1/shop", Some("tenant_7"))?;
    /// assert_eq!(target.name(), "postgres://app@db1:5432/shop schema=tenant_7");
    /// # Ok::<(), datamig::Error>(())
    /// ```
    pub fn new(line: usize, url: &str, schema: Option<&str>) -> Result<Self, Error> {
        let bad = |reason: String| Error::BadTarget { line, reason };
        if let Some(schema) = schema {
            crate::sql::check_name("schema", schema).map_err(|e| bad(e.to_string()))?;
        }
        let (backend, identity, name) = if url.starts_with("postgres://")
            || url.starts_with("postgresql://")
        {
            postgres_identity(url).map_err(bad)?
        } else if url.starts_with("sqlite:") {
            if schema.is_some() {
                return Err(bad(format!(
                    "{}: schema= applies to PostgreSQL targets, and a SQLite file has no schemas",
                    redact(url)
                )));
            }
            sqlite_identity(url).map_err(bad)?
        } else {
            return Err(bad(format!(
                "{} is not a database URL: write postgres://user:password@host:port/database \
                 or sqlite:path/to/file.db, optionally followed by schema=NAME",
                redact(url)
            )));
        };
        let database = identity.clone();
        let (identity, name) = match schema {
            Some(schema) => (
                format!("{identity} schema={schema}"),
                format!("{name} schema={schema}"),
            ),
            None => (identity, name),
        };
        Ok(Target {
            url: url.to_string(),
            schema: schema.map(str::to_string),
            line,
            name,
            identity,
            database,
            backend,
        })
    }

    /// What reports, progress, errors and traces call it: the URL without its password
    /// and parameters, then ` schema=NAME` for a tenant schema.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tenant's schema, for a schema-per-tenant target.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// Where it was read from: the line of the file, or the row of the query, from 1.
    pub fn line(&self) -> usize {
        self.line
    }

    /// Its backend's name (`postgres`, `sqlite`), as [`Backend`](crate::Backend)s name
    /// themselves.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The database, whatever the schema: what the targets of one database share.
    pub(crate) fn database(&self) -> &str {
        &self.database
    }

    /// The URL as given, password included: for connecting, never for showing.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// A fleet's list of targets, in the order given, each named once.
///
/// # Examples
///
/// ```
/// let targets = datamig::Targets::parse(
///     "# one schema per tenant, and a database per region
///      postgres://app:secret@db1/shop schema=tenant_1
///      postgres://app:secret@db1/shop schema=tenant_2
///      postgres://app:secret@db2/shop_eu",
/// )?;
/// assert_eq!(targets.len(), 3);
/// assert_eq!(targets.iter().nth(1).unwrap().line(), 3);
/// # Ok::<(), datamig::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Targets {
    targets: Vec<Target>,
}

impl Targets {
    /// Reads targets from text: one a line, a database URL optionally followed by
    /// whitespace and `schema=NAME`. Blank lines and lines starting with `#` are skipped.
    ///
    /// # Errors
    ///
    /// [`Error::BadTarget`] naming the first malformed line; [`Error::DuplicateTarget`]
    /// when two lines name the same database (and schema), whoever connects.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            if let Some((url, schema)) = parse_line(index + 1, line)? {
                entries.push((index + 1, url.to_string(), schema.map(str::to_string)));
            }
        }
        Self::from_entries(entries)
    }

    /// Reads the targets file at `path` (see [`Targets::parse`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the file cannot be read; as [`Targets::parse`].
    pub fn read(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|err| {
            Error::Config(format!(
                "cannot read the targets file {}: {err}",
                path.display()
            ))
        })?;
        Self::parse(&text)
    }

    /// Targets from `(line, URL, schema)` entries, each target once.
    pub(super) fn from_entries(
        entries: impl IntoIterator<Item = (usize, String, Option<String>)>,
    ) -> Result<Self, Error> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut targets = Vec::new();
        for (line, url, schema) in entries {
            let target = Target::new(line, &url, schema.as_deref())?;
            if let Some(first_line) = seen.get(&target.identity) {
                return Err(Error::DuplicateTarget {
                    target: target.name,
                    line,
                    first_line: *first_line,
                });
            }
            seen.insert(target.identity.clone(), line);
            targets.push(target);
        }
        Ok(Targets { targets })
    }

    /// How many targets there are.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The targets, in the order given.
    pub fn iter(&self) -> std::slice::Iter<'_, Target> {
        self.targets.iter()
    }

    /// The backend every target shares, or `None` when there are none.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first line of another backend than the first line's:
    /// a fleet migrates databases of one backend.
    pub fn backend(&self) -> Result<Option<&'static str>, Error> {
        let Some(first) = self.targets.first() else {
            return Ok(None);
        };
        match self.targets.iter().find(|t| t.backend != first.backend) {
            Some(other) => Err(Error::Config(format!(
                "the targets mix backends: line {} is a {} target and line {} a {} one; \
                 a fleet migrates databases of one backend, so give each its own targets",
                first.line, first.backend, other.line, other.backend
            ))),
            None => Ok(Some(first.backend)),
        }
    }
}

impl<'a> IntoIterator for &'a Targets {
    type Item = &'a Target;
    type IntoIter = std::slice::Iter<'a, Target>;

    fn into_iter(self) -> Self::IntoIter {
        self.targets.iter()
    }
}

/// One line of a targets file: `None` for a blank line or a comment, else the URL and the
/// schema.
fn parse_line(line: usize, text: &str) -> Result<Option<(&str, Option<&str>)>, Error> {
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') {
        return Ok(None);
    }
    let mut words = text.split_whitespace();
    let url = words.next().unwrap_or_default();
    let mut schema = None;
    for word in words {
        let bad = |reason: String| Error::BadTarget { line, reason };
        match word.strip_prefix("schema=") {
            Some("") => return Err(bad("schema= names no schema".to_string())),
            Some(_) if schema.is_some() => {
                return Err(bad("schema= is given twice".to_string()));
            }
            Some(name) => schema = Some(name),
            None => {
                return Err(bad(format!(
                    "unexpected {:?} after the URL: a line is a database URL, optionally \
                     followed by schema=NAME",
                    redact(word)
                )));
            }
        }
    }
    Ok(Some((url, schema)))
}

/// `(backend, identity, name)` of a `postgres://` URL.
#[cfg(feature = "postgres")]
fn postgres_identity(url: &str) -> Result<(&'static str, String, String), String> {
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .map_err(|err| format!("invalid URL {}: {}", redact(url), describe_invalid(&err)))?;
    let host = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => options.get_host().to_lowercase(),
    };
    let port = options.get_port();
    let user = options.get_username();
    let database = options.get_database().unwrap_or(user);
    Ok((
        "postgres",
        format!("postgres://{host}:{port}/{database}"),
        format!("postgres://{user}@{host}:{port}/{database}"),
    ))
}

#[cfg(not(feature = "postgres"))]
fn postgres_identity(url: &str) -> Result<(&'static str, String, String), String> {
    Err(format!(
        "{}: this datamig is built without its PostgreSQL backend (cargo feature `postgres`)",
        redact(url)
    ))
}

/// `(backend, identity, name)` of a `sqlite:` URL.
#[cfg(feature = "sqlite")]
fn sqlite_identity(url: &str) -> Result<(&'static str, String, String), String> {
    use std::str::FromStr;
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .map_err(|err| format!("invalid URL {}: {}", redact(url), describe_invalid(&err)))?;
    let file = options.get_filename();
    let identity = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    Ok((
        "sqlite",
        format!("sqlite:{}", identity.display()),
        format!("sqlite:{}", file.display()),
    ))
}

#[cfg(not(feature = "sqlite"))]
fn sqlite_identity(url: &str) -> Result<(&'static str, String, String), String> {
    Err(format!(
        "{}: this datamig is built without its SQLite backend (cargo feature `sqlite`)",
        redact(url)
    ))
}

/// Why a URL does not parse, without repeating the URL.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
fn describe_invalid(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Configuration(cause) => cause.to_string(),
        other => other.to_string(),
    }
}

/// A URL (or what was meant as one) for messages: the parameters, which may hold a
/// password, replaced by `?...`, and any password before an `@` by `***`.
pub(crate) fn redact(url: &str) -> String {
    let mut text = match url.find('?') {
        Some(at) => format!("{}?...", &url[..at]),
        None => url.to_string(),
    };
    // `user:password@host`: whatever follows the user's `:` up to the `@`.
    if let Some(at) = text.rfind('@') {
        let start = text[..at].rfind("//").map_or(0, |i| i + 2);
        if let Some(colon) = text[start..at].find(':') {
            text.replace_range(start + colon + 1..at, "***");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_urls_with_an_optional_schema() {
        let targets = Targets::parse(
            "\n# tenants\npostgres://app:pw@db1/shop schema=t1\n  postgres://app:pw@DB1:5432/shop   schema=t2  \n\
             sqlite:eu.db\n",
        )
        .unwrap();
        let names: Vec<(&str, usize)> = targets.iter().map(|t| (t.name(), t.line())).collect();
        assert_eq!(
            names,
            [
                ("postgres://app@db1:5432/shop schema=t1", 3),
                ("postgres://app@db1:5432/shop schema=t2", 4),
                ("sqlite:eu.db", 5),
            ]
        );
        assert_eq!(targets.iter().next().unwrap().schema(), Some("t1"));
        assert!(targets.backend().is_err(), "mixed backends are named");
    }

    #[test]
    fn a_malformed_line_is_named_by_its_number_without_the_password() {
        for (text, words) in [
            (
                "postgres://a:pw1@h/db\nmysql://u:hunter2@h/db\n",
                "not a database URL",
            ),
            (
                "postgres://a:pw1@h/db\n\npostgres://u:hunter2@h/db shema=x\n",
                "unexpected",
            ),
            ("postgres://u:hunter2@h:notaport/db\n", "invalid URL"),
            ("sqlite:a.db schema=x\n", "no schemas"),
            ("postgres://u:hunter2@h/db schema=\n", "names no schema"),
        ] {
            let err = Targets::parse(text).unwrap_err();
            let message = err.to_string();
            let line = text.lines().count();
            assert!(
                matches!(err, Error::BadTarget { line: l, .. } if l == line),
                "{message}"
            );
            assert!(message.contains(&format!("line {line}")), "{message}");
            assert!(message.contains(words), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
    }

    #[test]
    fn a_target_named_twice_is_refused_whoever_connects() {
        let err = Targets::parse(
            "postgres://a:x@db1/shop schema=t1\npostgres://a:x@db1/shop schema=t2\n\
             postgres://b:y@db1:5432/shop?sslmode=disable schema=t1\n",
        )
        .unwrap_err();
        match &err {
            Error::DuplicateTarget {
                target,
                line,
                first_line,
            } => {
                assert_eq!((*line, *first_line), (3, 1));
                assert_eq!(target, "postgres://b@db1:5432/shop schema=t1");
            }
            other => panic!("{other:?}"),
        }
        // The same database without a schema is another target.
        assert_eq!(
            Targets::parse("postgres://a@db1/shop\npostgres://a@db1/shop schema=t1")
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn passwords_and_parameters_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db?password=x"),
            "postgres://u:***@h:5432/db?..."
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres//u:secret@h/db"), "postgres//u:***@h/db");
        assert_eq!(redact("postgres://h:5432/db"), "postgres://h:5432/db");
        assert_eq!(redact("postgres://u:pa/ss@h/db"), "postgres://u:***@h/db");
        let target = Target::new(1, "postgres://u:secret@h/db?password=x", None).unwrap();
        assert!(!format!("{target:?} {}", target.name()).contains("secret"));
    }
}
