//! The instrumented pool ([`Db`]), its transactions and connections: each implements sqlx's
//! `Executor`, so queries written against a pool keep working unchanged.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use metrics::Recorder;
use sqlx::pool::PoolConnection;
use sqlx::{Database, Describe, Either, Error, Execute, Executor, Pool, Transaction};

use super::record::{Pending, RecordedFuture, RecordedStream, Settings, Shared};
use super::system::{DbSystem, Target};

/// A sqlx pool whose every query is a span, a histogram sample and a log record.
///
/// Use `&db` wherever `&pool` was used; `db.begin()` and `db.acquire()` give an instrumented
/// transaction and connection (use `&mut tx` where `&mut *tx` was used).
///
/// ```
/// # async fn demo() -> Result<(), sqlx::Error> {
/// use towerscope::db::Db;
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// let db = Db::builder(pool)
///     .pool_name("main")
///     .slow_query(std::time::Duration::from_millis(200))
///     .build();
/// sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)").execute(&db).await?;
/// let mut tx = db.begin().await?;
/// sqlx::query("INSERT INTO users (name) VALUES (?)").bind("ada").execute(&mut tx).await?;
/// tx.commit().await?;
/// let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&db).await?;
/// assert_eq!(n, 1);
/// # Ok(()) }
/// ```
pub struct Db<DB: Database> {
    pool: Pool<DB>,
    shared: Arc<Shared>,
}

impl<DB: Database> Clone for Db<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<DB: Database> std::fmt::Debug for Db<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("system", &self.shared.system)
            .field("target", &self.shared.target)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Db`].
pub struct DbBuilder<DB: Database> {
    pool: Pool<DB>,
    pool_name: Option<String>,
    slow: Duration,
    returned_rows: bool,
    cache_capacity: usize,
    gauge_interval: Duration,
    recorder: Option<Arc<dyn Recorder + Send + Sync>>,
}

impl<DB: DbSystem> DbBuilder<DB> {
    /// `pool_name` of the pool's series (default: `db.namespace`, else `default`).
    pub fn pool_name(mut self, name: impl Into<String>) -> Self {
        self.pool_name = Some(name.into());
        self
    }

    /// Successful queries at least this slow are logged at WARN with their sanitised text
    /// (default 1 s).
    pub fn slow_query(mut self, threshold: Duration) -> Self {
        self.slow = threshold;
        self
    }

    /// Records `db.response.returned_rows` on spans (default off).
    pub fn returned_rows(mut self, on: bool) -> Self {
        self.returned_rows = on;
        self
    }

    /// How many distinct query texts keep their analysis and handles (default 1024).
    pub fn cache_capacity(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// How often the pool gauges are refreshed besides at every query (default 1 s), on a
    /// background thread that ends once the last clone of the [`Db`] is dropped or the pool
    /// is closed.
    pub fn gauge_interval(mut self, interval: Duration) -> Self {
        self.gauge_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Sends the metrics to this recorder instead of the global one.
    pub fn recorder(mut self, recorder: Arc<dyn Recorder + Send + Sync>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// The instrumented pool. Resolves the pool's metric handles now: install the recorder
    /// first.
    pub fn build(self) -> Db<DB> {
        let target: Target = DB::target(&self.pool);
        let pool_name = self
            .pool_name
            .or_else(|| target.namespace.clone())
            .unwrap_or_else(|| "default".to_owned());
        let shared = Arc::new(Shared::new(Settings {
            system: DB::SYSTEM_NAME,
            target,
            pool_name,
            max_connections: self.pool.options().get_max_connections(),
            slow: self.slow,
            returned_rows: self.returned_rows,
            cache_capacity: self.cache_capacity,
            recorder: self.recorder,
        }));
        let db = Db {
            pool: self.pool,
            shared,
        };
        db.refresh_gauges();
        spawn_refresh(
            Arc::downgrade(&db.shared),
            db.pool.clone(),
            self.gauge_interval,
        );
        db
    }
}

/// An iterator as a stream that is always ready.
struct Iter<I>(I);

impl<I: Iterator + Unpin> futures_core::Stream for Iter<I> {
    type Item = I::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

/// Refreshes the gauges until the last [`Db`] clone is gone or the pool is closed, on a thread
/// of its own: a timer on the application's runtime would make every worker park of every
/// request check the timer wheel (about 300 instructions per request in the example server).
fn spawn_refresh<DB: Database>(shared: Weak<Shared>, pool: Pool<DB>, every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("towerscope-db-gauges".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            match shared.upgrade() {
                Some(s) if !pool.is_closed() => refresh(&s, &pool),
                _ => return,
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "towerscope: no thread for the pool gauges; they follow queries only");
    }
}

fn refresh<DB: Database>(shared: &Shared, pool: &Pool<DB>) {
    let size = pool.size();
    let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX).min(size);
    shared.pool.idle.set(f64::from(idle));
    shared.pool.used.set(f64::from(size - idle));
}

impl<DB: DbSystem> Db<DB> {
    /// Instruments `pool` with the default settings.
    pub fn new(pool: Pool<DB>) -> Self {
        Self::builder(pool).build()
    }

    /// Configures the instrumentation of `pool`.
    pub fn builder(pool: Pool<DB>) -> DbBuilder<DB> {
        DbBuilder {
            pool,
            pool_name: None,
            slow: Duration::from_secs(1),
            returned_rows: false,
            cache_capacity: 1024,
            gauge_interval: Duration::from_secs(1),
            recorder: None,
        }
    }
}

impl<DB: Database> Db<DB> {
    /// The pool underneath (queries run on it directly are not instrumented).
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// Sets the pool gauges from the pool's current state (also done at every query and on an
    /// interval).
    pub fn refresh_gauges(&self) {
        refresh(&self.shared, &self.pool);
    }

    /// What the instrumentation alone costs for one query of one row, around a result stream
    /// that is already complete: the same calls as a real query, minus the database. For
    /// benchmarks; not part of the API.
    #[doc(hidden)]
    pub fn __instrument_one_row(&self, sql: &str) -> usize {
        use std::task::{Context, Poll, Waker};
        refresh(&self.shared, &self.pool);
        let pending = self.shared.start(sql);
        let rows = [Ok(Either::<(), ()>::Right(())), Ok(Either::Left(()))].into_iter();
        let mut stream: BoxStream<'_, Result<Either<(), ()>, Error>> =
            Box::pin(RecordedStream::new(Iter(rows), pending));
        let mut cx = Context::from_waker(Waker::noop());
        let mut n = 0;
        while let Poll::Ready(Some(_)) = stream.as_mut().poll_next(&mut cx) {
            n += 1;
        }
        n
    }

    /// Begins an instrumented transaction.
    pub async fn begin(&self) -> Result<DbTransaction<DB>, Error> {
        Ok(DbTransaction {
            tx: self.pool.begin().await?,
            shared: self.shared.clone(),
        })
    }

    /// Acquires an instrumented connection.
    pub async fn acquire(&self) -> Result<DbConnection<DB>, Error> {
        match self.pool.acquire().await {
            Ok(conn) => Ok(DbConnection {
                conn,
                shared: self.shared.clone(),
            }),
            Err(e) => {
                if matches!(e, Error::PoolTimedOut) {
                    self.shared.pool.timeouts.increment(1);
                }
                Err(e)
            }
        }
    }
}

/// A transaction begun from a [`Db`]; its queries, `COMMIT` and `ROLLBACK` are recorded.
/// Dropped without either, sqlx rolls it back.
pub struct DbTransaction<DB: Database> {
    tx: Transaction<'static, DB>,
    shared: Arc<Shared>,
}

impl<DB: Database> std::fmt::Debug for DbTransaction<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbTransaction").finish_non_exhaustive()
    }
}

impl<DB: DbSystem> DbTransaction<DB> {
    /// Commits, recorded as a `COMMIT` operation.
    pub async fn commit(self) -> Result<(), Error> {
        let pending = self.shared.start("COMMIT");
        finish_unit(self.tx.commit().await, pending)
    }

    /// Rolls back, recorded as a `ROLLBACK` operation.
    pub async fn rollback(self) -> Result<(), Error> {
        let pending = self.shared.start("ROLLBACK");
        finish_unit(self.tx.rollback().await, pending)
    }

    /// The sqlx transaction underneath (queries run on it directly are not instrumented).
    pub fn inner(&mut self) -> &mut Transaction<'static, DB> {
        &mut self.tx
    }
}

fn finish_unit(result: Result<(), Error>, mut pending: Pending) -> Result<(), Error> {
    pending.finish(result.as_ref().err());
    result
}

/// A connection acquired from a [`Db`]; returned to the pool on drop.
pub struct DbConnection<DB: Database> {
    conn: PoolConnection<DB>,
    shared: Arc<Shared>,
}

impl<DB: Database> std::fmt::Debug for DbConnection<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbConnection").finish_non_exhaustive()
    }
}

impl<DB: Database> DbConnection<DB> {
    /// The sqlx connection underneath (queries run on it directly are not instrumented).
    pub fn inner(&mut self) -> &mut PoolConnection<DB> {
        &mut self.conn
    }
}

/// sqlx's `Executor` for an instrumented type: each query is recorded around the executor
/// `$inner` gives (the pool, or the driver's connection), after `$before`.
macro_rules! instrumented_executor {
    ($lt:lifetime, $ty:ty, |$this:ident| $inner:expr $(, before: $before:expr)?) => {
        impl<$lt, DB> Executor<$lt> for $ty
        where
            DB: DbSystem,
            for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
        {
            type Database = DB;

            fn fetch_many<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> BoxStream<'e, Result<Either<DB::QueryResult, DB::Row>, Error>>
            where
                $lt: 'e,
                E: 'q + Execute<'q, DB>,
            {
                let $this = self;
                $($before;)?
                let pending = $this.shared.start(query.sql());
                Box::pin(RecordedStream::new($inner.fetch_many(query), pending))
            }

            fn fetch_optional<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> BoxFuture<'e, Result<Option<DB::Row>, Error>>
            where
                $lt: 'e,
                E: 'q + Execute<'q, DB>,
            {
                let $this = self;
                $($before;)?
                let pending = $this.shared.start(query.sql());
                Box::pin(RecordedFuture::new($inner.fetch_optional(query), pending))
            }

            fn prepare_with<'e, 'q: 'e>(
                self,
                sql: &'q str,
                parameters: &'e [DB::TypeInfo],
            ) -> BoxFuture<'e, Result<DB::Statement<'q>, Error>>
            where
                $lt: 'e,
            {
                let $this = self;
                $inner.prepare_with(sql, parameters)
            }

            fn describe<'e, 'q: 'e>(
                self,
                sql: &'q str,
            ) -> BoxFuture<'e, Result<Describe<DB>, Error>>
            where
                $lt: 'e,
            {
                let $this = self;
                $inner.describe(sql)
            }
        }
    };
}

instrumented_executor!('p, &'p Db<DB>, |this| (&this.pool), before: refresh(&this.shared, &this.pool));
instrumented_executor!('t, &'t mut DbTransaction<DB>, |this| (&mut *this.tx));
instrumented_executor!('t, &'t mut DbConnection<DB>, |this| (&mut *this.conn));
