//! The stable-session comparison: the same gateway, the same concurrency and the
//! same duration, once with stateless requests and once with every request
//! keyed to a stable session (`user`), under a small context budget so the
//! sessions pass it (and are compacted) within the run. Reported per interval,
//! so a stateful path that slows down as transcripts grow shows as a falling row.

use crate::load::{nanos, Client, Target};
use anyhow::{Context, Result};
use bytes::Bytes;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shape of one timed run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimedSpec {
    /// Every request carries a `user` (a stable session) when true.
    pub(crate) stateful: bool,
    pub(crate) concurrency: usize,
    /// Distinct sessions, dealt out to the workers so no two workers share one
    /// (a shared session would measure its FIFO queue, not the store).
    pub(crate) users: usize,
    /// Words in each request's user message (1: `hi`, as in the other runs).
    pub(crate) turn_words: usize,
    /// How long one run lasts (one interval of the table).
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) max_errors: usize,
}

/// One interval of a timed run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Interval {
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    /// Successful requests' latency (ns), sorted.
    pub(crate) latency: Vec<u64>,
    /// CPU ticks gateway-http and agent-svc used meanwhile (0: not counted).
    pub(crate) pair_cpu_ticks: u64,
}

/// The outcome of one timed run.
pub(crate) struct TimedResult {
    pub(crate) spec: TimedSpec,
    pub(crate) intervals: Vec<Interval>,
    pub(crate) first_error: Option<String>,
}

impl TimedResult {
    pub(crate) fn errors(&self) -> u64 {
        self.intervals.iter().map(|i| i.errors).sum()
    }

    /// Appends a later run of the same spec (its intervals follow these).
    pub(crate) fn extend(&mut self, later: TimedResult) {
        self.intervals.extend(later.intervals);
        if self.first_error.is_none() {
            self.first_error = later.first_error;
        }
    }

    /// The pair's CPU time per successful request (µs), over all intervals.
    fn cpu_us_per_req(&self, clk_tck: u64) -> Option<f64> {
        let ok: u64 = self.intervals.iter().map(|i| i.ok).sum();
        let ticks: u64 = self.intervals.iter().map(|i| i.pair_cpu_ticks).sum();
        us_per_req(ticks, ok, clk_tck)
    }

    fn rps(&self, i: &Interval) -> f64 {
        i.ok as f64 / self.spec.interval.as_secs_f64()
    }

    fn total_rps(&self) -> f64 {
        let ok: u64 = self.intervals.iter().map(|i| i.ok).sum();
        ok as f64 / (self.spec.interval.as_secs_f64() * self.intervals.len().max(1) as f64)
    }
}

/// A user message of `words` words (`hi` for one): plain ASCII words, so the
/// bytes per token are the estimator's and nothing needs escaping.
fn turn_text(words: usize) -> String {
    const VOCABULARY: [&str; 8] = ["please", "check", "the", "order", "status", "for", "account", "today"];
    if words <= 1 {
        return "hi".into();
    }
    let picked: Vec<&str> = (0..words).map(|i| VOCABULARY[i % VOCABULARY.len()]).collect();
    picked.join(" ")
}

/// A request body: stateless, or keyed (`user`) to stable session `k`.
fn body(session: Option<usize>, words: usize) -> Bytes {
    let user = session.map(|k| format!(r#""user":"bench-user-{k}","#)).unwrap_or_default();
    let text = turn_text(words);
    Bytes::from(format!(r#"{{"model":"openclaw",{user}"messages":[{{"role":"user","content":"{text}"}}]}}"#))
}

/// Runs C workers back to back for one interval; a request that ends after it
/// is not counted. `pair_cpu_ticks` is the caller's to fill in.
pub(crate) async fn run_timed(target: Arc<Target>, spec: TimedSpec) -> Result<TimedResult> {
    let deadline = Instant::now() + spec.interval;
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut handles = Vec::with_capacity(spec.concurrency);
    for w in 0..spec.concurrency {
        let bodies: Vec<Bytes> = if spec.stateful {
            (w..spec.users.max(spec.concurrency))
                .step_by(spec.concurrency)
                .map(|k| body(Some(k), spec.turn_words))
                .collect()
        } else {
            vec![body(None, spec.turn_words)]
        };
        let (t, errors) = (target.clone(), errors.clone());
        handles.push(tokio::spawn(async move {
            let mut client = Client::new();
            let mut done: Vec<Result<u64, String>> = Vec::new();
            let mut turn = 0usize;
            while Instant::now() < deadline
                && errors.load(std::sync::atomic::Ordering::Relaxed) < spec.max_errors
            {
                let body = &bodies[turn % bodies.len()];
                turn += 1;
                let t0 = Instant::now();
                let r = client.send(&t, body, false, spec.timeout).await;
                let end = Instant::now();
                if end >= deadline {
                    break;
                }
                match r {
                    Ok(_) => done.push(Ok(nanos(end - t0))),
                    Err(e) => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        done.push(Err(format!("{e:#}")));
                    }
                }
            }
            done
        }));
    }
    let mut i = Interval::default();
    let mut first_error = None;
    for h in handles {
        for r in h.await.context("a session load worker panicked")? {
            match r {
                Ok(ns) => {
                    i.ok += 1;
                    i.latency.push(ns);
                }
                Err(e) => {
                    i.errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    i.latency.sort_unstable();
    Ok(TimedResult { spec, intervals: vec![i], first_error })
}

/// CPU µs per request from `ticks` over `ok` requests (none when either is 0).
fn us_per_req(ticks: u64, ok: u64, clk_tck: u64) -> Option<f64> {
    (ok > 0 && ticks > 0).then(|| ticks as f64 * 1e6 / clk_tck.max(1) as f64 / ok as f64)
}

fn p50_ms(sorted: &[u64]) -> String {
    crate::report::pct_ms(sorted, 50.0).map_or("-".into(), |v| format!("{v:.1}"))
}

/// The per-interval table and the two targets: stateful ≥ 50% of stateless,
/// and the stateful last interval within 10% of its first. Interval n of each
/// kind ran back to back (stateless first), so a row compares the two at
/// about the same machine speed.
pub(crate) fn render(
    stateless: &TimedResult,
    stateful: &TimedResult,
    store: &str,
    budget: u32,
    clk_tck: u64,
) -> String {
    let mut o = String::new();
    let s = stateful.spec;
    let _ = writeln!(
        o,
        "\nstable sessions vs stateless (gateway, JSON, c={}, {} sessions, {}-word turns, store {store}, \
         contextTokens {budget}, {} s intervals, stateless and stateful taking turns)",
        s.concurrency,
        s.users.max(s.concurrency),
        s.turn_words.max(1),
        s.interval.as_secs()
    );
    let _ = writeln!(
        o,
        "{:<10} {:>16} {:>9} {:>9} {:>16} {:>9} {:>9} {:>7}",
        "interval", "stateless req/s", "p50 ms", "cpu us", "stateful req/s", "p50 ms", "cpu us", "ratio"
    );
    let cpu = |i: &Interval| {
        us_per_req(i.pair_cpu_ticks, i.ok, clk_tck).map_or("-".to_owned(), |us| format!("{us:.0}"))
    };
    for (n, (a, b)) in stateless.intervals.iter().zip(&stateful.intervals).enumerate() {
        let (ra, rb) = (stateless.rps(a), stateful.rps(b));
        let _ = writeln!(
            o,
            "{:<10} {:>16.0} {:>9} {:>9} {:>16.0} {:>9} {:>9} {:>7.2}",
            format!("{}-{} s", n as u64 * s.interval.as_secs(), (n as u64 + 1) * s.interval.as_secs()),
            ra,
            p50_ms(&a.latency),
            cpu(a),
            rb,
            p50_ms(&b.latency),
            cpu(b),
            rb / ra.max(1e-9)
        );
    }
    if let (Some(a), Some(b)) = (stateless.cpu_us_per_req(clk_tck), stateful.cpu_us_per_req(clk_tck)) {
        let _ = writeln!(
            o,
            "gateway-http + agent-svc CPU per request: {a:.0} us stateless, {b:.0} us stateful ({:.2}x)",
            b / a.max(1e-9)
        );
    }
    let ratio = stateful.total_rps() / stateless.total_rps().max(1e-9);
    let clean = stateless.errors() == 0 && stateful.errors() == 0;
    let mark = |ok: bool| if ok && clean { "PASS" } else { "MISS" };
    let _ = writeln!(o, "{}  stateful throughput >= 50% of stateless: {:.2}", mark(ratio >= 0.5), ratio);
    if let (Some(first), Some(last)) = (stateful.intervals.first(), stateful.intervals.last()) {
        let drift = stateful.rps(last) / stateful.rps(first).max(1e-9);
        let _ = writeln!(
            o,
            "{}  stateful last interval within 10% of the first: {:.2}",
            mark(stateful.intervals.len() > 1 && (0.9..=1.1).contains(&drift)),
            drift
        );
    }
    for (what, r) in [("stateless", stateless), ("stateful", stateful)] {
        if let Some(e) = &r.first_error {
            let _ = writeln!(o, "{what}: {} failed requests; first: {e}", r.errors());
        }
    }
    o
}
