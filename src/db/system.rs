//! What each database driver tells the instrumentation: its `db.system.name` and where a pool
//! connects (`db.namespace`, `server.address`, `server.port`).

use sqlx::Database;

/// Where a pool connects, read once from its connect options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// `db.namespace`: the database name (PostgreSQL) or file name (SQLite).
    pub namespace: Option<String>,
    /// `server.address`: host name, IP address or Unix socket directory.
    pub address: Option<String>,
    /// `server.port`.
    pub port: Option<u16>,
}

/// A database the instrumented pool supports: SQLite always, PostgreSQL with the `postgres`
/// feature. Implemented for sqlx's database types; not meant to be implemented elsewhere.
pub trait DbSystem: Database {
    /// `db.system.name` (`sqlite`, `postgresql`).
    const SYSTEM_NAME: &'static str;

    /// Reads the target from a pool's connect options.
    fn target(pool: &sqlx::Pool<Self>) -> Target;
}

impl DbSystem for sqlx::Sqlite {
    const SYSTEM_NAME: &'static str = "sqlite";

    fn target(pool: &sqlx::Pool<Self>) -> Target {
        let options = pool.connect_options();
        let file = options.get_filename().to_string_lossy();
        Target {
            namespace: (!file.is_empty()).then(|| file.into_owned()),
            address: None,
            port: None,
        }
    }
}

#[cfg(feature = "postgres")]
impl DbSystem for sqlx::Postgres {
    const SYSTEM_NAME: &'static str = "postgresql";

    fn target(pool: &sqlx::Pool<Self>) -> Target {
        let o = pool.connect_options();
        Target {
            namespace: Some(
                o.get_database()
                    .unwrap_or_else(|| o.get_username())
                    .to_owned(),
            ),
            address: Some(o.get_host().to_owned()),
            port: Some(o.get_port()),
        }
    }
}
