//! Millisecond timestamps: the storage representation of every instant.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// Milliseconds since the Unix epoch.
pub fn to_millis(instant: DateTime<Utc>) -> i64 {
    instant.timestamp_millis()
}

/// The instant `millis` after the Unix epoch (saturating at chrono's range).
pub fn from_millis(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).unwrap_or(if millis < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// Truncates an instant to whole milliseconds, the precision storage keeps.
pub fn truncate_millis(instant: DateTime<Utc>) -> DateTime<Utc> {
    from_millis(to_millis(instant))
}

/// `instant + duration`, saturating instead of overflowing.
pub fn add(instant: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(duration)
        .ok()
        .and_then(|delta| instant.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `instant - duration`, saturating instead of overflowing.
pub fn sub(instant: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(duration)
        .ok()
        .and_then(|delta| instant.checked_sub_signed(delta))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// A duration in whole milliseconds, rounded up (so a stored limit or delay is never shorter
/// than the one asked for), saturating at `i64::MAX`.
pub fn duration_millis(duration: Duration) -> i64 {
    let millis = duration.as_millis();
    let rounded = if duration.subsec_nanos().is_multiple_of(1_000_000) {
        millis
    } else {
        millis.saturating_add(1)
    };
    i64::try_from(rounded).unwrap_or(i64::MAX)
}

/// A non-negative millisecond count as a duration (negative counts become zero).
pub fn millis_duration(millis: i64) -> Duration {
    Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}
