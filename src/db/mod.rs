//! Database-call instrumentation. So far: the SQL analyser ([`sql`]) that the instrumented sqlx
//! pool will use for `db.operation.name`, `db.collection.name`, `db.query.summary` and the
//! sanitised `db.query.text`. The pool, its spans, metrics and logs are not written yet.

pub mod sql;
