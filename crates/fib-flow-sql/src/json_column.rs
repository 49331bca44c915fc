//! The SQL type of the columns that hold JSON (payload, result, suspension metadata, event
//! metadata, worker meta), so that PostgreSQL stores them as `jsonb` while the row types keep
//! carrying JSON text on every backend.
//!
//! PostgreSQL stores them as `jsonb`, which users can index and query (`payload->>'customer'`);
//! its binary wire format is a version byte (1) followed by the JSON text, so a value crosses
//! the wire with one byte added or removed and no parse in Rust. SQLite and MySQL/MariaDB keep
//! text columns (docs/semantics.md, "How JSON is stored", says why not MariaDB's `JSON`) and
//! bind and read the column exactly as `Text`. Rows carry such a column as [`JsonText`].

use diesel::deserialize::FromSqlRow;
use diesel::deserialize::{self, FromSql};
use diesel::expression::AsExpression;
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::SqlType;

/// A JSON column: `jsonb` on PostgreSQL, text on SQLite and MySQL/MariaDB. Rust side:
/// [`JsonText`].
#[derive(Debug, Clone, Copy, Default, SqlType, diesel::query_builder::QueryId)]
#[cfg_attr(
    feature = "postgres",
    diesel(postgres_type(oid = 3802, array_oid = 3807))
)]
#[cfg_attr(feature = "sqlite", diesel(sqlite_type(name = "Text")))]
#[cfg_attr(feature = "mysql", diesel(mysql_type(name = "String")))]
pub struct Json;

/// The JSON text of a [`Json`] column as written or read: compact serde_json output when
/// fib-flow writes it; as the database prints it when read (PostgreSQL's `jsonb` adds a space
/// after each `:` and `,` and orders object keys its own way).
#[derive(Debug, Clone, PartialEq, Eq, AsExpression, FromSqlRow)]
#[diesel(sql_type = Json)]
pub struct JsonText(pub String);

impl JsonText {
    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The only `jsonb` binary format version PostgreSQL has defined.
#[cfg(feature = "postgres")]
const JSONB_VERSION: u8 = 1;

#[cfg(feature = "postgres")]
impl ToSql<Json, diesel::pg::Pg> for JsonText {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, diesel::pg::Pg>) -> serialize::Result {
        use std::io::Write;
        out.write_all(&[JSONB_VERSION])?;
        out.write_all(self.0.as_bytes())?;
        Ok(serialize::IsNull::No)
    }
}

#[cfg(feature = "postgres")]
impl FromSql<Json, diesel::pg::Pg> for JsonText {
    fn from_sql(value: diesel::pg::PgValue<'_>) -> deserialize::Result<Self> {
        from_jsonb(value.as_bytes())
    }
}

/// A `jsonb` value in PostgreSQL's binary format → its JSON text.
#[cfg(feature = "postgres")]
fn from_jsonb(bytes: &[u8]) -> deserialize::Result<JsonText> {
    match bytes.split_first() {
        Some((&JSONB_VERSION, text)) => Ok(JsonText(String::from_utf8(text.to_vec())?)),
        Some((version, _)) => Err(format!("unsupported jsonb format version {version}").into()),
        None => Err("empty jsonb value".into()),
    }
}

#[cfg(feature = "sqlite")]
impl ToSql<Json, diesel::sqlite::Sqlite> for JsonText {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, diesel::sqlite::Sqlite>) -> serialize::Result {
        <String as ToSql<diesel::sql_types::Text, diesel::sqlite::Sqlite>>::to_sql(&self.0, out)
    }
}

#[cfg(feature = "sqlite")]
impl FromSql<Json, diesel::sqlite::Sqlite> for JsonText {
    fn from_sql(
        value: <diesel::sqlite::Sqlite as diesel::backend::Backend>::RawValue<'_>,
    ) -> deserialize::Result<Self> {
        <String as FromSql<diesel::sql_types::Text, diesel::sqlite::Sqlite>>::from_sql(value)
            .map(JsonText)
    }
}

#[cfg(feature = "mysql")]
impl ToSql<Json, diesel::mysql::Mysql> for JsonText {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, diesel::mysql::Mysql>) -> serialize::Result {
        <String as ToSql<diesel::sql_types::Text, diesel::mysql::Mysql>>::to_sql(&self.0, out)
    }
}

#[cfg(feature = "mysql")]
impl FromSql<Json, diesel::mysql::Mysql> for JsonText {
    fn from_sql(value: diesel::mysql::MysqlValue<'_>) -> deserialize::Result<Self> {
        <String as FromSql<diesel::sql_types::Text, diesel::mysql::Mysql>>::from_sql(value)
            .map(JsonText)
    }
}

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use super::*;

    #[test]
    fn jsonb_is_read_after_its_version_byte_and_other_versions_are_refused() {
        assert_eq!(
            from_jsonb(b"\x01{\"a\": 1}").expect("version 1"),
            JsonText("{\"a\": 1}".to_owned())
        );
        let refused = from_jsonb(b"\x02{}").expect_err("version 2");
        assert!(refused.to_string().contains("version 2"), "{refused}");
        assert!(
            from_jsonb(b"").is_err(),
            "an empty value has no version byte"
        );
    }
}
