//! The progress line of a restore on a terminal.
//!
//! Why a file of its own: a restore of a large database takes minutes, and
//! a silent terminal looks like a hang. On a terminal (stderr is a TTY), a
//! restore running longer than [`SHOW_AFTER`] shows one line, rewritten in
//! place at most four times a second: bytes done of the total, MB/s and the
//! estimated time left; it is cleared when the restore ends, so the summary
//! line is all that stays. Nothing is written when stderr is not a terminal
//! (logs, pipes, CI). The line's text comes from [`format_line`], a pure
//! function the unit tests check; the terminal condition itself cannot be
//! exercised in CI.

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

/// No line for restores that finish sooner.
pub const SHOW_AFTER: Duration = Duration::from_secs(2);
/// Minimum time between two redraws.
const REDRAW: Duration = Duration::from_millis(250);

/// The progress text (without the carriage return): `db: 12.3/45.6 MB
/// (27 %), 98.7 MB/s, ETA 0:05`.
pub fn format_line(db: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let mb = |b: u64| b as f64 / 1e6;
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let pct = if total > 0 {
        (done.min(total) as f64 * 100.0 / total as f64).floor() as u64
    } else {
        0
    };
    let eta = if rate > 0.0 && total >= done {
        let left = ((total - done) as f64 / rate).ceil() as u64;
        format!("ETA {}:{:02}", left / 60, left % 60)
    } else {
        "ETA -".to_string()
    };
    format!(
        "{db}: {:.1}/{:.1} MB ({pct} %), {:.1} MB/s, {eta}",
        mb(done),
        mb(total),
        rate / 1e6
    )
}

/// The line's state; a no-op unless enabled and stderr is a terminal.
pub struct Progress {
    enabled: bool,
    start: Instant,
    last: Option<Instant>,
    total: u64,
    done: u64,
    db: String,
    shown: bool,
}

impl Progress {
    /// A progress line for `db` with `total` bytes to fetch; shown only if
    /// `requested` and stderr is a terminal.
    pub fn new(requested: bool, db: &str, total: u64) -> Progress {
        Progress {
            enabled: requested && io::stderr().is_terminal(),
            start: Instant::now(),
            last: None,
            total,
            done: 0,
            db: db.to_string(),
            shown: false,
        }
    }

    /// `bytes` more were fetched and applied.
    pub fn add(&mut self, bytes: u64) {
        self.done += bytes;
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let elapsed = now.duration_since(self.start);
        if elapsed < SHOW_AFTER || self.last.is_some_and(|l| now.duration_since(l) < REDRAW) {
            return;
        }
        self.last = Some(now);
        let line = format_line(&self.db, self.done, self.total, elapsed);
        let mut err = io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{line}");
        let _ = err.flush();
        self.shown = true;
    }

    /// Clear the line (if it was shown).
    pub fn finish(&mut self) {
        if self.shown {
            let mut err = io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
            self.shown = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line() {
        let l = format_line("app.db", 50_000_000, 200_000_000, Duration::from_secs(2));
        assert_eq!(l, "app.db: 50.0/200.0 MB (25 %), 25.0 MB/s, ETA 0:06");
        let l = format_line("a", 0, 10, Duration::ZERO);
        assert_eq!(l, "a: 0.0/0.0 MB (0 %), 0.0 MB/s, ETA -");
        // Minutes, and a rounding up of the time left.
        let l = format_line("b", 1_000_000, 1_000_000_000, Duration::from_secs(1));
        assert_eq!(l, "b: 1.0/1000.0 MB (0 %), 1.0 MB/s, ETA 16:39");
        let l = format_line("c", 7, 7, Duration::from_secs(3));
        assert!(l.ends_with("(100 %), 0.0 MB/s, ETA 0:00"), "{l}");
        // More than planned (an object grew after the listing): no panic.
        let l = format_line("d", 9, 7, Duration::from_secs(3));
        assert!(l.contains("(100 %)") && l.ends_with("ETA -"), "{l}");
    }
}
