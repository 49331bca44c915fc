//! Serde adapters that keep the reference's units in config files and JSON output:
//! task durations in (fractional) seconds, manager intervals in milliseconds.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

fn secs_from_f64<'de, D: Deserializer<'de>>(value: f64) -> Result<Duration, D::Error> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        serde::de::Error::custom(format!("{value} is not a non-negative number of seconds"))
    })
}

/// `Duration` as seconds.
pub mod secs {
    use super::*;

    /// Serialises as fractional seconds.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(value.as_secs_f64())
    }

    /// Deserialises from a number of seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        secs_from_f64::<D>(f64::deserialize(deserializer)?)
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

    /// Deserialises from seconds or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(deserializer)?
            .map(secs_from_f64::<D>)
            .transpose()
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

    /// Deserialises a present value (number or null); combine with `#[serde(default)]`.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<Duration>>, D::Error> {
        Ok(Some(
            Option::<f64>::deserialize(deserializer)?
                .map(secs_from_f64::<D>)
                .transpose()?,
        ))
    }
}

/// `Duration` as whole milliseconds.
pub mod millis {
    use super::*;

    /// Serialises as milliseconds.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    /// Deserialises from milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(deserializer)?))
    }
}
