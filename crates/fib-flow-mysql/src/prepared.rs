//! [`Prepared`]: a statement whose SQL text never changes, so diesel-async prepares it once per
//! connection and reuses it.
//!
//! diesel marks `sql_query`, every `UPDATE` it builds, `IN (…)` lists and multi-row `INSERT`s
//! as unsafe to cache, and diesel-async then prepares and closes them again on every execution:
//! 5.3 of the 7.4 statements per task of a MariaDB drain were prepared afresh. The hot
//! statements of this crate are written as fixed SQL instead (a batch travels as one JSON
//! document that the statement reads with `JSON_TABLE`, see `batch.rs`), so the cache key,
//! the SQL text plus the bind types, is the same for every batch size.

use std::marker::PhantomData;

use diesel::QueryResult;
use diesel::mysql::Mysql;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Integer, Text};

/// One bind parameter of a [`Prepared`] statement.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Bind<'a> {
    Text(&'a str),
    BigInt(i64),
    Integer(i32),
}

/// Fixed SQL text with `?` placeholders (and no `?` anywhere else) and its binds in order.
/// `ST` is the SQL type of the rows a query returns (`()` for a statement that returns none).
pub(crate) struct Prepared<'a, ST = ()> {
    sql: &'static str,
    binds: Vec<Bind<'a>>,
    rows: PhantomData<ST>,
}

impl<'a> Prepared<'a> {
    /// A statement that returns no rows.
    pub(crate) fn statement(sql: &'static str, binds: Vec<Bind<'a>>) -> Self {
        Prepared::query(sql, binds)
    }
}

impl<'a, ST> Prepared<'a, ST> {
    /// A query whose rows have the SQL type `ST`.
    pub(crate) fn query(sql: &'static str, binds: Vec<Bind<'a>>) -> Self {
        Prepared {
            sql,
            binds,
            rows: PhantomData,
        }
    }
}

impl<ST> QueryFragment<Mysql> for Prepared<'_, ST> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        let mut parts = self.sql.split('?');
        out.push_sql(parts.next().unwrap_or_default());
        let mut binds = self.binds.iter();
        for part in parts {
            match binds.next() {
                Some(Bind::Text(value)) => out.push_bind_param::<Text, str>(value)?,
                Some(Bind::BigInt(value)) => out.push_bind_param::<BigInt, i64>(value)?,
                Some(Bind::Integer(value)) => out.push_bind_param::<Integer, i32>(value)?,
                None => return Err(placeholder_mismatch(self.sql)),
            }
            out.push_sql(part);
        }
        if binds.next().is_some() {
            return Err(placeholder_mismatch(self.sql));
        }
        Ok(())
    }
}

fn placeholder_mismatch(sql: &str) -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(
        format!("the binds do not match the placeholders of `{sql}`").into(),
    )
}

/// No static id: the statement cache keys a [`Prepared`] by its SQL text, which is fixed.
impl<ST> QueryId for Prepared<'_, ST> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<ST: 'static> Query for Prepared<'_, ST> {
    type SqlType = ST;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql_of(prepared: &Prepared<'_>) -> QueryResult<String> {
        let mut builder = diesel::mysql::MysqlQueryBuilder::new();
        prepared.to_sql(&mut builder, &Mysql)?;
        Ok(diesel::query_builder::QueryBuilder::finish(builder))
    }

    #[test]
    fn binds_fill_the_placeholders_in_order_and_the_statement_stays_cacheable() {
        let prepared = Prepared::statement(
            "UPDATE x SET a = ? WHERE b = ? AND c = ?",
            vec![Bind::Text("t"), Bind::BigInt(1), Bind::Integer(2)],
        );
        assert_eq!(
            sql_of(&prepared).expect("renders"),
            "UPDATE x SET a = ? WHERE b = ? AND c = ?"
        );
        assert!(
            prepared
                .is_safe_to_cache_prepared(&Mysql)
                .expect("cacheable?"),
            "a fixed text must stay in the statement cache"
        );
    }

    #[test]
    fn a_bind_count_that_does_not_match_the_placeholders_is_an_error() {
        let missing = Prepared::statement("SELECT ?, ?", vec![Bind::BigInt(1)]);
        assert!(sql_of(&missing).is_err());
        let extra = Prepared::statement("SELECT ?", vec![Bind::BigInt(1), Bind::BigInt(2)]);
        assert!(sql_of(&extra).is_err());
    }
}
