//! The data layer's connection: one sqlx `Any` pool per role (writes on the primary,
//! reads on the replica when one is configured), the SQL dialect, versioned migrations,
//! and the resilience wrapper every statement goes through (bulkhead pools, a timeout,
//! the `shop_db` circuit breaker).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bulwark_resilience::breaker::{BreakerConfig, CircuitBreaker};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection as _, Executor as _};

/// Which SQL the database speaks. Queries are written with `?` placeholders;
/// [`Dialect::sql`] rewrites them for PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite (embedded default): one writer at a time, WAL, `synchronous=FULL`.
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB (InnoDB).
    MySql,
}

impl Dialect {
    /// The dialect of a database URL, or `None` for an unsupported scheme.
    pub fn of_url(url: &str) -> Option<Dialect> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Some(Dialect::Sqlite),
            "postgres" | "postgresql" => Some(Dialect::Postgres),
            "mysql" | "mariadb" => Some(Dialect::MySql),
            _ => None,
        }
    }

    /// The name used in logs and the audit.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
            Dialect::MySql => "mysql",
        }
    }

    /// `sql` with its `?` placeholders rewritten to `$1, $2, …` on PostgreSQL. The
    /// queries of this crate never contain a literal `?`.
    pub fn sql<'a>(self, sql: &'a str) -> Cow<'a, str> {
        if self != Dialect::Postgres {
            return Cow::Borrowed(sql);
        }
        let mut out = String::with_capacity(sql.len() + 16);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        Cow::Owned(out)
    }

    /// `expr` (an integer aggregate such as `SUM(x)`) as a 64-bit integer: PostgreSQL's
    /// `SUM(bigint)` is `numeric` and MySQL's is `DECIMAL`, which `Any` cannot decode.
    pub fn int(self, expr: &str) -> String {
        match self {
            Dialect::Sqlite => format!("COALESCE({expr}, 0)"),
            Dialect::Postgres => format!("CAST(COALESCE({expr}, 0) AS BIGINT)"),
            Dialect::MySql => format!("CAST(COALESCE({expr}, 0) AS SIGNED)"),
        }
    }

    /// ` FOR UPDATE` where row locks exist (SQLite serializes writers instead).
    pub fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres | Dialect::MySql => " FOR UPDATE",
        }
    }

    /// `INSERT` that skips rows whose key exists (no error, no change).
    pub fn insert_ignore(self) -> &'static str {
        match self {
            Dialect::Sqlite => "INSERT OR IGNORE",
            Dialect::Postgres => "INSERT",
            Dialect::MySql => "INSERT IGNORE",
        }
    }

    /// The tail matching [`Dialect::insert_ignore`] (PostgreSQL's `ON CONFLICT`).
    pub fn ignore_suffix(self) -> &'static str {
        match self {
            Dialect::Postgres => " ON CONFLICT DO NOTHING",
            Dialect::Sqlite | Dialect::MySql => "",
        }
    }
}

/// Why a database call failed, as the service needs to know it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    /// The database cannot be reached (breaker OPEN, connection refused, pool exhausted,
    /// timeout). Nothing was applied unless [`DbError::Unknown`] says otherwise.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A unique constraint refused a row (an idempotency key raced another request).
    #[error("unique constraint violated")]
    Conflict,
    /// The `CHECK (stock >= 0)` constraint refused a decrement: fewer units were left
    /// than the statement took. Nothing was applied.
    #[error("not enough stock for the decrement")]
    StockShort,
    /// The connection broke during `COMMIT`: the transaction may or may not have applied.
    #[error("transaction outcome unknown: {0}")]
    Unknown(String),
    /// Any other database error (a bug or a schema mismatch).
    #[error("database error: {0}")]
    Other(String),
}

impl DbError {
    /// Whether the error says the database is unhealthy (counts toward the breaker).
    pub fn is_outage(&self) -> bool {
        matches!(self, DbError::Unavailable(_) | DbError::Unknown(_))
    }
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => DbError::Conflict,
            sqlx::Error::Database(d) if d.is_check_violation() => DbError::StockShort,
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => DbError::Unavailable(e.to_string()),
            _ => DbError::Other(e.to_string()),
        }
    }
}

/// Connection settings of the data layer.
#[derive(Clone, Debug)]
pub struct DbConfig {
    /// Primary (all writes, and reads without a replica).
    pub url: String,
    /// Optional read replica for catalog reads.
    pub replica_url: Option<String>,
    /// Connections to the primary (a bulkhead: purchases cannot take more).
    pub pool_size: u32,
    /// Further connections to the primary reserved for saga steps (charge ledger,
    /// confirm, compensations, recovery), so per-request purchase transactions cannot
    /// starve them (SQLite: none, its one writer connection is shared).
    pub saga_pool_size: u32,
    /// Bound on one statement or transaction, connection wait included.
    pub timeout: Duration,
    /// The `shop_db` breaker.
    pub breaker: BreakerConfig,
}

/// The database: pools, dialect, breaker.
#[derive(Debug)]
pub struct Db {
    /// The SQL dialect of the primary (the replica speaks the same).
    pub dialect: Dialect,
    /// Pool for writes (SQLite: one connection, as SQLite has one writer anyway and a
    /// second would only fail with `SQLITE_BUSY` on lock upgrades).
    write: AnyPool,
    /// The saga steps' pool of the primary ([`Db::for_sagas`]; SQLite: `write`).
    saga_write: AnyPool,
    /// Pool for reads: the replica's when configured, else the primary's read pool.
    read: AnyPool,
    /// Whether `read` is a replica (reads may be stale).
    pub has_replica: bool,
    /// Bound on every call.
    pub timeout: Duration,
    /// Opens after consecutive outages; an OPEN breaker answers 503 without waiting.
    /// Shared with the saga steps' view: one database, one verdict.
    pub breaker: Arc<CircuitBreaker>,
}

/// SQLite settings applied to every connection: WAL so readers never block the writer,
/// `synchronous=FULL` so a commit is on disk when it returns (fsync on, as the
/// benchmark requires), a busy timeout so a reader never fails on a checkpoint.
const SQLITE_PRAGMAS: &str =
    "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;";

/// How a pool's PostgreSQL connections plan prepared statements.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plans {
    /// PostgreSQL's default: a generic plan, cached, once it looks no worse than custom
    /// ones.
    Default,
    /// `plan_cache_mode = force_custom_plan` (the saga pool): planned at every execution,
    /// for the table as it is then. The saga's batch confirm updates orders by a list of
    /// ids; the generic plan cached while `shop_orders` was nearly empty (the first
    /// seconds of a sale) walks the whole primary key once per batch, and it stays
    /// cached until the table's statistics change: 0.5–4 s per batch at 20,000 orders
    /// on a PostgreSQL without autovacuum, and a minute of that (autovacuum's naptime)
    /// with it.
    Custom,
}

async fn pool(
    url: &str,
    dialect: Dialect,
    max: u32,
    timeout: Duration,
    plans: Plans,
) -> anyhow::Result<AnyPool> {
    let opts: AnyConnectOptions = url.parse()?;
    let pool = AnyPoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        .acquire_timeout(timeout)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if dialect == Dialect::Sqlite {
                    conn.execute(SQLITE_PRAGMAS).await?;
                }
                if dialect == Dialect::Postgres && plans == Plans::Custom {
                    conn.execute("SET plan_cache_mode = force_custom_plan")
                        .await?;
                }
                Ok(())
            })
        })
        .connect_lazy_with(opts);
    Ok(pool)
}

impl Db {
    /// Opens the pools (lazily: a database that is down at start-up makes the service
    /// answer 503, not fail to start) and creates the SQLite file's directory.
    pub async fn open(config: &DbConfig) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of_url(&config.url)
            .ok_or_else(|| anyhow::anyhow!("unsupported database URL scheme"))?;
        let mut url = config.url.clone();
        if dialect == Dialect::Sqlite {
            url = sqlite_url(&url)?;
        }
        let write_max = if dialect == Dialect::Sqlite {
            1
        } else {
            config.pool_size
        };
        let write = pool(&url, dialect, write_max, config.timeout, Plans::Default).await?;
        let saga_write = if dialect == Dialect::Sqlite {
            write.clone()
        } else {
            pool(
                &url,
                dialect,
                config.saga_pool_size,
                config.timeout,
                Plans::Custom,
            )
            .await?
        };
        let (read, has_replica) = match &config.replica_url {
            Some(r) => (
                pool(r, dialect, config.pool_size, config.timeout, Plans::Default).await?,
                true,
            ),
            None if dialect == Dialect::Sqlite => (
                pool(&url, dialect, 4, config.timeout, Plans::Default).await?,
                false,
            ),
            None => (write.clone(), false),
        };
        Ok(Db {
            dialect,
            write,
            saga_write,
            read,
            has_replica,
            timeout: config.timeout,
            breaker: Arc::new(CircuitBreaker::new("shop_db", config.breaker)),
        })
    }

    /// The same database for saga steps: writes and primary reads go through the saga
    /// pool (a bulkhead), reads and the breaker are shared.
    pub fn for_sagas(&self) -> Db {
        Db {
            dialect: self.dialect,
            write: self.saga_write.clone(),
            saga_write: self.saga_write.clone(),
            read: self.read.clone(),
            has_replica: self.has_replica,
            timeout: self.timeout,
            breaker: self.breaker.clone(),
        }
    }

    /// Applies the versioned migrations of this dialect (`migrations/<dialect>`).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.dialect {
            Dialect::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Dialect::Postgres => sqlx::migrate!("./migrations/postgres"),
            Dialect::MySql => sqlx::migrate!("./migrations/mysql"),
        };
        let mut conn = self.write.acquire().await?;
        migrator.run(&mut *conn).await?;
        Ok(())
    }

    /// Runs `f` inside one transaction on the primary and commits it, through the
    /// breaker and the timeout. `f`'s error rolls the transaction back.
    pub async fn tx<T>(
        &self,
        f: impl AsyncFnOnce(&mut AnyConnection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.guarded(async || {
            let mut conn = self.write.acquire().await?;
            let mut tx = conn.begin().await?;
            let value = f(&mut tx).await?;
            tx.commit().await.map_err(|e| match DbError::from(e) {
                DbError::Unavailable(m) | DbError::Other(m) => DbError::Unknown(m),
                other => other,
            })?;
            Ok(value)
        })
        .await
    }

    /// Runs `f`, ONE writing statement, on the primary without `BEGIN`: the statement is
    /// its own transaction, so this costs one round trip where [`Db::tx`] costs three. A
    /// connection lost during the statement leaves its outcome unknown, as in a commit.
    pub async fn tx_single<T>(
        &self,
        f: impl AsyncFnOnce(&mut AnyConnection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.guarded(async || {
            let mut conn = self.write.acquire().await?;
            f(&mut conn).await.map_err(|e| match e {
                DbError::Unavailable(m) => DbError::Unknown(m),
                other => other,
            })
        })
        .await
    }

    /// Runs `f` in one read-only REPEATABLE READ transaction on the primary's data, so
    /// all its statements read one snapshot: PostgreSQL's and MariaDB's READ COMMITTED
    /// would give each statement its own. (PostgreSQL: set as the transaction's first
    /// statement; MariaDB: set for the next transaction, whose first read fixes the
    /// snapshot; SQLite: a read transaction in WAL mode is a snapshot, read on a reader
    /// connection so it never holds the one writer.)
    pub async fn snapshot<T>(
        &self,
        f: impl AsyncFnOnce(&mut AnyConnection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let pool = if self.has_replica {
            &self.write
        } else {
            &self.read
        };
        self.guarded(async || {
            let mut conn = pool.acquire().await?;
            if self.dialect == Dialect::MySql {
                (&mut *conn)
                    .execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    .await?;
            }
            let mut tx = conn.begin().await?;
            if self.dialect == Dialect::Postgres {
                (&mut *tx)
                    .execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await?;
            }
            let value = f(&mut tx).await?;
            tx.rollback().await?;
            Ok(value)
        })
        .await
    }

    /// Runs `f` on a connection of the primary without a transaction (single statements,
    /// the reads that must not be stale).
    pub async fn primary<T>(
        &self,
        f: impl AsyncFnOnce(&mut AnyConnection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.guarded(async || {
            let mut conn = self.write.acquire().await?;
            f(&mut conn).await
        })
        .await
    }

    /// Runs `f` on a read connection (the replica when configured; may be stale).
    pub async fn replica<T>(
        &self,
        f: impl AsyncFnOnce(&mut AnyConnection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.guarded(async || {
            let mut conn = self.read.acquire().await?;
            f(&mut conn).await
        })
        .await
    }

    /// Whether the primary answers a trivial query now (readiness).
    pub async fn ping(&self) -> bool {
        self.primary(async |c| Ok(sqlx::query("SELECT 1").execute(&mut *c).await?))
            .await
            .is_ok()
    }

    async fn guarded<T>(&self, f: impl AsyncFnOnce() -> Result<T, DbError>) -> Result<T, DbError> {
        let permit = self
            .breaker
            .try_acquire()
            .map_err(|e| DbError::Unavailable(e.to_string()))?;
        let result = match tokio::time::timeout(self.timeout, f()).await {
            Ok(r) => r,
            Err(_) => Err(DbError::Unknown(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        };
        match &result {
            Err(e) if e.is_outage() => permit.failure(),
            _ => permit.success(),
        }
        result
    }

    /// Closes the pools (graceful shutdown).
    pub async fn close(&self) {
        self.write.close().await;
        self.saga_write.close().await;
        self.read.close().await;
    }
}

/// A SQLite URL with `mode=rwc` (create the file if missing), its directory created.
fn sqlite_url(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path != ":memory:"
        && !path.is_empty()
        && let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create the directory of {path}: {e}"))?;
    }
    let query = if query.contains("mode=") {
        query.to_string()
    } else if query.is_empty() {
        "mode=rwc".to_string()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok(format!("sqlite://{path}?{query}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_only() {
        let q = "UPDATE t SET a = ? WHERE b = ? AND c >= ?";
        assert_eq!(
            Dialect::Postgres.sql(q),
            "UPDATE t SET a = $1 WHERE b = $2 AND c >= $3"
        );
        assert_eq!(Dialect::MySql.sql(q), q);
        assert_eq!(Dialect::Sqlite.sql(q), q);
    }

    #[test]
    fn urls_name_their_dialect() {
        assert_eq!(
            Dialect::of_url("sqlite://./data/shop.db"),
            Some(Dialect::Sqlite)
        );
        assert_eq!(
            Dialect::of_url("postgres://u@h/db"),
            Some(Dialect::Postgres)
        );
        assert_eq!(Dialect::of_url("mysql://root@h/db"), Some(Dialect::MySql));
        assert_eq!(Dialect::of_url("mongodb://h"), None);
    }

    #[test]
    fn sqlite_urls_create_the_file() {
        assert_eq!(
            sqlite_url("sqlite::memory:").unwrap(),
            "sqlite://:memory:?mode=rwc"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/shop.db");
        let url = sqlite_url(&format!("sqlite://{}", p.display())).unwrap();
        assert!(url.ends_with("shop.db?mode=rwc"), "{url}");
        assert!(p.parent().unwrap().is_dir());
    }
}
