//! [`KeepPrepared`]: raw SQL that diesel's statement cache keeps prepared.
//!
//! `diesel::sql_query` marks every statement it builds as unsafe to cache (its text may have
//! been built at run time), so diesel-async prepares it anew, parsed and planned by the
//! server, and closes it again on every execution. A PostgreSQL drain's statement log showed
//! the claim parsed for 0.34 ms and planned for 0.4–1.0 ms against 0.08 ms of execution, on
//! every round. [`keep_prepared`] wraps a `sql_query` whose text is a constant and tells the
//! cache it is safe to keep: the key is the SQL text plus the bind types, so the statement is
//! prepared once per connection.
//!
//! It answers `is_safe_to_cache_prepared`, a `QueryFragment` method that diesel documents only
//! for third-party backends (diesel-async answers it the same way for its own queries): the
//! pinned diesel version (Cargo.lock) is what the test suite checks it against.

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::QueryResult;

/// A query whose SQL text never changes (see the module doc).
#[derive(Debug, Clone)]
#[must_use = "a statement runs only when executed or loaded"]
pub struct KeepPrepared<Q>(Q);

/// Marks `query`, a `diesel::sql_query` over a constant SQL text with its binds, as safe to
/// keep prepared. A text built at run time must not go through here: each distinct text would
/// stay prepared on the server for the connection's lifetime.
pub fn keep_prepared<Q>(query: Q) -> KeepPrepared<Q> {
    KeepPrepared(query)
}

impl<Q, DB> QueryFragment<DB> for KeepPrepared<Q>
where
    DB: Backend,
    Q: QueryFragment<DB>,
{
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &DB) -> QueryResult<bool> {
        Ok(true)
    }
}

impl<Q> QueryId for KeepPrepared<Q> {
    type QueryId = ();

    // Keyed by its text, not its type.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for KeepPrepared<Q> {
    type SqlType = Q::SqlType;
}
