//! The samples, the plateau rule and the tables.

use crate::load::{Kind, Tally};
use std::fmt::Write as _;
use std::time::Duration;

/// One reading of every process, and the request counts at that moment.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Time since the load started.
    pub at: Duration,
    /// `VmRSS` per process, in kB (same order as the processes).
    pub rss_kb: Vec<u64>,
    /// Open file descriptors per process.
    pub fds: Vec<u64>,
    /// Requests done and failed so far.
    pub tally: Tally,
}

/// The plateau rule applied to one series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plateau {
    /// The largest value of the middle third.
    pub middle_max: u64,
    /// The largest value of the last third.
    pub last_max: u64,
    /// How far the last third may go above the middle third's max.
    pub slack: u64,
}

impl Plateau {
    /// The rule: the last third's max is at most the middle third's max plus the slack.
    pub fn holds(&self) -> bool {
        self.last_max <= self.middle_max.saturating_add(self.slack)
    }
}

/// The fewest samples the rule accepts (two in each third).
pub const MIN_SAMPLES: usize = 6;

/// Splits `series` (one value per sample, in time order) into thirds: the first
/// (warm-up) is ignored, the middle and last are compared. `slack` gives the
/// allowed growth from the middle third's max. `None` with fewer than
/// [`MIN_SAMPLES`] values.
pub fn plateau(series: &[u64], slack: impl Fn(u64) -> u64) -> Option<Plateau> {
    let n = series.len();
    if n < MIN_SAMPLES {
        return None;
    }
    let (a, b) = (n / 3, 2 * n / 3);
    let middle_max = series[a..b].iter().copied().max()?;
    let last_max = series[b..].iter().copied().max()?;
    Some(Plateau { middle_max, last_max, slack: slack(middle_max) })
}

/// The RSS slack: `pct` % of the middle third's max, at least `min_kb`.
pub fn rss_slack(pct: u64, min_kb: u64) -> impl Fn(u64) -> u64 {
    move |middle_max| (middle_max * pct / 100).max(min_kb)
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// The per-sample table: time, RSS (MB) and open fds of each process, requests
/// ended as expected and failed in the interval before the sample.
pub fn samples_table(names: &[&str], idle: &Sample, samples: &[Sample]) -> String {
    let heads: Vec<String> = names.iter().map(|n| format!("{n} RSS MB / fds")).collect();
    let mut out = String::new();
    let _ = write!(out, "{:>6}", "t (s)");
    for h in &heads {
        let _ = write!(out, " | {h}");
    }
    let _ = writeln!(out, " | {:>8} {:>6}", "requests", "failed");
    let mut prev = idle.tally;
    for s in std::iter::once(idle).chain(samples) {
        let _ = write!(out, "{:>6}", s.at.as_secs());
        for (i, h) in heads.iter().enumerate() {
            let rss = s.rss_kb.get(i).copied().unwrap_or(0);
            let fds = s.fds.get(i).copied().unwrap_or(0);
            let cell = format!("{:.1} / {fds}", mb(rss));
            let _ = write!(out, " | {cell:>w$}", w = h.len());
        }
        let done = s.tally.done_total().saturating_sub(prev.done_total());
        let failed = s.tally.failed_total().saturating_sub(prev.failed_total());
        let _ = writeln!(out, " | {done:>8} {failed:>6}");
        prev = s.tally;
    }
    out
}

/// The per-kind totals.
pub fn kinds_table(t: &Tally, secs: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<12} {:>9} {:>7}", "kind", "done", "failed");
    for (i, k) in Kind::ALL.iter().enumerate() {
        let _ = writeln!(out, "{:<12} {:>9} {:>7}", k.label(), t.done[i], t.failed[i]);
    }
    let _ = writeln!(
        out,
        "{:<12} {:>9} {:>7}   ({:.0} requests/s)",
        "all",
        t.done_total(),
        t.failed_total(),
        t.done_total() as f64 / secs.max(1.0)
    );
    out
}

/// One line of the plateau verdict.
pub fn plateau_line(what: &str, p: &Plateau, unit_kb: bool) -> String {
    let verdict = if p.holds() { "plateau" } else { "GROWING" };
    if unit_kb {
        format!(
            "{what:<24} middle-third max {:>7.1} MB, last-third max {:>7.1} MB (allowed {:>7.1}): {verdict}",
            mb(p.middle_max),
            mb(p.last_max),
            mb(p.middle_max + p.slack)
        )
    } else {
        format!(
            "{what:<24} middle-third max {:>7}, last-third max {:>7} (allowed {:>7}): {verdict}",
            p.middle_max,
            p.last_max,
            p.middle_max + p.slack
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(s: u64) -> impl Fn(u64) -> u64 {
        move |_| s
    }

    #[test]
    fn a_flat_series_after_warm_up_is_a_plateau() {
        // Growth during the warm-up third does not count.
        let p = plateau(&[10, 30, 50, 60, 61, 60, 62, 61, 60], fixed(0)).expect("enough samples");
        assert_eq!((p.middle_max, p.last_max), (61, 62));
        assert!(!p.holds(), "62 > 61 with no slack");
        let p = plateau(&[10, 30, 50, 60, 61, 60, 62, 61, 60], fixed(1)).expect("enough samples");
        assert!(p.holds());
    }

    #[test]
    fn steady_growth_is_not_a_plateau() {
        let series: Vec<u64> = (0..30).map(|i| 20_000 + i * 500).collect();
        let p = plateau(&series, rss_slack(10, 4096)).expect("enough samples");
        assert_eq!(p.middle_max, 20_000 + 19 * 500);
        assert_eq!(p.last_max, 20_000 + 29 * 500);
        assert!(!p.holds(), "{p:?}");
    }

    #[test]
    fn rss_slack_is_a_share_with_a_floor() {
        assert_eq!(rss_slack(10, 4096)(100_000), 10_000);
        assert_eq!(rss_slack(10, 4096)(20_000), 4096);
    }

    #[test]
    fn too_few_samples_give_no_verdict() {
        assert_eq!(plateau(&[1, 2, 3, 4, 5], fixed(0)), None);
        assert!(plateau(&[1, 1, 1, 1, 1, 1], fixed(0)).is_some_and(|p| p.holds()));
    }
}
