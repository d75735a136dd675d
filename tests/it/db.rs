//! The instrumented sqlx pool against real databases: SQLite in memory (always) and a private
//! PostgreSQL server (`scripts/test.sh`), running the same checks.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_core::Stream;
use sqlx::{Database, Executor, Row};
use towerscope::db::{Db, DbSystem};
use towerscope::metrics::Prometheus;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

#[cfg(feature = "postgres")]
use crate::support::Postgres;
use crate::support::{http, http_json, promtool_check, sample, start_server};

// ---- capturing towerscope's spans and events ----

#[derive(Debug, Clone, Default)]
struct Rec {
    name: String,
    fields: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
struct Captured {
    spans: Arc<Mutex<Vec<Rec>>>,
    events: Arc<Mutex<Vec<Rec>>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").replace('"', ""),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Captured {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut rec = Rec::default();
        attrs.record(&mut Fields(&mut rec.fields));
        rec.name = rec.fields.get("otel.name").cloned().unwrap_or_default();
        ctx.span(id).unwrap().extensions_mut().insert(rec);
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(rec) = ctx.span(id).unwrap().extensions_mut().get_mut::<Rec>() {
            values.record(&mut Fields(&mut rec.fields));
        }
    }
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != "towerscope::db" {
            return;
        }
        let mut rec = Rec {
            name: event.metadata().level().to_string(),
            ..Rec::default()
        };
        event.record(&mut Fields(&mut rec.fields));
        if let Some(span) = ctx.event_span(event) {
            rec.fields.insert("span".into(), span.name().to_owned());
        }
        self.events.lock().unwrap().push(rec);
    }
    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let span = ctx.span(&id).unwrap();
        if span.metadata().target() == "towerscope::db" {
            if let Some(rec) = span.extensions().get::<Rec>() {
                self.spans.lock().unwrap().push(rec.clone());
            }
        }
    }
}

impl Captured {
    fn spans(&self) -> Vec<Rec> {
        self.spans.lock().unwrap().clone()
    }
    /// The closed spans once `done` holds for them, or after ten seconds, whichever is first.
    /// A span closes when its last handle drops, and sqlx's SQLite worker thread holds a
    /// handle to the caller's span until it has finished the command, which may be after the
    /// caller already has the result: the close can come a moment after the query returns.
    async fn spans_when(&self, done: impl Fn(&[Rec]) -> bool) -> Vec<Rec> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let spans = self.spans();
            if done(&spans) || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    fn events(&self) -> Vec<Rec> {
        self.events.lock().unwrap().clone()
    }
    fn clear(&self) {
        self.spans.lock().unwrap().clear();
        self.events.lock().unwrap().clear();
    }
}

// ---- the same checks on every database ----

/// What differs between the databases.
struct Dialect {
    system: &'static str,
    create: &'static str,
    insert: &'static str,
    by_id: &'static str,
    /// The code a unique violation reports: SQLSTATE `23505`, SQLite's extended code 2067.
    unique_violation: &'static str,
}

const SQLITE: Dialect = Dialect {
    system: "sqlite",
    create: "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE)",
    insert: "INSERT INTO users (id, email) VALUES (?, ?)",
    by_id: "SELECT id, email FROM users WHERE id = ?",
    unique_violation: "2067",
};

#[cfg(feature = "postgres")]
const POSTGRES: Dialect = Dialect {
    system: "postgresql",
    create: "CREATE TABLE users (id BIGINT PRIMARY KEY, email TEXT NOT NULL UNIQUE)",
    insert: "INSERT INTO users (id, email) VALUES ($1, $2)",
    by_id: "SELECT id, email FROM users WHERE id = $1",
    unique_violation: "23505",
};

fn count(text: &str, d: &Dialect, op: &str, coll: Option<&str>, err: Option<&str>) -> f64 {
    let mut labels = vec![("db_system_name", d.system), ("db_operation_name", op)];
    if let Some(c) = coll {
        labels.push(("db_collection_name", c));
    }
    if let Some(e) = err {
        labels.push(("error_type", e));
    }
    sample(text, "db_client_operation_duration_seconds_count", &labels).unwrap_or(0.0)
}

async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
}

/// Runs every check on `pool`, an empty database.
async fn suite<DB>(pool: sqlx::Pool<DB>, d: &Dialect)
where
    DB: DbSystem,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let captured = Captured::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(captured.clone()));
    let (recorder, prometheus) = Prometheus::builder().build();
    let db = Db::builder(pool)
        .pool_name("test")
        .returned_rows(true)
        .recorder(Arc::new(recorder))
        .build();
    let render = |p: &Prometheus| p.render();

    // Queries through `&db`, unchanged sqlx calls.
    sqlx::query(d.create).execute(&db).await.unwrap();
    for (id, email) in [(1_i64, "ada@example.org"), (2, "bob@example.org")] {
        sqlx::query(d.insert)
            .bind(id)
            .bind(email)
            .execute(&db)
            .await
            .unwrap();
    }
    let row = sqlx::query(d.by_id)
        .bind(2_i64)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>(1), "bob@example.org");
    let none = sqlx::query(d.by_id)
        .bind(99_i64)
        .fetch_optional(&db)
        .await
        .unwrap();
    assert!(none.is_none(), "no row is not a failure");
    let all = sqlx::query("SELECT id FROM users ORDER BY id")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(all.len(), 2);

    let text = render(&prometheus);
    assert_eq!(count(&text, d, "CREATE TABLE", Some("users"), None), 1.0);
    assert_eq!(count(&text, d, "INSERT", Some("users"), None), 2.0);
    assert_eq!(count(&text, d, "SELECT", Some("users"), None), 3.0);
    assert_eq!(
        sample(&text, "db_client_connections_max", &[("pool_name", "test")]),
        Some(f64::from(db.pool().options().get_max_connections()))
    );
    assert!(
        sample(
            &text,
            "db_client_connections_usage",
            &[("pool_name", "test"), ("state", "idle")]
        )
        .is_some(),
        "{text}"
    );

    // Spans: named by the summary, with the semantic-convention attributes.
    let spans = captured.spans_when(|spans| spans.len() >= 6).await;
    assert_eq!(spans.len(), 6, "one span per query");
    let by_id = |s: &&Rec| s.fields.get("db.query.text").map(String::as_str) == Some(d.by_id);
    let select = spans.iter().find(by_id).expect("the SELECT's span");
    assert_eq!(select.name, "SELECT users");
    assert_eq!(select.fields["otel.kind"], "client");
    assert_eq!(select.fields["db.system.name"], d.system);
    assert_eq!(select.fields["db.operation.name"], "SELECT");
    assert_eq!(select.fields["db.collection.name"], "users");
    assert_eq!(select.fields["db.query.summary"], "SELECT users");
    assert!(select.fields.contains_key("db.namespace"));
    let rows: Vec<&str> = spans
        .iter()
        .filter(by_id)
        .map(|s| s.fields["db.response.returned_rows"].as_str())
        .collect();
    assert_eq!(rows, ["1", "0"], "fetch_one then fetch_optional(None)");
    let debug = captured
        .events()
        .into_iter()
        .filter(|e| e.name == "DEBUG" && e.fields["message"] == "query")
        .count();
    assert_eq!(debug, 6, "one DEBUG record per query");

    // A failing query: the code, error.type, Error status, an ERROR log; no literal values.
    captured.clear();
    let err = sqlx::query(d.insert)
        .bind(3_i64)
        .bind("ada@example.org")
        .execute(&db)
        .await
        .err()
        .expect("unique violation");
    let code = err.as_database_error().and_then(|e| e.code()).unwrap();
    assert_eq!(code, d.unique_violation);
    let text = render(&prometheus);
    assert_eq!(
        count(&text, d, "INSERT", Some("users"), Some(d.unique_violation)),
        1.0,
        "{text}"
    );
    let spans = captured.spans_when(|spans| !spans.is_empty()).await;
    assert_eq!(spans.len(), 1, "the failed INSERT's span");
    let span = &spans[0];
    assert_eq!(span.fields["error.type"], d.unique_violation);
    assert_eq!(span.fields["db.response.status_code"], d.unique_violation);
    assert_eq!(span.fields["otel.status_code"], "error");
    let events = captured.events();
    let error = events
        .iter()
        .find(|e| e.name == "ERROR")
        .expect("ERROR log");
    assert_eq!(error.fields["db.response.status_code"], d.unique_violation);
    assert_eq!(
        error.fields["span"], "db.query",
        "logged inside the query span"
    );
    let all = format!("{events:?}{spans:?}");
    assert!(!all.contains("ada@example.org"), "{all}");

    // Literals in the text are sanitised everywhere, also in the slow-query WARN.
    captured.clear();
    let slow = Db::builder(db.pool().clone())
        .slow_query(Duration::ZERO)
        .recorder(Arc::new(Prometheus::builder().build().0))
        .build();
    sqlx::query("SELECT id FROM users WHERE email = 'bob@example.org' AND id IN (1, 2, 3)")
        .fetch_all(&slow)
        .await
        .unwrap();
    let warn = captured
        .events()
        .into_iter()
        .find(|e| e.name == "WARN")
        .expect("slow query WARN");
    assert_eq!(
        warn.fields["db.query.text"],
        "SELECT id FROM users WHERE email = ? AND id IN (?)"
    );
    let spans = captured.spans_when(|spans| !spans.is_empty()).await;
    assert_eq!(spans.len(), 1, "the slow query's span");
    let all = format!("{:?}{spans:?}", captured.events());
    assert!(!all.contains("bob@example.org"), "{all}");

    // A rolled-back transaction: its INSERT and the ROLLBACK are recorded, the row is gone.
    let mut tx = db.begin().await.unwrap();
    sqlx::query(d.insert)
        .bind(10_i64)
        .bind("tx@example.org")
        .execute(&mut tx)
        .await
        .unwrap();
    let inside: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut tx)
        .await
        .unwrap();
    assert_eq!(inside, 3);
    tx.rollback().await.unwrap();
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(after, 2);
    let text = render(&prometheus);
    assert_eq!(count(&text, d, "ROLLBACK", None, None), 1.0, "{text}");
    assert_eq!(count(&text, d, "INSERT", Some("users"), None), 3.0);
    // And a committed one, on an acquired connection too.
    let mut tx = db.begin().await.unwrap();
    sqlx::query(d.insert)
        .bind(11_i64)
        .bind("kept@example.org")
        .execute(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut conn = db.acquire().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 3);
    drop(conn);
    let text = render(&prometheus);
    assert_eq!(count(&text, d, "COMMIT", None, None), 1.0, "{text}");

    // The duration runs to the end of the result stream; a stream dropped early is cancelled.
    let before = count(&text, d, "SELECT", Some("users"), None);
    {
        let mut rows = sqlx::query("SELECT id FROM users ORDER BY id").fetch(&db);
        assert!(next(&mut rows).await.unwrap().is_ok());
        let text = render(&prometheus);
        assert_eq!(
            count(&text, d, "SELECT", Some("users"), None),
            before,
            "not recorded at the first row"
        );
        while let Some(r) = next(&mut rows).await {
            r.unwrap();
        }
    }
    let text = render(&prometheus);
    assert_eq!(count(&text, d, "SELECT", Some("users"), None), before + 1.0);
    {
        let mut rows = sqlx::query("SELECT id FROM users ORDER BY id").fetch(&db);
        assert!(next(&mut rows).await.unwrap().is_ok());
    }
    let text = render(&prometheus);
    assert_eq!(
        count(&text, d, "SELECT", Some("users"), Some("cancelled")),
        1.0,
        "{text}"
    );
    assert_eq!(count(&text, d, "SELECT", Some("users"), None), before + 1.0);

    promtool_check(&text, d.system);
}

/// Acquire timeouts are counted, and the query is recorded with `error_type="pool_timeout"`.
async fn pool_timeout<DB>(pool: sqlx::Pool<DB>, d: &Dialect)
where
    DB: DbSystem,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    let (recorder, prometheus) = Prometheus::builder().build();
    let db = Db::builder(pool)
        .pool_name("tiny")
        .recorder(Arc::new(recorder))
        .build();
    let held = db.acquire().await.unwrap();
    db.refresh_gauges();
    let text = prometheus.render();
    assert_eq!(
        sample(
            &text,
            "db_client_connections_usage",
            &[("pool_name", "tiny"), ("state", "used")]
        ),
        Some(1.0),
        "{text}"
    );
    let err = sqlx::query("SELECT 1")
        .execute(&db)
        .await
        .err()
        .expect("pool timeout");
    assert!(matches!(err, sqlx::Error::PoolTimedOut), "{err}");
    drop(held);
    let text = prometheus.render();
    assert_eq!(
        sample(
            &text,
            "db_client_connections_timeouts_total",
            &[("pool_name", "tiny")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(count(&text, d, "SELECT", None, Some("pool_timeout")), 1.0);
}

#[tokio::test]
async fn sqlite_in_memory() {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    suite::<sqlx::Sqlite>(pool, &SQLITE).await;
}

#[tokio::test]
async fn sqlite_pool_timeout() {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(100))
        .connect("sqlite::memory:")
        .await
        .unwrap();
    pool_timeout::<sqlx::Sqlite>(pool, &SQLITE).await;
}

/// Between queries the pool gauges follow the pool from their own thread: a connection taken
/// from the pool directly (no query through towerscope) shows up as used, then as idle again.
#[tokio::test]
async fn pool_gauges_follow_the_pool_between_queries() {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    let (recorder, prometheus) = Prometheus::builder().build();
    let db = Db::builder(pool)
        .pool_name("watched")
        .gauge_interval(Duration::from_millis(10))
        .recorder(Arc::new(recorder))
        .build();
    let used = || {
        sample(
            &prometheus.render(),
            "db_client_connections_usage",
            &[("pool_name", "watched"), ("state", "used")],
        )
    };
    assert_eq!(used(), Some(0.0));
    let held = db.pool().acquire().await.unwrap();
    let until = |want: f64| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while used() != Some(want) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        used()
    };
    assert_eq!(
        until(1.0).await,
        Some(1.0),
        "the refresh never saw the held connection"
    );
    drop(held);
    assert_eq!(
        until(0.0).await,
        Some(0.0),
        "the refresh never saw it returned"
    );
}

#[cfg(feature = "postgres")]
#[tokio::test]
#[ignore = "needs PostgreSQL (Debian package postgresql): run scripts/test.sh"]
async fn postgres_private_server() {
    let server = Postgres::start();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&server.url())
        .await
        .expect("connect to the private PostgreSQL");
    suite::<sqlx::Postgres>(pool, &POSTGRES).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(200))
        .connect(&server.url())
        .await
        .unwrap();
    pool_timeout::<sqlx::Postgres>(pool, &POSTGRES).await;
}

/// The example server's user routes on its embedded SQLite database, through the pool.
#[test]
fn example_server_user_routes() {
    let (_server, addr) = start_server("full");
    let (status, body) = http_json(
        addr,
        "POST",
        "/users",
        Some(r#"{"name":"ada","email":"ada@example.org"}"#),
    );
    assert_eq!(status, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = created["id"].as_i64().expect("id");
    let (status, body) = http(addr, "GET", &format!("/users/{id}"));
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        created
    );
    assert_eq!(http(addr, "GET", "/users/4242").0, 404);
    let dup = http_json(
        addr,
        "POST",
        "/users",
        Some(r#"{"name":"eve","email":"ada@example.org"}"#),
    );
    assert_eq!(dup.0, 409, "{}", dup.1);
    let (status, body) = http(addr, "GET", "/users");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!([created])
    );

    let (_, text) = http(addr, "GET", "/metrics");
    let series = |op: &str, err: Option<&str>| {
        let mut labels = vec![
            ("db_system_name", "sqlite"),
            ("db_operation_name", op),
            ("db_collection_name", "users"),
        ];
        if let Some(e) = err {
            labels.push(("error_type", e));
        }
        sample(&text, "db_client_operation_duration_seconds_count", &labels)
    };
    assert_eq!(series("INSERT", None), Some(1.0), "{text}");
    assert_eq!(series("INSERT", Some("2067")), Some(1.0), "{text}");
    assert_eq!(series("SELECT", None), Some(3.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "db_client_connections_max",
            &[("pool_name", "users")]
        ),
        Some(1.0)
    );
}
