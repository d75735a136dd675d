//! Database-call instrumentation (feature `sqlx`): an instrumented sqlx pool (`Db`) following the
//! OpenTelemetry database semantic conventions, and the SQL analyser ([`sql`]) behind it.
//!
//! [`Db`] wraps a `sqlx::Pool` (SQLite; PostgreSQL with the `postgres` feature) and implements
//! sqlx's `Executor`, so `sqlx::query(…).fetch_all(&db)` and the `query!` family keep working;
//! `Db::begin` and `Db::acquire` give instrumented transactions and connections. Each query
//! text is analysed once (a lexer, not regular expressions) and its handles kept in a bounded
//! cache, so a repeated query costs a lookup.
//!
//! A query's duration runs until its result stream ends (all rows fetched), its first error, or
//! its drop (recorded as `error_type="cancelled"`).
//!
//! ```
//! # async fn demo() -> Result<(), sqlx::Error> {
//! use towerscope::db::Db;
//! let db = Db::new(sqlx::SqlitePool::connect("sqlite::memory:").await?);
//! let one: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&db).await?;
//! # assert_eq!(one, 1);
//! # Ok(()) }
//! ```
//!
//! ## Metrics
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `db_client_operation_duration_seconds` | histogram, buckets `DB_DURATION_BUCKETS` (1 ms to 10 s) | `db_system_name`, `db_operation_name`, `db_collection_name` (when known), `error_type` (failures only: SQLSTATE, sqlx error kind or `cancelled`) |
//! | `db_client_connections_usage` | gauge | `pool_name`, `state="idle\|used"` |
//! | `db_client_connections_max` | gauge | `pool_name` |
//! | `db_client_connections_timeouts_total` | counter | `pool_name` |
//!
//! The pool metrics use the earlier semantic-convention names: the current
//! `db.client.connection.count` would become a gauge ending in `_count`, which Prometheus
//! tooling rejects.
//!
//! ## Spans
//!
//! A span `db.query` (target `towerscope::db`, INFO) per query, named (`otel.name`) by the
//! summary, kind CLIENT, child of the current span, with `db.system.name`, `db.namespace`,
//! `db.operation.name`, `db.collection.name`, `db.query.summary`, `db.query.text` (sanitised:
//! literals are `?`, and for SQLite double-quoted strings in value positions too: see
//! [`sql::analyze_for`]), `server.address`, `server.port`, and on failure `error.type`,
//! `db.response.status_code` and `otel.status_code="error"`; `db.response.returned_rows` when
//! enabled.
//!
//! ## Logs (target `towerscope::db`)
//!
//! DEBUG `query` (summary, `duration_s`); WARN `slow query` with the sanitised text at or above
//! `DbBuilder::slow_query`; ERROR `query failed` with the SQLSTATE, `error.type` and the
//! violated constraint. The driver's error message is not logged, since it can quote values:
//! raw literals never reach logs, spans or metrics.

mod cache;
#[cfg(feature = "sqlx")]
mod pool;
#[cfg(feature = "sqlx")]
mod record;
pub mod sql;
#[cfg(feature = "sqlx")]
mod system;

#[cfg(feature = "sqlx")]
pub use pool::{Db, DbBuilder, DbConnection, DbTransaction};
#[cfg(feature = "sqlx")]
pub use record::{
    CANCELLED, CONNECTIONS_MAX, CONNECTIONS_TIMEOUTS, CONNECTIONS_USAGE, OPERATION_DURATION,
};
#[cfg(feature = "sqlx")]
pub use system::{DbSystem, Target};
