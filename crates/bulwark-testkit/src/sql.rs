//! Uniquely named test databases on the machine's PostgreSQL and MariaDB (shared with
//! other engineers and CI jobs), or a temporary SQLite file; dropped when the value is.
//!
//! Server URLs come from `SHOP_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and `SHOP_TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/mysql`), pointing at a database the test may connect to
//! in order to create and drop its own.

use sqlx::{Connection as _, Executor as _};

/// The backends a test can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqlBackend {
    /// A temporary SQLite file.
    Sqlite,
    /// A new database on the PostgreSQL server.
    Postgres,
    /// A new database on the MySQL/MariaDB server.
    MySql,
}

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDatabase {
    /// The backend.
    pub backend: SqlBackend,
    /// URL of the database (give it to the service).
    pub url: String,
    /// Server URL used to create and drop it (`None` for SQLite).
    admin_url: Option<String>,
    /// Its name on the server.
    name: String,
    /// The SQLite file's directory.
    _dir: Option<tempfile::TempDir>,
}

/// The admin URL of a server backend, from the environment or the local default.
pub fn admin_url(backend: SqlBackend) -> Option<String> {
    match backend {
        SqlBackend::Sqlite => None,
        SqlBackend::Postgres => Some(
            std::env::var("SHOP_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
        ),
        SqlBackend::MySql => Some(
            std::env::var("SHOP_TEST_MYSQL_URL")
                .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/mysql".into()),
        ),
    }
}

/// `url` with its database (path) replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{db}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

async fn admin_exec(admin: &str, sql: &str) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(admin)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {admin}: {e}"));
    conn.execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
}

impl TestDatabase {
    /// Creates a fresh, empty database named `shop_test_<pid>_<random>`.
    pub async fn create(backend: SqlBackend) -> TestDatabase {
        let name = format!("shop_test_{}_{:08x}", std::process::id(), rand_u32());
        match backend {
            SqlBackend::Sqlite => {
                let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
                let url = format!("sqlite://{}/shop.db", dir.path().display());
                TestDatabase {
                    backend,
                    url,
                    admin_url: None,
                    name,
                    _dir: Some(dir),
                }
            }
            SqlBackend::Postgres | SqlBackend::MySql => {
                let admin = admin_url(backend).unwrap_or_default();
                admin_exec(&admin, &format!("CREATE DATABASE {name}")).await;
                TestDatabase {
                    backend,
                    url: with_database(&admin, &name),
                    admin_url: Some(admin),
                    name,
                    _dir: None,
                }
            }
        }
    }
}

impl TestDatabase {
    /// Wraps a database the test owns some other way (a cluster it started): nothing is
    /// created or dropped.
    pub fn existing(backend: SqlBackend, url: &str) -> TestDatabase {
        TestDatabase {
            backend,
            url: url.to_string(),
            admin_url: None,
            name: String::new(),
            _dir: None,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(admin) = self.admin_url.clone() else {
            return;
        };
        let sql = match self.backend {
            SqlBackend::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            _ => format!("DROP DATABASE IF EXISTS {}", self.name),
        };
        // Drop runs inside or outside a runtime; a thread with its own runtime works in
        // both.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(admin_exec(&admin, &sql));
        })
        .join();
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_in_urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("mysql://root@h:3306", "x"),
            "mysql://root@h:3306/x"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
