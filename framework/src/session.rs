//! Who runs datamig where: the sessions a server shows, and the names datamig gives its
//! runners (`datamig/<host>/<pid>`), by which `unlock` tells a live holder from a dead one.

/// A database session, as the server sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The server process id of the session.
    pub pid: i32,
    /// The database user.
    pub user: Option<String>,
    /// The session's `application_name` (datamig runners use `datamig/<host>/<pid>`).
    pub application_name: String,
    /// The client's address, if it connected over TCP.
    pub client_addr: Option<String>,
    /// `active`, `idle`, `idle in transaction`, ...
    pub state: Option<String>,
    /// How long its transaction has been open, in milliseconds.
    pub transaction_age_ms: Option<i64>,
    /// How long it has been in its state, in milliseconds.
    pub state_age_ms: Option<i64>,
    /// What it waits for (`Lock`, `Client`, ...).
    pub wait_event_type: Option<String>,
    /// The sessions blocking it.
    pub blocked_by: Vec<i32>,
    /// Its current or last query (the first 500 characters).
    pub query: Option<String>,
    /// Whether this is the holder of a lease ([`crate::RunnerLock::Lease`]) rather than a
    /// session: then `pid` is its runner's process id on its host, not a server process.
    pub lease: bool,
}

impl SessionInfo {
    /// The host and process id of a datamig runner, from its `application_name`.
    pub fn runner(&self) -> Option<(String, u32)> {
        let rest = self.application_name.strip_prefix("datamig/")?;
        let (host, pid) = rest.rsplit_once('/')?;
        Some((host.to_string(), pid.parse().ok()?))
    }
}

/// Whether process `pid` runs on this machine (`/proc`, or `kill -0` where there is no
/// `/proc`): how `datamig unlock` and SQLite's lock decide that a holder on this host is
/// gone.
#[doc(hidden)]
pub fn local_process_alive(pid: u32) -> bool {
    if std::path::Path::new("/proc/self").exists() {
        return std::path::Path::new(&format!("/proc/{pid}")).exists();
    }
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The `application_name` of a runner's session: `datamig/<host>/<pid>`.
pub(crate) fn runner_tag() -> String {
    format!("datamig/{}/{}", host_name(), std::process::id())
}

/// This machine's host name, as datamig records it: in the ledger, the run history, and
/// the `application_name` of a runner's session (`datamig/<host>/<pid>`).
pub fn host_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// Connection options that work through a transaction pooler without support for
/// prepared statements (PgBouncer before 1.21, or with `max_prepared_statements = 0`, in
/// `transaction` mode), with the pooler's default settings:
///
/// - no statement cache (`statement_cache_capacity(0)`, the URL parameter
///   `statement-cache-capacity=0`): sqlx then prepares each statement unnamed, in the
///   same transaction that runs it, instead of naming it `sqlx_s_N` once per session,
///   a name another client may already have created on the pooled server session;
/// - no `extra_float_digits` startup parameter, which PgBouncer refuses
///   (`unsupported startup parameter`) unless listed in its `ignore_startup_parameters`.
///
/// datamig runs each of its own statements inside a transaction, where a transaction
/// pooler keeps one server session. Pair these options with [`RunnerLock::Lease`](crate::RunnerLock::Lease). The
/// `datamig` command line connects this way always.
#[cfg(feature = "postgres")]
pub fn pooler_safe(options: sqlx::postgres::PgConnectOptions) -> sqlx::postgres::PgConnectOptions {
    options.statement_cache_capacity(0).extra_float_digits(None)
}
