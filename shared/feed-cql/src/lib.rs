//! ScyllaDB plumbing shared by every store: connecting, applying and
//! verifying a component's schema, and preparing statements once with
//! explicit consistency (LOCAL_QUORUM, LOCAL_SERIAL for lightweight
//! transactions) and a page size.

use std::time::Duration;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};

use feed_core::StorageError;
use serde::{Deserialize, Serialize};

/// Rows per page of every multi-row read.
pub const PAGE_SIZE: i32 = 1000;

fn check_keyspace(k: &str) -> Result<(), StorageError> {
    // The keyspace is spliced into statements: allow only a plain identifier.
    if k.is_empty() || k.len() > 48 || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(StorageError::Backend(format!("invalid scylla.keyspace {k:?}")));
    }
    Ok(())
}

/// Connects to the configured contact points.
pub async fn connect(cfg: &ScyllaConfig) -> Result<Session, StorageError> {
    // Explicit deadlines: a node that is down or stalled makes a call fail
    // as unavailable inside the caller's deadline instead of hanging it.
    connect_with_timeout(cfg, Duration::from_millis(cfg.request_timeout_ms.max(1))).await
}

/// Schema changes wait for every node to agree, far longer than a request
/// may take: the `--migrate` step (and tests dropping their keyspace) use this.
pub const SCHEMA_TIMEOUT: Duration = Duration::from_secs(120);

/// Connects for schema changes (see [`SCHEMA_TIMEOUT`]).
pub async fn connect_for_schema(cfg: &ScyllaConfig) -> Result<Session, StorageError> {
    connect_with_timeout(cfg, SCHEMA_TIMEOUT).await
}

async fn connect_with_timeout(cfg: &ScyllaConfig, request_timeout: Duration) -> Result<Session, StorageError> {
    check_keyspace(&cfg.keyspace)?;
    let profile = ExecutionProfile::builder()
        .request_timeout(Some(request_timeout))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(cfg.node_list())
        .connection_timeout(Duration::from_millis(cfg.connect_timeout_ms.max(1)))
        .default_execution_profile_handle(profile.into_handle());
    if !cfg.username.is_empty() {
        builder = builder.user(&cfg.username, &cfg.password);
    }
    // The driver's error names the failed login, never the password.
    builder
        .build()
        .await
        .map_err(|e| StorageError::Unavailable(e.to_string()))
}

/// The keyspace and migration-record statements every component's schema starts with.
pub fn base_schema(cfg: &ScyllaConfig) -> Vec<String> {
    let k = &cfg.keyspace;
    let rf = cfg.replication_factor.max(1);
    vec![
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {k} WITH replication = {{'class': 'NetworkTopologyStrategy', 'replication_factor': {rf}}}"
        ),
        format!("CREATE TABLE IF NOT EXISTS {k}.schema_migrations (component text PRIMARY KEY, version int)"),
    ]
}

/// Applies `statements` (idempotent DDL) and records `component` at `version`:
/// the `--migrate` step, run once per deployment before the services start.
pub async fn migrate(
    cfg: &ScyllaConfig,
    component: &str,
    version: i32,
    statements: &[String],
) -> Result<(), StorageError> {
    let s = connect_for_schema(cfg).await?;
    for stmt in base_schema(cfg).iter().chain(statements) {
        s.query_unpaged(stmt.as_str(), ())
            .await
            .map_err(|e| StorageError::Backend(e.to_string()))?;
    }
    s.await_schema_agreement()
        .await
        .map_err(|e| StorageError::Unavailable(e.to_string()))?;
    // Literal values, not bound ones: a statement with values is prepared
    // first, and a node whose prepared-statement cache is churning (many
    // keyspaces, as in the test suite) can evict it between the prepare
    // and the execute.
    s.query_unpaged(
        format!(
            "INSERT INTO {}.schema_migrations (component, version) VALUES ('{}', {version})",
            cfg.keyspace,
            component.replace('\'', "''")
        ),
        (),
    )
    .await
    .map_err(|e| StorageError::Backend(e.to_string()))?;
    Ok(())
}

/// Connects and checks that `component`'s schema is at least `version`;
/// services only verify, they never migrate.
pub async fn connect_verified(cfg: &ScyllaConfig, component: &str, version: i32) -> Result<Session, StorageError> {
    let session = connect(cfg).await?;
    let found = session
        .query_unpaged(
            format!(
                "SELECT version FROM {}.schema_migrations WHERE component = ?",
                cfg.keyspace
            ),
            (component,),
        )
        .await
        .map_err(|e| StorageError::Backend(format!("schema missing (run {component} --migrate): {e}")))?
        .into_rows_result()
        .map_err(|e| StorageError::Backend(e.to_string()))?
        .maybe_first_row::<(i32,)>()
        .map_err(|e| StorageError::Backend(e.to_string()))?;
    match found {
        Some((v,)) if v >= version => Ok(session),
        other => Err(StorageError::Backend(format!(
            "{component} schema version {other:?} < {version}: run {component} --migrate"
        ))),
    }
}

/// Prepares a statement once, with explicit consistency and page size.
pub async fn prepare(session: &Session, query: String) -> Result<PreparedStatement, StorageError> {
    let mut p = session
        .prepare(query)
        .await
        .map_err(|e| StorageError::Backend(e.to_string()))?;
    p.set_consistency(Consistency::LocalQuorum);
    p.set_serial_consistency(Some(SerialConsistency::LocalSerial));
    p.set_page_size(PAGE_SIZE);
    Ok(p)
}

/// Executes a prepared statement (one page: writes and bounded reads).
pub async fn execute(
    session: &Session,
    p: &PreparedStatement,
    v: impl SerializeRow,
) -> Result<QueryResult, StorageError> {
    session
        .execute_unpaged(p, v)
        .await
        .map_err(|e| StorageError::Unavailable(e.to_string()))
}

/// Runs a lightweight transaction; true when it applied (its `[applied]`
/// column). Both engines run Paxos at the statement's serial consistency
/// (LOCAL_SERIAL here), ScyllaDB more cheaply; when it did not apply,
/// Cassandra returns the current row's columns after `[applied]` and
/// callers read them by name, never by position.
pub async fn applied(session: &Session, p: &PreparedStatement, v: impl SerializeRow) -> Result<bool, StorageError> {
    let rows = execute(session, p, v).await?.into_rows_result().map_err(backend)?;
    let row = rows.maybe_first_row::<Row>().map_err(backend)?;
    Ok(matches!(
        row.and_then(|r| r.columns.into_iter().next().flatten()),
        Some(CqlValue::Boolean(true))
    ))
}

/// The first row of a read, if any.
pub async fn first_row<T>(
    session: &Session,
    p: &PreparedStatement,
    v: impl SerializeRow,
) -> Result<Option<T>, StorageError>
where
    T: for<'f, 'm> DeserializeRow<'f, 'm>,
{
    execute(session, p, v)
        .await?
        .into_rows_result()
        .map_err(backend)?
        .maybe_first_row::<T>()
        .map_err(backend)
}

/// Every row of a read, fetched page by page.
pub async fn all_rows<T>(session: &Session, p: &PreparedStatement, v: impl SerializeRow) -> Result<Vec<T>, StorageError>
where
    T: for<'f, 'm> DeserializeRow<'f, 'm> + 'static,
{
    let pager = session
        .execute_iter(p.clone(), v)
        .await
        .map_err(|e| StorageError::Unavailable(e.to_string()))?;
    futures::TryStreamExt::try_collect(pager.rows_stream::<T>().map_err(backend)?)
        .await
        .map_err(backend)
}

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

/// ScyllaDB.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScyllaConfig {
    /// Comma-separated `host:port` contact points; empty uses the embedded store.
    pub nodes: String,
    /// Keyspace holding the platform's tables.
    pub keyspace: String,
    /// Replication factor used by `--migrate` (SimpleStrategy in dev, set per DC in prod).
    pub replication_factor: u32,
    /// Local datacenter for LOCAL_QUORUM routing.
    pub local_dc: String,
    /// A statement not answered within this fails as unavailable (well
    /// inside `server.request_timeout_ms`, so the caller hears UNAVAILABLE).
    pub request_timeout_ms: u64,
    /// Opening a connection to a node gives up after this.
    pub connect_timeout_ms: u64,
    /// Role to log in as (PasswordAuthenticator); empty: no login.
    pub username: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for ScyllaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("ScyllaConfig")
            .field("nodes", &self.nodes)
            .field("keyspace", &self.keyspace)
            .field("replication_factor", &self.replication_factor)
            .field("local_dc", &self.local_dc)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("username", &self.username)
            .field("password", &if self.password.is_empty() { "" } else { "<set>" })
            .finish()
    }
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        Self {
            nodes: String::new(),
            keyspace: "feed".into(),
            replication_factor: 3,
            local_dc: String::new(),
            request_timeout_ms: 5_000,
            connect_timeout_ms: 2_000,
            username: String::new(),
            password: String::new(),
        }
    }
}

impl ScyllaConfig {
    /// One node's contact point and a keyspace, replicated once (tests, a
    /// single-node development cluster); the rest as by default.
    pub fn single_node(nodes: String, keyspace: String) -> Self {
        Self {
            nodes,
            keyspace,
            replication_factor: 1,
            ..Self::default()
        }
    }

    /// Logging in as `(username, password)` (none when the username is empty).
    pub fn with_login(mut self, (username, password): (String, String)) -> Self {
        self.username = username;
        self.password = password;
        self
    }

    /// The contact points, or none when ScyllaDB is not configured.
    pub fn node_list(&self) -> Vec<String> {
        self.nodes
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }
}
