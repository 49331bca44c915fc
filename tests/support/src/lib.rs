//! Per-test databases for fib-flow's test suites.
//!
//! Owns three things the suites used to copy from each other: one isolated database per test
//! on every backend (a private in-memory SQLite database, a SQLite file in a fresh temp
//! directory, or a database created on a PostgreSQL or MySQL/MariaDB server and dropped
//! afterwards); which servers the tests use (`FIB_FLOW_POSTGRES_URL`, `FIB_FLOW_MYSQL_URL`
//! and their defaults); and the skip policy: a local run skips a server that is unusable, or
//! whose `FIB_FLOW_SKIP_<BACKEND>` variable `cargo xtask test` set, and says why, while under
//! `CI=true` that is a failure.
//!
//! It must not depend on any fib-flow crate (except the facade behind the `facade` feature,
//! which provides [`FacadeAdmin`](crate::DatabaseAdmin)): how a database is created and dropped on a
//! server is the caller's [`DatabaseAdmin`] (the facade's `storage::create_database`, or an
//! adapter's own functions), so an adapter's tests can use this crate without building the
//! facade. Used by the conformance suite, the crash test, and xtask (for the server settings
//! and the CI switch).
//!
//! ```no_run
//! use fib_flow_test_support::{Backend, DatabaseAdmin, TestDatabase};
//!
//! struct Admin;
//!
//! impl DatabaseAdmin for Admin {
//!     type Error = String;
//!
//!     async fn create_database(&self, server_url: &str, name: &str) -> Result<String, String> {
//!         Ok(format!("{server_url}/{name}")) // a real admin runs CREATE DATABASE here
//!     }
//!
//!     async fn drop_database(&self, _server_url: &str, _name: &str) -> Result<(), String> {
//!         Ok(())
//!     }
//! }
//!
//! async fn a_test() {
//!     let database = match TestDatabase::create(Admin, Backend::Postgres, "a_test").await {
//!         Ok(database) => database,
//!         Err(skip) if skip.is_skip() => return eprintln!("{skip}"),
//!         Err(error) => panic!("{error}"),
//!     };
//!     // ... connect to database.url() and test ...
//!     database.destroy().await.expect("drop the test database");
//! }
//! ```

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// [`DatabaseAdmin`] through the fib-flow facade (`fib_flow::storage`), behind the `facade`
/// feature; it creates on whichever server backends the facade was built with.
#[cfg(feature = "facade")]
#[derive(Debug, Clone, Copy, Default)]
pub struct FacadeAdmin;

#[cfg(feature = "facade")]
impl DatabaseAdmin for FacadeAdmin {
    type Error = fib_flow::Error;

    async fn create_database(&self, server_url: &str, name: &str) -> Result<String, Self::Error> {
        Ok(fib_flow::storage::create_database(server_url, name).await?)
    }

    async fn drop_database(&self, server_url: &str, name: &str) -> Result<(), Self::Error> {
        Ok(fib_flow::storage::drop_database(server_url, name).await?)
    }
}

/// Set to `true` or `1` on CI, where every backend must be tested.
const CI_ENV: &str = "CI";

/// How much of a test's name goes into its database name (the rest is the unique suffix).
const TEST_NAME_CHARS: usize = 24;

/// Whether this run is CI (`CI=true` or `CI=1`), where a backend that cannot be tested fails
/// the run instead of being skipped.
pub fn in_ci() -> bool {
    ci_from(&from_process_env)
}

fn ci_from(env: &dyn Fn(&str) -> Option<String>) -> bool {
    env(CI_ENV).is_some_and(|value| value == "true" || value == "1")
}

fn from_process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// A database a test can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// A private in-memory SQLite database (one per connection pool).
    SqliteMemory,
    /// A SQLite file in a temp directory of its own.
    SqliteFile,
    /// A database created on the PostgreSQL server of [`Server::Postgres`].
    Postgres,
    /// A database created on the MySQL/MariaDB server of [`Server::Mysql`].
    Mysql,
}

impl Backend {
    /// Every backend, embedded ones first.
    pub const ALL: [Backend; 4] = [
        Backend::SqliteMemory,
        Backend::SqliteFile,
        Backend::Postgres,
        Backend::Mysql,
    ];

    /// The name the test runs print (`sqlite-memory`, `sqlite-file`, `postgres`, `mysql`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::SqliteMemory => "sqlite-memory",
            Backend::SqliteFile => "sqlite-file",
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
        }
    }

    /// The server this backend's databases are created on; `None` for embedded SQLite.
    pub fn server(self) -> Option<Server> {
        match self {
            Backend::SqliteMemory | Backend::SqliteFile => None,
            Backend::Postgres => Some(Server::Postgres),
            Backend::Mysql => Some(Server::Mysql),
        }
    }

    /// Whether the database lives on a server (and can lose its connections, be unreachable).
    pub fn is_server(self) -> bool {
        self.server().is_some()
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// A database server the tests create their databases on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Server {
    /// PostgreSQL.
    Postgres,
    /// MySQL 8 or MariaDB.
    Mysql,
}

impl Server {
    /// Every server backend.
    pub const ALL: [Server; 2] = [Server::Postgres, Server::Mysql];

    /// The backend whose databases live on this server.
    pub fn backend(self) -> Backend {
        match self {
            Server::Postgres => Backend::Postgres,
            Server::Mysql => Backend::Mysql,
        }
    }

    /// The variable that points the tests at another server.
    pub fn url_env(self) -> &'static str {
        match self {
            Server::Postgres => "FIB_FLOW_POSTGRES_URL",
            Server::Mysql => "FIB_FLOW_MYSQL_URL",
        }
    }

    /// The server the tests use when [`Server::url_env`] is unset (the machine's own).
    pub fn default_url(self) -> &'static str {
        match self {
            Server::Postgres => "postgres://postgres@127.0.0.1:5432/test",
            Server::Mysql => "mysql://root@127.0.0.1:3306/test",
        }
    }

    /// The variable that, when set, skips this server's tests; its value is the reason
    /// (`cargo xtask test` sets it for a server that does not answer).
    pub fn skip_env(self) -> &'static str {
        match self {
            Server::Postgres => "FIB_FLOW_SKIP_POSTGRES",
            Server::Mysql => "FIB_FLOW_SKIP_MYSQL",
        }
    }

    /// The URL of the server the tests use: [`Server::url_env`], else the default.
    pub fn url(self) -> String {
        self.url_from(&from_process_env)
    }

    fn url_from(self, env: &dyn Fn(&str) -> Option<String>) -> String {
        env(self.url_env()).unwrap_or_else(|| self.default_url().to_owned())
    }
}

/// Creates and drops databases on a server: the one step this crate leaves to its user, so
/// that it needs no fib-flow crate (the facade's `storage::create_database` and
/// `drop_database`, or an adapter's own, implement it in a few lines).
pub trait DatabaseAdmin: Send + Sync {
    /// Why creating or dropping failed.
    type Error: fmt::Display;

    /// Creates the database `name` on the server at `server_url` and returns the new
    /// database's URL.
    fn create_database(
        &self,
        server_url: &str,
        name: &str,
    ) -> impl Future<Output = Result<String, Self::Error>> + Send;

    /// Drops the database `name` on the server at `server_url`.
    fn drop_database(
        &self,
        server_url: &str,
        name: &str,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Why a test database is not there, or could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A local run cannot use this backend: the test should say so and pass.
    #[error("skipped on {backend}: {reason}")]
    Skipped {
        /// The backend that cannot be tested.
        backend: Backend,
        /// Why (the skip variable's value, or the server's error).
        reason: String,
    },
    /// Under `CI=true` a backend that cannot be tested fails the test.
    #[error("CI=true and {backend} cannot be tested: {reason}")]
    Unavailable {
        /// The backend that cannot be tested.
        backend: Backend,
        /// Why (the skip variable's value, or the server's error).
        reason: String,
    },
    /// The temp directory of a SQLite file could not be created.
    #[error("cannot create the temp directory {}: {source}", path.display())]
    TempDirectory {
        /// The directory.
        path: PathBuf,
        /// The file system's error.
        source: std::io::Error,
    },
    /// The server refused to drop a test database (it stays behind; its name says whose).
    #[error("could not drop test database {name} on {backend}: {reason}")]
    Drop {
        /// The server's backend.
        backend: Backend,
        /// The database left behind.
        name: String,
        /// The server's error.
        reason: String,
    },
}

impl Error {
    /// Whether the test should be skipped (a local run without the backend) rather than fail.
    pub fn is_skip(&self) -> bool {
        matches!(self, Error::Skipped { .. })
    }
}

/// Where a test database lives, to remove it afterwards.
#[derive(Debug)]
enum Location {
    /// Gone with the last connection.
    Memory,
    /// A temp directory holding the SQLite file (and its journal files).
    Directory(PathBuf),
    /// A database on a server.
    Server { server_url: String },
}

/// One isolated database for one test. Call [`TestDatabase::destroy`] when the test is done
/// (also when it failed: run the test body in a task of its own and destroy after joining).
#[derive(Debug)]
pub struct TestDatabase<A> {
    backend: Backend,
    name: String,
    url: String,
    location: Location,
    admin: A,
}

impl<A: DatabaseAdmin> TestDatabase<A> {
    /// Creates a fresh database for `test_name` on `backend`. A server backend that is skipped
    /// or unusable is [`Error::Skipped`] on a local run and [`Error::Unavailable`] under
    /// `CI=true`.
    pub async fn create(admin: A, backend: Backend, test_name: &str) -> Result<Self, Error> {
        Self::create_in(admin, backend, test_name, &from_process_env).await
    }

    async fn create_in(
        admin: A,
        backend: Backend,
        test_name: &str,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> Result<Self, Error> {
        let name = unique_name(test_name);
        let (url, location) = match backend.server() {
            None if backend == Backend::SqliteMemory => {
                ("sqlite::memory:".to_owned(), Location::Memory)
            }
            None => {
                let dir = std::env::temp_dir().join(&name);
                std::fs::create_dir_all(&dir).map_err(|source| Error::TempDirectory {
                    path: dir.clone(),
                    source,
                })?;
                let url = format!("sqlite:{}", dir.join("tasks.db").display());
                (url, Location::Directory(dir))
            }
            Some(server) => {
                let cannot_test = |reason: String| {
                    if ci_from(env) {
                        Error::Unavailable { backend, reason }
                    } else {
                        Error::Skipped { backend, reason }
                    }
                };
                if let Some(reason) = env(server.skip_env()) {
                    return Err(cannot_test(format!(
                        "{} is set ({reason})",
                        server.skip_env()
                    )));
                }
                let server_url = server.url_from(env);
                let url = admin
                    .create_database(&server_url, &name)
                    .await
                    .map_err(|error| {
                        cannot_test(format!("cannot create a database on {server_url}: {error}"))
                    })?;
                (url, Location::Server { server_url })
            }
        };
        Ok(TestDatabase {
            backend,
            name,
            url,
            location,
            admin,
        })
    }

    /// The backend the database is on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The database's URL (`sqlite::memory:`, `sqlite:PATH`, or the server's URL for it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The unique name (`ff_<test>_<unique>`): the server database's, or the temp directory's.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The temp directory of a SQLite file database, removed by [`TestDatabase::destroy`].
    pub fn directory(&self) -> Option<&Path> {
        match &self.location {
            Location::Directory(dir) => Some(dir),
            Location::Memory | Location::Server { .. } => None,
        }
    }

    /// Drops the server database or removes the temp directory. Close the test's connections
    /// first: a server may refuse to drop a database in use.
    pub async fn destroy(self) -> Result<(), Error> {
        match &self.location {
            Location::Memory => Ok(()),
            Location::Directory(dir) => {
                // Best effort: a leftover temp directory costs nothing and fails no test.
                let _ = std::fs::remove_dir_all(dir);
                Ok(())
            }
            Location::Server { server_url } => self
                .admin
                .drop_database(server_url, &self.name)
                .await
                .map_err(|error| Error::Drop {
                    backend: self.backend,
                    name: self.name.clone(),
                    reason: error.to_string(),
                }),
        }
    }
}

/// `ff_<test>_<unique>`, lower case, a valid unquoted identifier on every server. The process
/// id and a counter keep concurrent tests apart; the clock's nanoseconds keep a run apart from
/// a killed earlier one whose databases were never dropped and whose process id came back.
fn unique_name(test_name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    let test: String = test_name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(TEST_NAME_CHARS)
        .collect();
    format!(
        "ff_{test}_{}_{nanos:x}_{:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
    .to_lowercase()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::pin::pin;
    use std::sync::{Arc, Mutex, PoisonError};
    use std::task::{Context, Poll, Waker};

    use super::*;

    /// Longest database name the servers take (PostgreSQL's identifier limit; MySQL's is 64).
    const MAX_NAME_LEN: usize = 63;

    /// Runs a future that never waits (the fake admin answers at once) to its end.
    fn ready<T>(future: impl Future<Output = T>) -> T {
        match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(value) => value,
            Poll::Pending => panic!("the future waited, but nothing here ever waits"),
        }
    }

    /// A server that records what it was asked, and refuses everything when `refuse` is set.
    #[derive(Debug, Default, Clone)]
    struct FakeAdmin {
        calls: Arc<Mutex<Vec<String>>>,
        refuse: bool,
    }

    impl FakeAdmin {
        fn calls(&self) -> Vec<String> {
            self.calls
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }

        fn record(&self, call: String) -> Result<(), String> {
            self.calls
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(call);
            if self.refuse {
                Err("connection refused".to_owned())
            } else {
                Ok(())
            }
        }
    }

    impl DatabaseAdmin for FakeAdmin {
        type Error = String;

        async fn create_database(&self, server_url: &str, name: &str) -> Result<String, String> {
            self.record(format!("create {name} on {server_url}"))?;
            Ok(format!("{server_url}/{name}"))
        }

        async fn drop_database(&self, server_url: &str, name: &str) -> Result<(), String> {
            self.record(format!("drop {name} on {server_url}"))
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Sync + use<> {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        move |key| vars.get(key).cloned()
    }

    fn create(
        admin: &FakeAdmin,
        backend: Backend,
        env: &[(&str, &str)],
    ) -> Result<TestDatabase<FakeAdmin>, Error> {
        ready(TestDatabase::create_in(
            admin.clone(),
            backend,
            "some_test",
            &env_of(env),
        ))
    }

    #[test]
    fn a_server_database_is_created_on_the_configured_server_and_dropped_by_destroy() {
        let admin = FakeAdmin::default();
        let env = [("FIB_FLOW_MYSQL_URL", "mysql://elsewhere:3307/x")];
        let database = create(&admin, Backend::Mysql, &env).expect("created");
        let name = database.name().to_owned();
        assert_eq!(database.url(), format!("mysql://elsewhere:3307/x/{name}"));
        assert_eq!(database.directory(), None);
        ready(database.destroy()).expect("dropped");
        assert_eq!(
            admin.calls(),
            [
                format!("create {name} on mysql://elsewhere:3307/x"),
                format!("drop {name} on mysql://elsewhere:3307/x"),
            ]
        );
    }

    #[test]
    fn without_its_variable_a_server_is_the_machines_own() {
        let admin = FakeAdmin::default();
        let database = create(&admin, Backend::Postgres, &[]).expect("created");
        assert!(
            database
                .url()
                .starts_with("postgres://postgres@127.0.0.1:5432/test/")
        );
    }

    #[test]
    fn a_skip_variable_skips_locally_and_fails_under_ci_without_asking_the_server() {
        let admin = FakeAdmin::default();
        let skip = [("FIB_FLOW_SKIP_POSTGRES", "127.0.0.1:5432 does not answer")];
        let local = create(&admin, Backend::Postgres, &skip).expect_err("skipped");
        assert!(local.is_skip(), "{local}");
        assert!(local.to_string().contains("does not answer"), "{local}");

        let in_ci = [skip[0], ("CI", "true")];
        let ci = create(&admin, Backend::Postgres, &in_ci).expect_err("a failure");
        assert!(
            matches!(
                ci,
                Error::Unavailable {
                    backend: Backend::Postgres,
                    ..
                }
            ),
            "{ci}"
        );
        assert!(admin.calls().is_empty(), "{:?}", admin.calls());
    }

    #[test]
    fn an_unusable_server_skips_locally_and_fails_under_ci() {
        let admin = FakeAdmin {
            refuse: true,
            ..FakeAdmin::default()
        };
        let local = create(&admin, Backend::Mysql, &[]).expect_err("skipped");
        assert!(local.is_skip(), "{local}");
        assert!(local.to_string().contains("connection refused"), "{local}");

        let ci = create(&admin, Backend::Mysql, &[("CI", "1")]).expect_err("a failure");
        assert!(!ci.is_skip(), "{ci}");
        assert!(ci.to_string().contains("connection refused"), "{ci}");
    }

    #[test]
    fn a_refused_drop_names_the_database_left_behind() {
        let admin = FakeAdmin::default();
        let database = create(&admin, Backend::Mysql, &[]).expect("created");
        let name = database.name().to_owned();
        let refusing = TestDatabase {
            admin: FakeAdmin {
                refuse: true,
                ..admin
            },
            ..database
        };
        let error = ready(refusing.destroy()).expect_err("refused");
        assert!(error.to_string().contains(&name), "{error}");
    }

    #[test]
    fn a_sqlite_file_lives_in_a_fresh_directory_that_destroy_removes() {
        let database = create(&FakeAdmin::default(), Backend::SqliteFile, &[]).expect("created");
        let dir = database.directory().expect("a directory").to_owned();
        assert!(dir.is_dir());
        assert_eq!(
            database.url(),
            format!("sqlite:{}", dir.join("tasks.db").display())
        );
        ready(database.destroy()).expect("removed");
        assert!(!dir.exists());
    }

    #[test]
    fn an_in_memory_database_needs_no_server_and_no_directory() {
        let admin = FakeAdmin::default();
        let database = create(&admin, Backend::SqliteMemory, &[("CI", "true")]).expect("created");
        assert_eq!(database.url(), "sqlite::memory:");
        assert_eq!(database.directory(), None);
        ready(database.destroy()).expect("nothing to remove");
        assert!(admin.calls().is_empty());
    }

    #[test]
    fn names_are_unique_lower_case_identifiers_within_the_servers_limit() {
        let long = "A_Test-Name.With::Punctuation_and_a_very_long_tail_indeed_".repeat(3);
        let first = unique_name(&long);
        let second = unique_name(&long);
        assert_ne!(first, second);
        for name in [&first, &second] {
            assert!(name.starts_with("ff_atestnamewithpunctuation_"), "{name}");
            assert!(name.len() <= MAX_NAME_LEN, "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
        }
    }

    #[test]
    fn ci_is_true_or_one() {
        assert!(ci_from(&env_of(&[("CI", "true")])));
        assert!(ci_from(&env_of(&[("CI", "1")])));
        assert!(!ci_from(&env_of(&[("CI", "false")])));
        assert!(!ci_from(&env_of(&[])));
    }
}
