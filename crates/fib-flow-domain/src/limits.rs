//! Size limits every backend enforces identically, checked before anything reaches a database.
//!
//! Without them the databases decided: SQLite stored a 10 KB handler name that PostgreSQL and
//! MariaDB refused with raw errors, MariaDB dropped the connection on a payload above its
//! `max_allowed_packet` (which looked like a transient fault), and JSON nested deeper than
//! serde_json reads back was written fine and could never be read again. See
//! `docs/semantics.md` ("Limits").

use serde_json::Value;

use crate::error::DomainError;

/// Longest handler name, tag, worker id, pod id, cron expression, suspension reason or stage
/// name, in UTF-8 bytes: the `VARCHAR(255)` columns of PostgreSQL and MySQL/MariaDB (a MySQL
/// `VARCHAR(255)` counts characters, so 255 bytes always fit).
pub const MAX_NAME_BYTES: usize = 255;

/// Deepest JSON nesting (arrays and objects inside each other) a stored value may have:
/// serde_json refuses to parse a document nested 128 containers deep (its recursion limit),
/// so this is the deepest value that reads back.
pub const MAX_JSON_DEPTH: usize = 127;

/// Largest serialized JSON value (payload, result, suspension metadata, checkpoint or progress
/// metadata) and largest context, in bytes, on every backend.
///
/// One task row can carry a payload, a result, a suspension's metadata and a context at once
/// and is written in one statement; at 3 MiB each (12 MiB) that statement, with the error text
/// and the other columns, stays below MariaDB's default `max_allowed_packet` of 16 MiB, which
/// the MySQL store requires at connect. Above the packet size MariaDB closes the connection,
/// which would otherwise look like a transient fault and be retried forever.
pub const MAX_VALUE_BYTES: usize = 3 * 1024 * 1024;

/// How many arrays and objects are nested inside each other in `value` (a scalar is 0,
/// `[]` is 1, `[{}]` is 2).
///
/// Iterative: the value may be far deeper than the stack allows recursion.
pub fn json_depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((value, depth)) = stack.pop() {
        match value {
            Value::Array(items) => {
                deepest = deepest.max(depth + 1);
                stack.extend(items.iter().map(|item| (item, depth + 1)));
            }
            Value::Object(map) => {
                deepest = deepest.max(depth + 1);
                stack.extend(map.values().map(|item| (item, depth + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// Whether a string or object key anywhere in `value` holds U+0000. PostgreSQL's `jsonb`
/// cannot store that character, so every backend refuses it alike (see [`check_json`]).
pub fn json_has_nul(value: &Value) -> bool {
    let mut stack: Vec<&Value> = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::String(text) if text.contains('\0') => return true,
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                if map.keys().any(|key| key.contains('\0')) {
                    return true;
                }
                stack.extend(map.values());
            }
            _ => {}
        }
    }
    false
}

/// Counts bytes without keeping them.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The length of `value` serialized as compact JSON, as stored.
pub fn json_bytes(value: &Value) -> usize {
    let mut counter = Counter(0);
    // Writing a `Value` into a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// Checks that `value` can be stored and read back: at most `max_depth` levels deep, at most
/// [`MAX_VALUE_BYTES`] long and free of U+0000 in its strings and keys ([`json_has_nul`]). `max_depth` is [`MAX_JSON_DEPTH`] minus the levels of any envelope
/// the value is also stored in (a suspension's metadata is repeated inside its event's
/// metadata object).
pub fn check_json(field: &'static str, value: &Value, max_depth: usize) -> Result<(), DomainError> {
    let depth = json_depth(value);
    if depth > max_depth {
        return Err(DomainError::JsonTooDeep {
            field,
            depth,
            max: max_depth,
        });
    }
    if json_has_nul(value) {
        return Err(DomainError::InvalidOption {
            field,
            reason: "a string or key holds the character U+0000, which PostgreSQL's jsonb \
                     cannot store; fib-flow refuses it on every backend"
                .to_owned(),
        });
    }
    let len = json_bytes(value);
    if len > MAX_VALUE_BYTES {
        return Err(DomainError::TooLong {
            field,
            len,
            max: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// Checks a byte blob (a context) against [`MAX_VALUE_BYTES`].
pub fn check_bytes(field: &'static str, value: &[u8]) -> Result<(), DomainError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(DomainError::TooLong {
            field,
            len: value.len(),
            max: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// Checks a name-like text: not empty (after trimming) and at most [`MAX_NAME_BYTES`] bytes.
pub fn check_name(field: &'static str, value: &str) -> Result<(), DomainError> {
    if value.trim().is_empty() {
        return Err(DomainError::InvalidOption {
            field,
            reason: format!("must not be empty (1 to {MAX_NAME_BYTES} bytes)"),
        });
    }
    check_len(field, value, MAX_NAME_BYTES)
}

/// Checks that a text is at most `max` bytes long.
pub fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), DomainError> {
    if value.len() > max {
        return Err(DomainError::TooLong {
            field,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn nested(depth: usize) -> Value {
        let mut value = json!(1);
        for _ in 0..depth {
            value = json!([value]);
        }
        value
    }

    #[test]
    fn depth_counts_containers() {
        assert_eq!(json_depth(&json!(1)), 0);
        assert_eq!(json_depth(&json!([])), 1);
        assert_eq!(json_depth(&json!({"a": [1, {"b": {}}]})), 4);
        assert_eq!(json_depth(&nested(200)), 200);
    }

    #[test]
    fn the_deepest_accepted_value_reads_back_and_one_more_level_does_not() {
        let deepest = nested(MAX_JSON_DEPTH);
        assert!(check_json("payload", &deepest, MAX_JSON_DEPTH).is_ok());
        let text = serde_json::to_string(&deepest).expect("serialize");
        assert_eq!(
            serde_json::from_str::<Value>(&text).expect("reads back"),
            deepest
        );

        let too_deep = nested(MAX_JSON_DEPTH + 1);
        let text = serde_json::to_string(&too_deep).expect("serialize");
        assert!(serde_json::from_str::<Value>(&text).is_err());
        assert_eq!(
            check_json("payload", &too_deep, MAX_JSON_DEPTH),
            Err(DomainError::JsonTooDeep {
                field: "payload",
                depth: MAX_JSON_DEPTH + 1,
                max: MAX_JSON_DEPTH,
            })
        );
    }

    #[test]
    fn a_nul_character_in_a_string_or_key_is_refused() {
        assert!(check_json("payload", &json!({"a": ["x", {"b": "ok"}]}), MAX_JSON_DEPTH).is_ok());
        for value in [
            json!("a\u{0}b"),
            json!([{"k": "\u{0}"}]),
            json!({"a\u{0}": 1}),
        ] {
            assert!(
                matches!(
                    check_json("payload", &value, MAX_JSON_DEPTH),
                    Err(DomainError::InvalidOption {
                        field: "payload",
                        ..
                    })
                ),
                "{value} must be refused"
            );
        }
    }

    #[test]
    fn size_is_the_serialized_length() {
        let value = json!({"a": "xyz"});
        assert_eq!(json_bytes(&value), r#"{"a":"xyz"}"#.len());
        let big = Value::String("x".repeat(MAX_VALUE_BYTES));
        assert!(matches!(
            check_json("result", &big, MAX_JSON_DEPTH),
            Err(DomainError::TooLong {
                field: "result",
                max: MAX_VALUE_BYTES,
                ..
            })
        ));
    }

    #[test]
    fn names_are_non_empty_and_bounded() {
        assert!(check_name("name", "resize").is_ok());
        assert!(check_name("name", &"n".repeat(MAX_NAME_BYTES)).is_ok());
        assert!(matches!(
            check_name("name", ""),
            Err(DomainError::InvalidOption { field: "name", .. })
        ));
        assert!(matches!(
            check_name("tag", "  "),
            Err(DomainError::InvalidOption { field: "tag", .. })
        ));
        // Bytes, not characters: 128 two-byte characters are 256 bytes.
        assert_eq!(
            check_name("name", &"é".repeat(128)),
            Err(DomainError::TooLong {
                field: "name",
                len: 256,
                max: MAX_NAME_BYTES,
            })
        );
    }
}
