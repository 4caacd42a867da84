//! The printed tables: latency and throughput per run, CPU and context
//! switches per request, memory, errors, and the PASS/MISS targets.

use crate::load::{Route, RunResult};
use crate::Cli;
use std::fmt::Write as _;
use std::time::Duration;

/// Nearest-rank percentile of sorted nanoseconds, in milliseconds.
pub(crate) fn pct_ms(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1e6)
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.3}"))
}

fn delta_ms(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? - b?)
}

/// Everything measured, ready to print.
pub(crate) struct Report<'a> {
    pub(crate) cli: &'a Cli,
    pub(crate) clk_tck: u64,
    /// CPUs online (the unit of the machine-wide `/proc/stat` figures).
    pub(crate) online_cpus: usize,
    /// Process names, in the order of the CPU and RSS vectors.
    pub(crate) names: Vec<&'static str>,
    pub(crate) idle_rss: Vec<u64>,
    pub(crate) peak_rss: Vec<u64>,
    pub(crate) runs: Vec<RunResult>,
}

/// One PASS/MISS line.
struct Check {
    what: String,
    value: String,
    pass: Option<bool>,
}

impl Report<'_> {
    fn find(&self, route: Route, stream: bool, c: usize) -> Option<&RunResult> {
        self.runs.iter().find(|r| r.route == route && r.spec.stream == stream && r.spec.concurrency == c)
    }

    fn proc_index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| *n == name)
    }

    /// CPU µs/request of gateway-http + agent-svc in a run.
    fn pair_cpu(&self, r: &RunResult) -> Option<f64> {
        let g = self.proc_index("gateway-http")?;
        let a = self.proc_index("agent-svc")?;
        Some(r.us_per_req(r.cpu_ticks[g] + r.cpu_ticks[a], self.clk_tck))
    }

    pub(crate) fn render(&self) -> String {
        let mut o = String::new();
        let usable = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let cores = if usable == self.online_cpus {
            format!("{usable} CPUs")
        } else {
            format!("{usable} of {} CPUs usable (affinity)", self.online_cpus)
        };
        let _ = writeln!(
            o,
            "\nopenclaw gateway benchmark: {cores}, 127.0.0.1, HTTP/1.1 keep-alive, one connection per worker, \
             {} warm-up requests per run, CLK_TCK {}",
            self.cli.warmup, self.clk_tck
        );
        let _ = writeln!(o, "direct = POST to mock-upstream; gateway = POST to gateway-http (→ agent-svc gRPC → mock-upstream, SSE upstream)");

        for stream in [false, true] {
            let runs: Vec<&RunResult> = self.runs.iter().filter(|r| r.spec.stream == stream).collect();
            if runs.is_empty() {
                continue;
            }
            let latency_heads: &[&str] = if stream {
                let _ = writeln!(o, "\nStreaming (SSE; ttfb = time to the first content delta; ms)");
                &["ttfb p50", "ttfb p99", "p50", "p99", "+ttfb p99", "+p99"]
            } else {
                let _ = writeln!(
                    o,
                    "\nNon-streaming (JSON; latency in ms; + = gateway minus direct at the same concurrency)"
                );
                &["p50", "p99", "+p50", "+p99"]
            };
            let mut head =
                format!("{:<8} {:>5} {:>8} {:>6} {:>9}", "path", "conc", "requests", "errors", "req/s");
            for h in latency_heads {
                let _ = write!(head, " {h:>9}");
            }
            let _ = writeln!(o, "{head}");
            for r in &runs {
                let direct = (r.route == Route::Gateway)
                    .then(|| self.find(Route::Direct, stream, r.spec.concurrency))
                    .flatten();
                let d = |f: fn(&RunResult) -> Option<f64>| direct.and_then(|dr| delta_ms(f(r), f(dr)));
                let latencies = if stream {
                    vec![
                        pct_ms(&r.ttfb, 50.0),
                        pct_ms(&r.ttfb, 99.0),
                        pct_ms(&r.total, 50.0),
                        pct_ms(&r.total, 99.0),
                        d(|x| pct_ms(&x.ttfb, 99.0)),
                        d(|x| pct_ms(&x.total, 99.0)),
                    ]
                } else {
                    vec![
                        pct_ms(&r.total, 50.0),
                        pct_ms(&r.total, 99.0),
                        d(|x| pct_ms(&x.total, 50.0)),
                        d(|x| pct_ms(&x.total, 99.0)),
                    ]
                };
                let mut line = format!(
                    "{:<8} {:>5} {:>8} {:>6} {:>9.0}",
                    r.route.label(),
                    r.spec.concurrency,
                    r.attempted(),
                    r.errors,
                    r.rps()
                );
                for v in latencies {
                    let _ = write!(line, " {:>9}", ms(v));
                }
                let _ = writeln!(o, "{line}");
            }
        }

        // CPU per request.
        let cpus = self.online_cpus as f64;
        let _ = writeln!(
            o,
            "\nCPU time per request (µs; utime+stime over the measured phase ÷ requests; 1 tick = {} µs). \
             ours/other/steal: % of {} CPUs used by these four processes / by anything else / stolen by the host \
             (approximate for runs under 1 s)",
            1_000_000 / self.clk_tck,
            self.online_cpus
        );
        let mut head = format!("{:<18}", "run");
        for n in &self.names {
            let _ = write!(head, " {n:>13}");
        }
        if self.pair_index_ok() {
            let _ = write!(head, " {:>9}", "gw+agent");
        }
        let _ = write!(head, " {:>13} {:>5} {:>6} {:>6}", "bench(client)", "ours", "other", "steal");
        let _ = writeln!(o, "{head}");
        for r in &self.runs {
            let mut line = format!("{:<18}", r.label());
            for t in &r.cpu_ticks {
                let _ = write!(line, " {:>13.1}", r.us_per_req(*t, self.clk_tck));
            }
            if let Some(v) = self.pair_cpu(r) {
                let _ = write!(line, " {v:>9.1}");
            }
            let capacity = self.clk_tck as f64 * r.wall.as_secs_f64().max(1e-9) * cpus / 100.0;
            let ours = r.cpu_ticks.iter().sum::<u64>() + r.self_ticks;
            let other = r.machine.busy.saturating_sub(ours);
            let _ = write!(
                line,
                " {:>13.1} {:>4.0}% {:>5.0}% {:>5.0}%",
                r.us_per_req(r.self_ticks, self.clk_tck),
                ours as f64 / capacity,
                other as f64 / capacity,
                r.machine.steal as f64 / capacity
            );
            let _ = writeln!(o, "{line}");
        }

        let disturbed: Vec<String> = self
            .runs
            .iter()
            .filter(|r| {
                // Under a second the tick granularity alone can make 10%.
                let capacity = self.clk_tck as f64 * r.wall.as_secs_f64().max(1e-9) * cpus / 100.0;
                let ours = r.cpu_ticks.iter().sum::<u64>() + r.self_ticks;
                r.wall >= Duration::from_secs(1)
                    && (r.machine.busy.saturating_sub(ours) + r.machine.steal) as f64 / capacity > 10.0
            })
            .map(RunResult::label)
            .collect();
        if !disturbed.is_empty() {
            let _ = writeln!(
                o,
                "WARNING: other load (or steal) above 10% of the CPUs during: {}; rerun on a quiet machine",
                disturbed.join(", ")
            );
        }

        // Context switches per request.
        let _ = writeln!(o, "\nContext switches per request (voluntary + involuntary, all threads)");
        let mut head = format!("{:<18}", "run");
        for n in &self.names {
            let _ = write!(head, " {n:>13}");
        }
        let _ = writeln!(o, "{head}");
        for r in &self.runs {
            let mut line = format!("{:<18}", r.label());
            for c in &r.ctx_switches {
                let _ = write!(line, " {:>13.2}", *c as f64 / r.attempted().max(1) as f64);
            }
            let _ = writeln!(o, "{line}");
        }

        // Memory.
        let _ = writeln!(o, "\nMemory (MB = 10^6 bytes)");
        let _ = writeln!(o, "{:<14} {:>18} {:>18}", "process", "idle RSS (VmRSS)", "peak RSS (VmHWM)");
        for (i, n) in self.names.iter().enumerate() {
            let _ = writeln!(
                o,
                "{:<14} {:>18.1} {:>18.1}",
                n,
                kb_to_mb(self.idle_rss[i]),
                kb_to_mb(self.peak_rss[i])
            );
        }

        // Errors.
        for r in self.runs.iter().filter(|r| r.errors > 0) {
            let _ = writeln!(
                o,
                "\n{}: {} errors{}, first: {}",
                r.label(),
                r.errors,
                if r.attempted() < r.spec.requests as u64 { " (run stopped early)" } else { "" },
                r.first_error.as_deref().unwrap_or("?")
            );
        }

        // Targets.
        let _ = writeln!(o, "\nTargets (non-streaming short answers, this machine)");
        let _ = writeln!(o, "{:<52} {:>14}  result", "target", "measured");
        for c in self.targets() {
            let verdict = match c.pass {
                Some(true) => "PASS",
                Some(false) => "MISS",
                None => "n/a",
            };
            let _ = writeln!(o, "{:<52} {:>14}  {verdict}", c.what, c.value);
        }
        o
    }

    fn pair_index_ok(&self) -> bool {
        self.proc_index("gateway-http").is_some() && self.proc_index("agent-svc").is_some()
    }

    /// The targets (issue 10): at c=1, ≤ 0.5 ms added p99 and gateway + agent-svc CPU
    /// ≤ 200 µs/request; at c=64, ≥ 0.25× the direct upstream's requests/s in the same run
    /// and CPU ≤ 60 µs/request (non-streaming runs); idle RSS ≤ 40 MB per service.
    /// A run with errors never passes.
    fn targets(&self) -> Vec<Check> {
        let mut out = Vec::new();
        let clean = |r: &RunResult| r.errors == 0;
        let missing = |what: String, why: &str| Check { what, value: why.into(), pass: None };
        let what = "p99 added latency at c=1 <= 0.5 ms".to_owned();
        out.push(match self.find(Route::Gateway, false, 1).zip(self.find(Route::Direct, false, 1)) {
            Some((g, d)) => {
                let v = delta_ms(pct_ms(&g.total, 99.0), pct_ms(&d.total, 99.0));
                Check {
                    what,
                    value: v.map_or("-".into(), |v| format!("{v:.3} ms")),
                    pass: v.map(|v| v <= 0.5 && clean(g) && clean(d)),
                }
            }
            None => missing(what, "no c=1 run"),
        });
        let what = "gateway req/s at c=64 >= 0.25x direct (same run)".to_owned();
        out.push(match self.find(Route::Gateway, false, 64).zip(self.find(Route::Direct, false, 64)) {
            Some((g, d)) if d.rps() > 0.0 => {
                let ratio = g.rps() / d.rps();
                Check {
                    what,
                    value: format!("{ratio:.3}x"),
                    pass: Some(ratio >= 0.25 && clean(g) && clean(d)),
                }
            }
            _ => missing(what, "no c=64 run"),
        });
        let gw_runs: Vec<&RunResult> =
            self.runs.iter().filter(|r| r.route == Route::Gateway && !r.spec.stream).collect();
        if gw_runs.is_empty() {
            out.push(missing("gateway + agent-svc CPU per request".into(), "not run"));
        }
        for r in gw_runs {
            let c = r.spec.concurrency;
            let max = if c == 1 { 200.0 } else { 60.0 };
            let v = self.pair_cpu(r);
            out.push(Check {
                what: format!("gateway + agent-svc CPU <= {max:.0} µs/request (c={c})"),
                value: v.map_or("-".into(), |v| format!("{v:.1} µs")),
                pass: v.map(|v| v <= max && clean(r)),
            });
        }
        for name in ["gateway-http", "agent-svc"] {
            let what = format!("idle RSS {name} <= 40 MB");
            out.push(match self.proc_index(name) {
                Some(i) => {
                    let mb = kb_to_mb(self.idle_rss[i]);
                    Check { what, value: format!("{mb:.1} MB"), pass: Some(mb <= 40.0) }
                }
                None => Check { what, value: "not run".into(), pass: None },
            });
        }
        out
    }
}

fn kb_to_mb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / 1e6
}
