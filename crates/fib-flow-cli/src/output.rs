//! How results reach the operator: tables and text for people, JSON for scripts, progress on
//! stderr only when it is a terminal.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use chrono::{DateTime, Utc};
use comfy_table::{Cell, Table, presets};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::error::CliError;

/// How a command prints: human text (the default) or JSON (`--json`).
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// Print JSON documents instead of tables.
    pub json: bool,
}

impl Output {
    /// Prints `value` as pretty JSON on stdout.
    pub fn json<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), CliError> {
        // Serialised first, so that a closed pipe surfaces as the I/O error it is.
        let text = serde_json::to_string_pretty(value)?;
        writeln!(std::io::stdout().lock(), "{text}")?;
        Ok(())
    }

    /// Prints text on stdout, each line without trailing blanks (tables pad their last column).
    pub fn text(&self, text: &str) -> Result<(), CliError> {
        let mut stdout = std::io::stdout().lock();
        for line in text.lines() {
            writeln!(stdout, "{}", line.trim_end())?;
        }
        Ok(())
    }

    /// Prints a table on stdout, or `empty` when it has no row.
    pub fn table(&self, table: &Table, empty: &str) -> Result<(), CliError> {
        if table.row_count() == 0 {
            self.text(empty)
        } else {
            self.text(&table.to_string())
        }
    }
}

/// A borderless table with an upper-case header row: aligned columns that read like `ps` or
/// `kubectl get`, easy to `grep` and `awk`.
pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    table.set_header(header.iter().map(|title| Cell::new(title.to_uppercase())));
    pad(&mut table);
    table
}

/// `key  value` lines (a detail view), aligned like a table without a header.
pub fn key_values(pairs: Vec<(&str, String)>) -> Table {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    for (key, value) in pairs {
        table.add_row([key.to_owned(), value]);
    }
    pad(&mut table);
    table
}

/// Two blanks between columns and none before the first, so that lines start at the margin.
fn pad(table: &mut Table) {
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
}

/// An instant in tables: UTC to the second.
pub fn time(instant: DateTime<Utc>) -> String {
    instant.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// An optional instant in tables (`-` when absent).
pub fn opt_time(instant: Option<DateTime<Utc>>) -> String {
    instant.map_or_else(|| "-".to_owned(), time)
}

/// An instant in audit tables (attempts, events, stages): UTC to the millisecond, since
/// steps of one run are often less than a second apart.
pub fn time_ms(instant: DateTime<Utc>) -> String {
    instant.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

/// An optional instant in audit tables (`-` when absent).
pub fn opt_time_ms(instant: Option<DateTime<Utc>>) -> String {
    instant.map_or_else(|| "-".to_owned(), time_ms)
}

/// An instant in detail views: UTC to the millisecond, as stored.
pub fn precise_time(instant: DateTime<Utc>) -> String {
    instant.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
}

/// Seconds as measured by the audit layer (`-` when the attempt is still open).
pub fn seconds(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| "-".to_owned(), |seconds| format!("{seconds:.3}s"))
}

/// The length of `ended − started` in seconds, `None` while open.
pub fn elapsed(started: DateTime<Utc>, ended: Option<DateTime<Utc>>) -> Option<f64> {
    ended.map(|ended| {
        ended
            .timestamp_millis()
            .saturating_sub(started.timestamp_millis())
            .max(0) as f64
            / 1000.0
    })
}

/// A configured duration (a timeout, a retry interval) in humantime's form (`1m 30s`).
pub fn duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// An optional value in tables (`-` when absent).
pub fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| value.to_string())
}

/// `text` cut to `max` characters with an ellipsis, on one line: error texts can be long and
/// hold newlines, which would break a table row.
pub fn clip(text: &str, max: usize) -> String {
    let single_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if single_line.chars().count() <= max {
        single_line
    } else {
        let mut clipped: String = single_line.chars().take(max.saturating_sub(1)).collect();
        clipped.push('…');
        clipped
    }
}

/// A progress bar on stderr for `total` steps (a spinner when the total is unknown), hidden
/// when stderr is not a terminal so that logs and pipes stay clean.
pub fn progress(total: Option<u64>, message: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        ),
        None => {
            let spinner = ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            spinner.enable_steady_tick(Duration::from_millis(120));
            spinner
        }
    };
    bar.set_message(message);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_on_one_line() {
        assert_eq!(clip("boom", 10), "boom");
        assert_eq!(clip("line one\nline two", 40), "line one line two");
        assert_eq!(clip("abcdefghijkl", 5), "abcd…");
    }

    #[test]
    fn elapsed_is_never_negative_and_open_attempts_have_none() {
        let start = DateTime::from_timestamp_millis(10_000).unwrap_or_default();
        let end = DateTime::from_timestamp_millis(11_500).unwrap_or_default();
        assert_eq!(elapsed(start, Some(end)), Some(1.5));
        assert_eq!(elapsed(end, Some(start)), Some(0.0));
        assert_eq!(elapsed(start, None), None);
    }

    #[test]
    fn tables_have_upper_case_headers_and_no_borders() {
        let mut rows = table(&["id", "name"]);
        rows.add_row(["1", "ok"]);
        let text = rows.to_string();
        let header = text.lines().next().unwrap_or_default();
        assert!(header.starts_with("ID"), "{text}");
        assert!(header.contains("NAME"), "{text}");
        assert!(!text.contains('|') && !text.contains('+'), "{text}");
    }

    #[test]
    fn key_values_align_the_values() {
        let text = key_values(vec![("id", "1".into()), ("status", "pending".into())]).to_string();
        let columns: Vec<usize> = text
            .lines()
            .map(|line| {
                line.find(|c: char| c.is_ascii_digit() || c == 'p')
                    .unwrap_or(0)
            })
            .collect();
        assert_eq!(columns.len(), 2, "{text}");
        assert_eq!(columns[0], columns[1], "{text}");
    }
}
