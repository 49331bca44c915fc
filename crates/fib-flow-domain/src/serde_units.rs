//! Serde adapters that keep the reference's units in config files and JSON output: task
//! durations in (fractional) seconds, manager intervals in milliseconds.
//!
//! Reading also accepts a duration that carries its own unit, as a string in
//! [`humantime`](https://docs.rs/humantime)'s format (`"30s"`, `"5m"`, `"1h 30m"`, `"250ms"`),
//! so a config file need not remember which field counts in which unit. Writing keeps the
//! numbers, so what older versions (and the reference) wrote and read stays valid both ways.

use std::fmt;
use std::time::Duration;

use serde::Serializer;
use serde::de::{self, Deserializer, Visitor};

/// The unit a bare number is counted in.
#[derive(Clone, Copy)]
enum Unit {
    /// Seconds, fractions allowed.
    Seconds,
    /// Whole milliseconds.
    Millis,
}

/// Reads a [`Duration`] from a number in its unit or from a humantime string.
struct DurationVisitor(Unit);

impl<'de> Visitor<'de> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Unit::Seconds => formatter.write_str(
                "a non-negative number of seconds or a duration such as \"30s\" or \"5m\"",
            ),
            Unit::Millis => formatter.write_str(
                "a whole number of milliseconds or a duration such as \"500ms\" or \"5s\"",
            ),
        }
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Duration, E> {
        Ok(match self.0 {
            Unit::Seconds => Duration::from_secs(value),
            Unit::Millis => Duration::from_millis(value),
        })
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Duration, E> {
        let value = u64::try_from(value)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(value), &self))?;
        self.visit_u64(value)
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Duration, E> {
        match self.0 {
            Unit::Seconds => Duration::try_from_secs_f64(value)
                .map_err(|_| E::invalid_value(de::Unexpected::Float(value), &self)),
            Unit::Millis => Err(E::invalid_type(de::Unexpected::Float(value), &self)),
        }
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Duration, E> {
        humantime::parse_duration(value)
            .map_err(|error| E::custom(format!("{value:?} is not a duration ({error})")))
    }
}

/// Reads an optional duration: `null` is `None`.
struct OptionalDurationVisitor(Unit);

impl<'de> Visitor<'de> for OptionalDurationVisitor {
    type Value = Option<Duration>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        DurationVisitor(self.0).expecting(formatter)?;
        formatter.write_str(", or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Option<Duration>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<Duration>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        deserializer
            .deserialize_any(DurationVisitor(self.0))
            .map(Some)
    }
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D, unit: Unit) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(DurationVisitor(unit))
}

fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
    unit: Unit,
) -> Result<Option<Duration>, D::Error> {
    deserializer.deserialize_option(OptionalDurationVisitor(unit))
}

/// `Duration` as seconds.
pub mod secs {
    use super::*;

    /// Serialises as fractional seconds.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(value.as_secs_f64())
    }

    /// Deserialises from a number of seconds or a humantime string.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        duration(deserializer, Unit::Seconds)
    }
}

/// `Option<Duration>` as seconds or null.
pub mod opt_secs {
    use super::*;

    /// Serialises as fractional seconds or null.
    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.serialize_some(&duration.as_secs_f64()),
            None => serializer.serialize_none(),
        }
    }

    /// Deserialises from seconds, a humantime string or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        optional_duration(deserializer, Unit::Seconds)
    }
}

/// `Option<Option<Duration>>` as seconds: absent → `None`, `null` → `Some(None)`.
pub mod opt_opt_secs {
    use super::*;

    /// Serialises the inner option (an absent outer value serialises as null).
    pub fn serialize<S: Serializer>(
        value: &Option<Option<Duration>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(Some(duration)) => serializer.serialize_some(&duration.as_secs_f64()),
            _ => serializer.serialize_none(),
        }
    }

    /// Deserialises a present value (seconds, a humantime string or null); combine with
    /// `#[serde(default)]`.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<Duration>>, D::Error> {
        optional_duration(deserializer, Unit::Seconds).map(Some)
    }
}

/// `Duration` as whole milliseconds.
pub mod millis {
    use super::*;

    /// Serialises as milliseconds.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    /// Deserialises from whole milliseconds or a humantime string.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        duration(deserializer, Unit::Millis)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Units {
        #[serde(with = "secs")]
        secs: Duration,
        #[serde(with = "opt_secs")]
        opt_secs: Option<Duration>,
        #[serde(default, with = "opt_opt_secs")]
        opt_opt_secs: Option<Option<Duration>>,
        #[serde(with = "millis")]
        millis: Duration,
    }

    fn read(value: serde_json::Value) -> Result<Units, serde_json::Error> {
        serde_json::from_value(value)
    }

    #[test]
    fn numbers_keep_their_units() {
        let units = read(json!({"secs": 1.5, "opt_secs": 2, "opt_opt_secs": 0.25, "millis": 750}))
            .expect("numbers");
        assert_eq!(
            units,
            Units {
                secs: Duration::from_millis(1500),
                opt_secs: Some(Duration::from_secs(2)),
                opt_opt_secs: Some(Some(Duration::from_millis(250))),
                millis: Duration::from_millis(750),
            }
        );
    }

    #[test]
    fn strings_carry_their_own_unit() {
        let units = read(json!({
            "secs": "1m 30s",
            "opt_secs": "250ms",
            "opt_opt_secs": "2h",
            "millis": "5s",
        }))
        .expect("humantime strings");
        assert_eq!(
            units,
            Units {
                secs: Duration::from_secs(90),
                opt_secs: Some(Duration::from_millis(250)),
                opt_opt_secs: Some(Some(Duration::from_secs(7200))),
                millis: Duration::from_secs(5),
            }
        );
    }

    #[test]
    fn null_and_absence_stay_distinct() {
        let units = read(json!({"secs": 0, "opt_secs": null, "opt_opt_secs": null, "millis": 0}))
            .expect("nulls");
        assert_eq!(units.opt_secs, None);
        assert_eq!(units.opt_opt_secs, Some(None), "null means no limit");
        let units = read(json!({"secs": 0, "opt_secs": null, "millis": 0})).expect("absent");
        assert_eq!(units.opt_opt_secs, None, "absent means not set");
    }

    #[test]
    fn writing_keeps_the_numbers() {
        let units = Units {
            secs: Duration::from_millis(1500),
            opt_secs: None,
            opt_opt_secs: Some(Some(Duration::from_secs(3))),
            millis: Duration::from_secs(2),
        };
        let written = serde_json::to_value(&units).expect("serialisable");
        assert_eq!(
            written,
            json!({"secs": 1.5, "opt_secs": null, "opt_opt_secs": 3.0, "millis": 2000})
        );
        assert_eq!(read(written).expect("round trip"), units);
    }

    #[test]
    fn invalid_durations_are_refused() {
        for bad in [
            json!({"secs": -1, "opt_secs": null, "millis": 0}),
            json!({"secs": -0.5, "opt_secs": null, "millis": 0}),
            json!({"secs": "soon", "opt_secs": null, "millis": 0}),
            json!({"secs": "30", "opt_secs": null, "millis": 0}),
            json!({"secs": 0, "opt_secs": "-5s", "millis": 0}),
            json!({"secs": 0, "opt_secs": null, "millis": 1.5}),
            json!({"secs": 0, "opt_secs": null, "millis": -3}),
            json!({"secs": 0, "opt_secs": null, "millis": true}),
        ] {
            assert!(read(bad.clone()).is_err(), "{bad} must be refused");
        }
    }
}
