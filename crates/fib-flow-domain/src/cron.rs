//! Cron schedules (croner): 5 or 6 fields, names, ranges, steps, lists, `L`, `nL`, `#`,
//! @-macros; day-of-month and day-of-week both set match either (Vixie rule).
//!
//! The syntax is the reference's (`cron-parser` 4): seconds optional, day of week `0`–`7` with
//! both `0` and `7` meaning Sunday, `?` as `*` in the day fields, and `0/10` style steps. Two
//! croner extensions are accepted as well because they cannot change the meaning of a
//! reference expression: `W` (nearest weekday) in day-of-month and a leading `+` in
//! day-of-week (day-of-month AND day-of-week). A seventh (year) field is rejected.
//!
//! Daylight-saving changes in a named zone follow croner: a wall time the clock skips runs
//! when the clock resumes (02:30 → 03:00), a fixed wall time the clock repeats runs once (the
//! first time), and sub-hourly patterns keep running through both halves of a repeated hour.

use chrono::{DateTime, SubsecRound, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::error::DomainError;

/// A parsed cron expression with its time zone.
///
/// Parsing happens once, when the task is submitted, so a bad expression is rejected there and
/// never surfaces later as a failed reschedule.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expr: String,
    cron: Cron,
    timezone: Option<chrono_tz::Tz>,
}

impl CronSchedule {
    /// Parses `expr`; `timezone` is an IANA name (UTC when `None`).
    ///
    /// Errors: [`DomainError::InvalidCron`] for an expression croner rejects (or that never
    /// matches, e.g. `0 0 30 2 *`), [`DomainError::InvalidTimezone`] for an unknown zone.
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<Self, DomainError> {
        let timezone = timezone
            .map(|name| {
                name.parse::<chrono_tz::Tz>()
                    .map_err(|_| DomainError::InvalidTimezone {
                        value: name.to_owned(),
                    })
            })
            .transpose()?;
        let cron = parser()
            .parse(expr)
            .map_err(|err| DomainError::InvalidCron {
                expr: expr.to_owned(),
                reason: err.to_string(),
            })?;
        let schedule = CronSchedule {
            expr: expr.to_owned(),
            cron,
            timezone,
        };
        // A syntactically valid expression can still name a day that never exists (Feb 30);
        // finding one occurrence now turns that into a submit-time error instead of a cron
        // task that fails on its first reschedule. Feb 29 is found from a leap year base.
        schedule.next_after(probe_base())?;
        Ok(schedule)
    }

    /// The expression as given.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The schedule's time zone (`None`: UTC).
    pub fn timezone(&self) -> Option<chrono_tz::Tz> {
        self.timezone
    }

    /// The first occurrence strictly after `now`, truncated to whole seconds, evaluated on the
    /// wall clock of the schedule's time zone.
    pub fn next_after(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, DomainError> {
        // Occurrences fall on whole seconds, so searching strictly after the truncated instant
        // is the same as searching strictly after `now`, and the answer carries no fraction.
        let base = now.trunc_subsecs(0);
        let next = match self.timezone {
            Some(zone) => self
                .cron
                .find_next_occurrence(&base.with_timezone(&zone), false)
                .map(|at| at.with_timezone(&Utc)),
            None => self.cron.find_next_occurrence(&base, false),
        };
        next.map(|at| at.trunc_subsecs(0))
            .map_err(|err| DomainError::InvalidCron {
                expr: self.expr.clone(),
                reason: format!("no occurrence after {}: {err}", base.to_rfc3339()),
            })
    }
}

/// The one parser configuration every schedule uses.
fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .dom_and_dow(false)
        .sloppy_ranges(true)
        .build()
}

/// 2000-01-01T00:00:00Z: the start of a leap year, so every real calendar day follows within
/// a year; only impossible days (Feb 30, Apr 31) make the probe fail.
fn probe_base() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + chrono::TimeDelta::seconds(946_684_800)
}

#[cfg(test)]
mod tests {
    use chrono::{Datelike, TimeZone, Weekday};

    use super::*;

    /// Thu 2026-01-01 00:00:00 UTC.
    fn base() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("valid base instant")
    }

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .expect("valid instant")
    }

    fn next(expr: &str, from: DateTime<Utc>) -> DateTime<Utc> {
        CronSchedule::parse(expr, None)
            .expect("expression parses")
            .next_after(from)
            .expect("an occurrence exists")
    }

    fn occurrences(expr: &str, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let schedule = CronSchedule::parse(expr, None).expect("expression parses");
        let mut out = Vec::with_capacity(n);
        let mut cursor = from;
        for _ in 0..n {
            cursor = schedule.next_after(cursor).expect("an occurrence exists");
            out.push(cursor);
        }
        out
    }

    #[test]
    fn five_fields_default_seconds_to_zero() {
        assert_eq!(next("0 * * * *", base()), at(2026, 1, 1, 1, 0, 0));
        assert_eq!(next("30 2 * * *", base()), at(2026, 1, 1, 2, 30, 0));
    }

    #[test]
    fn six_fields_lead_with_seconds() {
        assert_eq!(next("* * * * * *", base()), at(2026, 1, 1, 0, 0, 1));
        assert_eq!(next("15 0 0 * * *", base()), at(2026, 1, 1, 0, 0, 15));
        assert_eq!(next("*/15 * * * * *", base()), at(2026, 1, 1, 0, 0, 15));
    }

    #[test]
    fn seven_fields_are_rejected() {
        let err = CronSchedule::parse("0 0 12 * * * 2027", None).expect_err("year field");
        assert!(matches!(err, DomainError::InvalidCron { .. }), "{err:?}");
    }

    #[test]
    fn weekday_and_month_names() {
        // Thu Jan 1 → next Monday is Jan 5.
        assert_eq!(next("0 9 * * MON-FRI", base()), at(2026, 1, 1, 9, 0, 0));
        assert_eq!(next("0 9 * * mon,wed", base()), at(2026, 1, 5, 9, 0, 0));
        assert_eq!(next("0 0 1 JAN *", base()), at(2027, 1, 1, 0, 0, 0));
        assert_eq!(next("0 0 1 jul *", base()), at(2026, 7, 1, 0, 0, 0));
        assert_eq!(next("0 0 1 FEB-MAR *", base()), at(2026, 2, 1, 0, 0, 0));
    }

    #[test]
    fn ranges_steps_and_lists() {
        assert_eq!(
            occurrences("10-12 * * * *", base(), 4),
            vec![
                at(2026, 1, 1, 0, 10, 0),
                at(2026, 1, 1, 0, 11, 0),
                at(2026, 1, 1, 0, 12, 0),
                at(2026, 1, 1, 1, 10, 0),
            ]
        );
        assert_eq!(
            occurrences("*/20 * * * *", base(), 3),
            vec![
                at(2026, 1, 1, 0, 20, 0),
                at(2026, 1, 1, 0, 40, 0),
                at(2026, 1, 1, 1, 0, 0),
            ]
        );
        assert_eq!(
            occurrences("5,35 * * * *", base(), 3),
            vec![
                at(2026, 1, 1, 0, 5, 0),
                at(2026, 1, 1, 0, 35, 0),
                at(2026, 1, 1, 1, 5, 0),
            ]
        );
        assert_eq!(
            occurrences("0 8-18/5 * * *", base(), 4),
            vec![
                at(2026, 1, 1, 8, 0, 0),
                at(2026, 1, 1, 13, 0, 0),
                at(2026, 1, 1, 18, 0, 0),
                at(2026, 1, 2, 8, 0, 0),
            ]
        );
    }

    #[test]
    fn sloppy_steps_are_accepted() {
        assert_eq!(
            occurrences("0/10 * * * *", base(), 2),
            vec![at(2026, 1, 1, 0, 10, 0), at(2026, 1, 1, 0, 20, 0)]
        );
        assert_eq!(
            occurrences("5/20 * * * *", base(), 3),
            vec![
                at(2026, 1, 1, 0, 5, 0),
                at(2026, 1, 1, 0, 25, 0),
                at(2026, 1, 1, 0, 45, 0)
            ]
        );
    }

    #[test]
    fn sunday_is_zero_and_seven() {
        // Thu Jan 1 2026 → Sun Jan 4.
        assert_eq!(next("0 0 * * 0", base()), at(2026, 1, 4, 0, 0, 0));
        let seven = next("* * * * 7", base());
        assert_eq!(seven, at(2026, 1, 4, 0, 0, 0));
        assert_eq!(seven.weekday(), Weekday::Sun);
        assert_eq!(next("0 0 * * SUN", base()), at(2026, 1, 4, 0, 0, 0));
    }

    #[test]
    fn one_is_monday() {
        let monday = next("0 0 * * 1", base());
        assert_eq!(monday, at(2026, 1, 5, 0, 0, 0));
        assert_eq!(monday.weekday(), Weekday::Mon);
    }

    #[test]
    fn question_mark_is_a_wildcard_in_day_fields() {
        assert_eq!(next("0 0 0 1 * ?", base()), at(2026, 2, 1, 0, 0, 0));
        assert_eq!(next("0 12 ? * *", base()), at(2026, 1, 1, 12, 0, 0));
    }

    #[test]
    fn l_in_day_of_month_is_the_last_day() {
        assert_eq!(
            occurrences("0 0 L * *", base(), 2),
            vec![at(2026, 1, 31, 0, 0, 0), at(2026, 2, 28, 0, 0, 0)]
        );
        assert_eq!(next("0 0 0 L * *", base()), at(2026, 1, 31, 0, 0, 0));
        // Leap year.
        assert_eq!(
            next("0 0 L 2 *", at(2028, 1, 1, 0, 0, 0)),
            at(2028, 2, 29, 0, 0, 0)
        );
    }

    #[test]
    fn nl_in_day_of_week_is_the_last_such_weekday() {
        let fridays = occurrences("0 0 * * 5L", base(), 2);
        assert_eq!(
            fridays,
            vec![at(2026, 1, 30, 0, 0, 0), at(2026, 2, 27, 0, 0, 0)]
        );
        assert!(fridays.iter().all(|day| day.weekday() == Weekday::Fri));
        assert_eq!(next("0 0 0 * * 5L", base()), at(2026, 1, 30, 0, 0, 0));
        assert_eq!(next("0 0 * * FRIL", base()), at(2026, 1, 30, 0, 0, 0));
        assert_eq!(next("0 0 * * 5#L", base()), at(2026, 1, 30, 0, 0, 0));
    }

    #[test]
    fn hash_is_the_nth_weekday() {
        // 2nd Friday of January 2026 is the 9th; of February the 13th.
        assert_eq!(
            occurrences("0 0 * * 5#2", base(), 2),
            vec![at(2026, 1, 9, 0, 0, 0), at(2026, 2, 13, 0, 0, 0)]
        );
        assert_eq!(next("0 0 * * MON#1", base()), at(2026, 1, 5, 0, 0, 0));
    }

    #[test]
    fn macros() {
        assert_eq!(next("@yearly", base()), at(2027, 1, 1, 0, 0, 0));
        assert_eq!(next("@annually", base()), at(2027, 1, 1, 0, 0, 0));
        assert_eq!(next("@monthly", base()), at(2026, 2, 1, 0, 0, 0));
        assert_eq!(next("@weekly", base()), at(2026, 1, 4, 0, 0, 0));
        assert_eq!(next("@daily", base()), at(2026, 1, 2, 0, 0, 0));
        assert_eq!(next("@hourly", base()), at(2026, 1, 1, 1, 0, 0));
    }

    #[test]
    fn day_of_month_and_day_of_week_match_either() {
        // Every 13th and every Friday: Fri Jan 2, Fri Jan 9, Tue Jan 13, Fri Jan 16.
        assert_eq!(
            occurrences("0 0 13 * FRI", base(), 4),
            vec![
                at(2026, 1, 2, 0, 0, 0),
                at(2026, 1, 9, 0, 0, 0),
                at(2026, 1, 13, 0, 0, 0),
                at(2026, 1, 16, 0, 0, 0),
            ]
        );
        // A star on one side leaves the other in charge.
        assert_eq!(next("0 0 13 * *", base()), at(2026, 1, 13, 0, 0, 0));
        // `+` asks for both: the next Friday the 13th is in February 2026.
        assert_eq!(next("0 0 13 * +FRI", base()), at(2026, 2, 13, 0, 0, 0));
    }

    #[test]
    fn next_is_strictly_after_now() {
        // `base()` is itself a match of `@daily`.
        assert_eq!(next("0 0 * * *", base()), at(2026, 1, 2, 0, 0, 0));
        assert_eq!(next("* * * * * *", base()), at(2026, 1, 1, 0, 0, 1));
    }

    #[test]
    fn sub_second_now_is_truncated() {
        let now = base() + chrono::TimeDelta::milliseconds(500);
        let got = next("* * * * * *", now);
        assert_eq!(got, at(2026, 1, 1, 0, 0, 1));
        assert_eq!(got.timestamp_subsec_nanos(), 0);
        let just_before = at(2026, 1, 1, 0, 59, 59) + chrono::TimeDelta::milliseconds(999);
        assert_eq!(next("0 * * * *", just_before), at(2026, 1, 1, 1, 0, 0));
    }

    #[test]
    fn evaluated_in_the_named_time_zone() {
        let schedule =
            CronSchedule::parse("0 9 * * *", Some("America/New_York")).expect("valid schedule");
        // 09:00 EST (UTC-5) in January.
        assert_eq!(
            schedule.next_after(base()).expect("occurrence"),
            at(2026, 1, 1, 14, 0, 0)
        );
        // 09:00 EDT (UTC-4) in July.
        assert_eq!(
            schedule
                .next_after(at(2026, 7, 1, 0, 0, 0))
                .expect("occurrence"),
            at(2026, 7, 1, 13, 0, 0)
        );
        // Past today's 09:00 local: tomorrow.
        assert_eq!(
            schedule
                .next_after(at(2026, 1, 1, 14, 0, 0))
                .expect("occurrence"),
            at(2026, 1, 2, 14, 0, 0)
        );
        assert_eq!(schedule.timezone(), Some(chrono_tz::America::New_York));
    }

    #[test]
    fn utc_when_no_zone() {
        let schedule = CronSchedule::parse("0 9 * * *", None).expect("valid schedule");
        assert_eq!(schedule.timezone(), None);
        assert_eq!(schedule.expr(), "0 9 * * *");
        assert_eq!(
            schedule.next_after(base()).expect("occurrence"),
            at(2026, 1, 1, 9, 0, 0)
        );
    }

    #[test]
    fn invalid_expressions_are_rejected_at_parse() {
        for expr in [
            "",
            "   ",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 32 * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "a b c d e",
            "@every_minute",
            "*/0 * * * *",
            "5-1 * * * *",
            "0 0 30 2 *",
            "* * * * * * * *",
        ] {
            match CronSchedule::parse(expr, None) {
                Err(DomainError::InvalidCron { expr: got, reason }) => {
                    assert_eq!(got, expr);
                    assert!(!reason.is_empty(), "{expr}: empty reason");
                }
                other => panic!("{expr:?} should be rejected, got {other:?}"),
            }
        }
    }

    #[test]
    fn february_29_is_a_real_day() {
        assert_eq!(next("0 0 29 2 *", base()), at(2028, 2, 29, 0, 0, 0));
    }

    #[test]
    fn invalid_time_zone_is_rejected() {
        let err = CronSchedule::parse("0 9 * * *", Some("Mars/Olympus_Mons")).expect_err("zone");
        assert_eq!(
            err,
            DomainError::InvalidTimezone {
                value: "Mars/Olympus_Mons".to_owned()
            }
        );
    }

    #[test]
    fn a_fixed_time_in_a_skipped_hour_runs_when_the_clock_resumes() {
        // 2026-03-08 02:00 EST jumps to 03:00 EDT in New York.
        let schedule =
            CronSchedule::parse("30 2 * * *", Some("America/New_York")).expect("valid schedule");
        let mut cursor = at(2026, 3, 7, 12, 0, 0);
        let mut runs = Vec::new();
        for _ in 0..2 {
            cursor = schedule.next_after(cursor).expect("occurrence");
            runs.push(cursor);
        }
        // 03:00 EDT on the day of the gap, then 02:30 EDT again.
        assert_eq!(
            runs,
            vec![at(2026, 3, 8, 7, 0, 0), at(2026, 3, 9, 6, 30, 0)]
        );
    }

    #[test]
    fn a_fixed_time_in_a_repeated_hour_runs_once() {
        // 2026-11-01 02:00 EDT falls back to 01:00 EST in New York.
        let schedule =
            CronSchedule::parse("30 1 * * *", Some("America/New_York")).expect("valid schedule");
        let first = schedule
            .next_after(at(2026, 10, 31, 12, 0, 0))
            .expect("occurrence");
        assert_eq!(first, at(2026, 11, 1, 5, 30, 0)); // 01:30 EDT
        let second = schedule.next_after(first).expect("occurrence");
        assert_eq!(second, at(2026, 11, 2, 6, 30, 0)); // 01:30 EST the next day
    }

    #[test]
    fn an_interval_runs_through_both_halves_of_a_repeated_hour() {
        let schedule =
            CronSchedule::parse("*/30 * * * *", Some("America/New_York")).expect("valid schedule");
        let mut cursor = at(2026, 11, 1, 5, 0, 0); // 01:00 EDT
        let mut runs = Vec::new();
        for _ in 0..4 {
            cursor = schedule.next_after(cursor).expect("occurrence");
            runs.push(cursor);
        }
        assert_eq!(
            runs,
            vec![
                at(2026, 11, 1, 5, 30, 0), // 01:30 EDT
                at(2026, 11, 1, 6, 0, 0),  // 01:00 EST
                at(2026, 11, 1, 6, 30, 0), // 01:30 EST
                at(2026, 11, 1, 7, 0, 0),  // 02:00 EST
            ]
        );
    }
}
