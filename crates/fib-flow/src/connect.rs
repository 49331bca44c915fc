//! The one place that knows every backend: a database URL, parsed once with [`url::Url`],
//! picks the backend crate (each behind its cargo feature) that opens the store.

use std::sync::Arc;

use fib_flow_ports::{ConnectErrorKind, PortError, TaskStore};
use fib_flow_sql::StoreConfig;
use url::Url;

/// The URL forms [`connect`] accepts, for error messages.
const ALLOWED: &str =
    "sqlite::memory:, sqlite:PATH, sqlite://PATH, postgres://, postgresql://, psql://, mysql://";

/// A storage backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackendKind {
    Sqlite,
    Postgres,
    Mysql,
}

impl BackendKind {
    /// The backend's name: its cargo feature and its `db_type`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
            BackendKind::Mysql => "mysql",
        }
    }
}

/// Where a URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A fresh in-memory SQLite database.
    SqliteMemory,
    /// A SQLite file (the path as written: file paths are not URL-encoded).
    SqliteFile(String),
    /// A PostgreSQL server (the scheme normalised from `psql` to `postgres`).
    Postgres(Url),
    /// A MySQL/MariaDB server.
    Mysql(Url),
}

impl Target {
    /// Parses a database URL. Errors name the scheme only: the rest may hold a password.
    pub(crate) fn parse(text: &str) -> Result<Target, PortError> {
        let text = text.trim();
        // SQLite's forms name a file path, not a URL (`sqlite::memory:` is not even one).
        if let Some(path) = text.strip_prefix("sqlite:") {
            return sqlite_target(path);
        }
        let mut url = Url::parse(text).map_err(|error| malformed(text, error))?;
        match url.scheme() {
            "postgres" | "postgresql" => Ok(Target::Postgres(url)),
            "psql" => {
                url.set_scheme("postgres").map_err(|()| {
                    PortError::Config("cannot read a psql:// URL as postgres://".into())
                })?;
                Ok(Target::Postgres(url))
            }
            "mysql" => Ok(Target::Mysql(url)),
            other => Err(unsupported(other)),
        }
    }

    /// The backend the URL selects.
    pub(crate) fn kind(&self) -> BackendKind {
        match self {
            Target::SqliteMemory | Target::SqliteFile(_) => BackendKind::Sqlite,
            Target::Postgres(_) => BackendKind::Postgres,
            Target::Mysql(_) => BackendKind::Mysql,
        }
    }
}

/// What follows `sqlite:` in `sqlite::memory:`, `sqlite:PATH` or `sqlite://PATH`, the path
/// taken verbatim (a file path may hold characters a URL would encode or read as a query or
/// fragment).
fn sqlite_target(rest: &str) -> Result<Target, PortError> {
    let path = rest.strip_prefix("//").unwrap_or(rest);
    match path {
        ":memory:" => Ok(Target::SqliteMemory),
        "" => Err(PortError::Config(
            "sqlite URL has no path: use sqlite::memory:, sqlite:PATH or sqlite://PATH".into(),
        )),
        path => Ok(Target::SqliteFile(path.to_owned())),
    }
}

fn unsupported(scheme: &str) -> PortError {
    PortError::Config(format!(
        "unsupported database URL scheme `{scheme}`; allowed: {ALLOWED}"
    ))
}

/// A URL that does not parse. With a server backend's scheme it is that backend's invalid URL
/// (permanent, as its driver would report it); `url`'s error describes the problem without
/// quoting the input, so no password leaks.
fn malformed(text: &str, error: url::ParseError) -> PortError {
    let backend = match text.split_once("://").map(|(scheme, _)| scheme) {
        Some("postgres" | "postgresql" | "psql") => BackendKind::Postgres,
        Some("mysql") => BackendKind::Mysql,
        Some(scheme) if !scheme.is_empty() => return unsupported(scheme),
        _ => {
            return PortError::Config(format!(
                "database URL is malformed ({error}); allowed: {ALLOWED}"
            ));
        }
    };
    PortError::Connect {
        backend: backend.name(),
        kind: ConnectErrorKind::InvalidUrl,
        message: format!("malformed {} URL: {error}", backend.name()),
        source: Some(Box::new(error)),
    }
}

/// The error for a backend whose cargo feature is off.
fn feature_off(kind: BackendKind) -> PortError {
    let backend = kind.name();
    PortError::Config(format!(
        "database backend `{backend}` is not compiled in: enable the `{backend}` feature of fib-flow (allowed URL schemes: {ALLOWED})"
    ))
}

/// Opens a store for `config.url`. No schema changes: call [`TaskStore::migrate`].
///
/// Errors: [`PortError::Config`] for a malformed URL, an unknown scheme, a backend whose cargo
/// feature is off or a MySQL server whose `max_allowed_packet` is below 16 MiB;
/// [`PortError::Connect`] (permanent) for rejected credentials, an unknown database or an
/// unopenable SQLite file; [`PortError::Unavailable`] (transient) when the database cannot be
/// reached.
pub async fn connect(config: StoreConfig) -> Result<Arc<dyn TaskStore>, PortError> {
    match Target::parse(&config.url)? {
        #[cfg(feature = "sqlite")]
        Target::SqliteMemory => fib_flow_sqlite::connect(None, &config).await,
        #[cfg(feature = "sqlite")]
        Target::SqliteFile(path) => fib_flow_sqlite::connect(Some(path), &config).await,
        #[cfg(feature = "postgres")]
        Target::Postgres(url) => fib_flow_postgres::connect(url.into(), &config).await,
        #[cfg(feature = "mysql")]
        Target::Mysql(url) => fib_flow_mysql::connect(url.into(), &config).await,
        #[cfg(not(all(feature = "sqlite", feature = "postgres", feature = "mysql")))]
        other => Err(feature_off(other.kind())),
    }
}

/// A database name safe to splice into `CREATE DATABASE` (identifiers cannot be bound).
fn check_database_name(name: &str) -> Result<(), PortError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(PortError::Config(format!(
            "database name `{name}` must be 1 to 63 ASCII letters, digits or underscores"
        )))
    }
}

/// `server` with its path (the database) replaced by `name`; user, password, host, port and
/// query are kept as they are.
#[cfg(any(feature = "postgres", feature = "mysql", test))]
fn with_database(mut server: Url, name: &str) -> String {
    server.set_path(name);
    server.into()
}

/// The server URL of `server_url` for database creation, or why there is none.
fn server_of(server_url: &str, operation: &str) -> Result<Target, PortError> {
    let target = Target::parse(server_url)?;
    match target {
        Target::Postgres(_) | Target::Mysql(_) => Ok(target),
        Target::SqliteMemory | Target::SqliteFile(_) => Err(PortError::Config(format!(
            "{operation} needs a postgres:// or mysql:// server URL, got a sqlite URL"
        ))),
    }
}

/// Creates database `name` on the PostgreSQL or MySQL server at `server_url` and returns the
/// URL of the new database (test isolation). SQLite URLs are refused.
pub async fn create_database(server_url: &str, name: &str) -> Result<String, PortError> {
    check_database_name(name)?;
    match server_of(server_url, "create_database")? {
        #[cfg(feature = "postgres")]
        Target::Postgres(url) => {
            fib_flow_postgres::create_database(url.as_str(), name).await?;
            Ok(with_database(url, name))
        }
        #[cfg(feature = "mysql")]
        Target::Mysql(url) => {
            fib_flow_mysql::create_database(url.as_str(), name).await?;
            Ok(with_database(url, name))
        }
        // `server_of` has refused SQLite: this is a server backend whose feature is off.
        other => Err(feature_off(other.kind())),
    }
}

/// Drops database `name` on the server at `server_url` (if it exists).
pub async fn drop_database(server_url: &str, name: &str) -> Result<(), PortError> {
    check_database_name(name)?;
    match server_of(server_url, "drop_database")? {
        #[cfg(feature = "postgres")]
        Target::Postgres(url) => fib_flow_postgres::drop_database(url.as_str(), name).await,
        #[cfg(feature = "mysql")]
        Target::Mysql(url) => fib_flow_mysql::drop_database(url.as_str(), name).await,
        other => Err(feature_off(other.kind())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Target {
        match Target::parse(text) {
            Ok(target) => target,
            Err(error) => panic!("{text}: {error}"),
        }
    }

    fn server(target: Target) -> Url {
        match target {
            Target::Postgres(url) | Target::Mysql(url) => url,
            other => panic!("expected a server URL, got {other:?}"),
        }
    }

    #[test]
    fn urls_pick_the_backend() {
        assert_eq!(parsed("sqlite::memory:"), Target::SqliteMemory);
        assert_eq!(parsed("sqlite://:memory:"), Target::SqliteMemory);
        assert_eq!(
            parsed("sqlite:/tmp/a.db"),
            Target::SqliteFile("/tmp/a.db".into())
        );
        assert_eq!(
            parsed("sqlite:///tmp/a.db"),
            Target::SqliteFile("/tmp/a.db".into())
        );
        assert_eq!(
            parsed("sqlite://rel.db"),
            Target::SqliteFile("rel.db".into())
        );
        assert_eq!(
            parsed("sqlite:/tmp/my tasks#1.db"),
            Target::SqliteFile("/tmp/my tasks#1.db".into()),
            "a file path is taken verbatim, not URL-decoded"
        );
        assert_eq!(parsed("postgres://u@h/db").kind(), BackendKind::Postgres);
        assert_eq!(parsed("postgresql://u@h/db").kind(), BackendKind::Postgres);
        assert_eq!(
            server(parsed("psql://u:p@h:5432/db")).as_str(),
            "postgres://u:p@h:5432/db"
        );
        assert_eq!(parsed("mysql://root@h/db").kind(), BackendKind::Mysql);
    }

    #[test]
    fn percent_encoded_passwords_and_ipv6_hosts_survive() {
        let url = server(parsed(
            "postgres://user:p%40ss%3Aw0rd@[::1]:5433/db?sslmode=disable",
        ));
        assert_eq!(url.password(), Some("p%40ss%3Aw0rd"));
        assert_eq!(url.host_str(), Some("[::1]"));
        assert_eq!(url.port(), Some(5433));
        let moved = with_database(url, "ff_test");
        assert_eq!(
            moved,
            "postgres://user:p%40ss%3Aw0rd@[::1]:5433/ff_test?sslmode=disable"
        );
        // An `@` left unencoded in a password is encoded, not read as the host's start.
        let unencoded = server(parsed("postgres://user:p@ss@db.internal/app"));
        assert_eq!(unencoded.password(), Some("p%40ss"));
        assert_eq!(unencoded.host_str(), Some("db.internal"));

        let mysql = server(parsed("mysql://root:a%40b@[2001:db8::7]/test"));
        assert_eq!(mysql.host_str(), Some("[2001:db8::7]"));
        assert_eq!(
            with_database(mysql, "x"),
            "mysql://root:a%40b@[2001:db8::7]/x"
        );
    }

    #[test]
    fn database_urls_keep_their_query() {
        assert_eq!(
            with_database(
                server(parsed("postgres://postgres@127.0.0.1:5432/test")),
                "x"
            ),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database(server(parsed("mysql://root@h:3306")), "x"),
            "mysql://root@h:3306/x"
        );
        assert_eq!(
            with_database(server(parsed("postgres://h/db?sslmode=disable")), "x"),
            "postgres://h/x?sslmode=disable"
        );
    }

    #[test]
    fn unknown_schemes_name_the_scheme_not_the_password() {
        let Err(PortError::Config(message)) = Target::parse("redis://user:secret@host/0") else {
            panic!("expected a config error");
        };
        assert!(message.contains("`redis`"), "{message}");
        assert!(message.contains("mysql://"), "{message}");
        assert!(!message.contains("secret"), "{message}");
        let Err(PortError::Config(message)) = Target::parse("no scheme") else {
            panic!("expected a config error");
        };
        assert!(message.contains("sqlite::memory:"), "{message}");
        assert!(matches!(
            Target::parse("sqlite:"),
            Err(PortError::Config(_))
        ));
        assert!(matches!(Target::parse(""), Err(PortError::Config(_))));
    }

    #[test]
    fn a_malformed_server_url_is_a_permanent_invalid_url_without_its_password() {
        for text in [
            "postgres://user:secret@[::1/db",
            "mysql://user:secret@127.0.0.1:notaport/db",
        ] {
            let Err(error) = Target::parse(text) else {
                panic!("{text} parsed");
            };
            assert!(
                matches!(
                    &error,
                    PortError::Connect {
                        kind: ConnectErrorKind::InvalidUrl,
                        ..
                    }
                ),
                "{error:?}"
            );
            assert!(!error.is_transient());
            assert!(!format!("{error:?}").contains("secret"), "{error:?}");
        }
    }

    #[test]
    fn database_names_are_identifiers() {
        assert!(check_database_name("ff_test_1").is_ok());
        assert!(check_database_name("").is_err());
        assert!(check_database_name("a;drop").is_err());
        assert!(check_database_name("a-b").is_err());
    }

    #[tokio::test]
    async fn connect_rejects_unknown_schemes_and_disabled_backends() {
        let Err(error) = connect(StoreConfig::new("mongodb://x")).await else {
            panic!("expected an error");
        };
        assert!(matches!(error, PortError::Config(_)), "{error}");
        #[cfg(not(feature = "postgres"))]
        {
            let Err(PortError::Config(message)) = connect(StoreConfig::new("postgres://x/y")).await
            else {
                panic!("expected a config error");
            };
            assert!(message.contains("`postgres` feature"), "{message}");
        }
    }

    #[tokio::test]
    async fn create_database_refuses_sqlite() {
        let Err(PortError::Config(message)) = create_database("sqlite::memory:", "x").await else {
            panic!("expected a config error");
        };
        assert!(message.contains("postgres://"), "{message}");
    }
}
