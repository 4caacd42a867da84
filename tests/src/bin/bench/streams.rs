//! The open-streams phase (`--streams N`): N streaming requests held open
//! through the pair at the same time, each on its own client connection, while
//! the mock trickles a content delta into every one of them (`[hold:MS]`, see
//! `mock-upstream`) and the clients read. It answers three questions: does
//! every stream get through (opened, ticked, released, complete and well
//! formed), what memory do the services hold per open stream, and are requests
//! on other connections still answered at their usual latency meanwhile.
//!
//! The phase: probes before (sequential JSON requests on one connection, the
//! baseline); N streams opened, at most `open_concurrency` still waiting for
//! their first delta at a time (the listen backlogs are not flooded); once every
//! one has its first delta, all N are open end to end: the RSS and open files of
//! each process are read, then the probes again, with the CPU each process
//! spent holding the streams; then `POST /_release` to the mock, every stream
//! must end with the whole answer and `[DONE]`, and the RSS is read once more.

use crate::load::{nanos, Chunk, Client, Target};
use crate::report::pct_ms;
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use e2e::procfs::{cpu_ticks, open_fds, status_kb};
use e2e::sse::{SseItem, SseParser};
use http_body_util::BodyExt;
use hyper::StatusCode;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

/// The answer after the ticks (the mock's usual one).
const ANSWER: &str = "Hello from the mock.";
/// The target for both services' RSS together with every stream open.
const RSS_TARGET_MB: f64 = 300.0;
/// "Normal latency" for the probes with every stream open: a p99 at most this
/// many times the p99 before.
const LATENCY_FACTOR: f64 = 2.0;
/// Pause between two probe requests: steady, light traffic on another connection.
const PROBE_PAUSE: Duration = Duration::from_millis(10);

/// The shape of the phase.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamsSpec {
    pub(crate) streams: usize,
    /// The mock's pause between two deltas of a held stream.
    pub(crate) tick: Duration,
    /// Streams opening (connected, not yet at their first delta) at once.
    pub(crate) open_concurrency: usize,
    /// Probe requests before and during the hold.
    pub(crate) probes: usize,
    /// Timeout of one probe, and of a stream's first delta.
    pub(crate) timeout: Duration,
    /// Timeout for opening all streams, and for all of them to end after the release.
    pub(crate) phase_timeout: Duration,
}

/// What one process looked like at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcState {
    pub(crate) rss_kb: u64,
    pub(crate) fds: u64,
}

/// The outcome of the phase.
pub(crate) struct StreamsResult {
    pub(crate) spec: StreamsSpec,
    /// Process names, in the order of every per-process vector below.
    pub(crate) names: Vec<&'static str>,
    pub(crate) before: Vec<ProcState>,
    /// With every stream open (the larger reading of the start and the end of the hold).
    pub(crate) held: Vec<ProcState>,
    /// After every stream ended.
    pub(crate) after: Vec<ProcState>,
    /// CPU ticks per process over the hold (the probes included).
    pub(crate) hold_cpu: Vec<u64>,
    pub(crate) hold_wall: Duration,
    pub(crate) clk_tck: u64,
    pub(crate) opened: usize,
    pub(crate) open_wall: Duration,
    pub(crate) completed: usize,
    pub(crate) failed: usize,
    /// Deltas the streams that completed read in all (ticks and the answer's).
    pub(crate) deltas: u64,
    pub(crate) first_error: Option<String>,
    /// Probe latencies (ns), sorted: before the streams, and with them all open.
    pub(crate) probes_before: Vec<u64>,
    pub(crate) probes_held: Vec<u64>,
    pub(crate) probe_errors: usize,
}

/// What a stream task tells the driver.
enum Signal {
    /// The first delta arrived: open end to end.
    Opened,
    /// It failed before that.
    Failed(String),
}

/// Runs the phase against the gateway; `procs` are (name, pid), the mock first.
pub(crate) async fn run(
    gateway: Arc<Target>,
    mock: SocketAddr,
    procs: &[(&'static str, u32)],
    spec: StreamsSpec,
    clk_tck: u64,
) -> Result<StreamsResult> {
    let pids: Vec<u32> = procs.iter().map(|p| p.1).collect();
    let mut probe_errors = 0;
    let probes_before = probes(&gateway, spec, &mut probe_errors).await;
    let before = states(&pids)?;

    let body = Bytes::from(format!(
        r#"{{"model":"openclaw","stream":true,"messages":[{{"role":"user","content":"[hold:{}] hi"}}]}}"#,
        spec.tick.as_millis()
    ));
    let opening = Arc::new(Semaphore::new(spec.open_concurrency.max(1)));
    // Each task sends exactly one signal: the channel never blocks.
    let (tx, mut rx) = mpsc::channel(spec.streams.max(1));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..spec.streams {
        tasks.spawn(stream(gateway.clone(), body.clone(), opening.clone(), tx.clone(), spec.timeout));
    }
    drop(tx);
    let mut opened = 0;
    let mut open_failures = Vec::new();
    let all_open = tokio::time::timeout(spec.phase_timeout, async {
        while let Some(signal) = rx.recv().await {
            match signal {
                Signal::Opened => opened += 1,
                Signal::Failed(e) => open_failures.push(e),
            }
            if opened + open_failures.len() == spec.streams {
                break;
            }
        }
    })
    .await;
    let open_wall = start.elapsed();
    if all_open.is_err() {
        eprintln!("bench: only {opened} of {} streams opened within {:?}", spec.streams, spec.phase_timeout);
    }

    // Held: every stream that opened is open now (none is released before `/_release`).
    let held_start = states(&pids)?;
    let cpu_start = pids.iter().map(|&p| cpu_ticks(p)).collect::<Result<Vec<_>>>()?;
    let hold_start = Instant::now();
    let probes_held = probes(&gateway, spec, &mut probe_errors).await;
    let hold_wall = hold_start.elapsed();
    let cpu_end = pids.iter().map(|&p| cpu_ticks(p)).collect::<Result<Vec<_>>>()?;
    let held_end = states(&pids)?;
    let held = held_start
        .iter()
        .zip(&held_end)
        .map(|(a, b)| ProcState { rss_kb: a.rss_kb.max(b.rss_kb), fds: a.fds.max(b.fds) })
        .collect();

    release(mock, spec.timeout).await.context("releasing the held streams")?;
    let mut completed = 0;
    let mut failed = 0;
    let mut deltas = 0;
    let mut first_error = open_failures.first().cloned();
    let ends = tokio::time::timeout(spec.phase_timeout, async {
        while let Some(t) = tasks.join_next().await {
            match t {
                Ok(Ok(n)) => {
                    completed += 1;
                    deltas += n;
                }
                Ok(Err(e)) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| format!("a stream task panicked: {e}"));
                }
            }
        }
    })
    .await;
    if ends.is_err() {
        // Still open (held by the mock, or never opened): they count as failed and end here.
        tasks.abort_all();
        failed = spec.streams - completed;
        first_error
            .get_or_insert_with(|| format!("streams still open {:?} after the release", spec.phase_timeout));
    }
    let after = states(&pids)?;
    Ok(StreamsResult {
        spec,
        names: procs.iter().map(|p| p.0).collect(),
        before,
        held,
        after,
        hold_cpu: cpu_end.iter().zip(&cpu_start).map(|(e, s)| e.saturating_sub(*s)).collect(),
        hold_wall,
        clk_tck,
        opened,
        open_wall,
        completed,
        failed,
        deltas,
        first_error,
        probes_before,
        probes_held,
        probe_errors,
    })
}

/// RSS and open files of every process now.
fn states(pids: &[u32]) -> Result<Vec<ProcState>> {
    pids.iter().map(|&p| Ok(ProcState { rss_kb: status_kb(p, "VmRSS")?, fds: open_fds(p)? })).collect()
}

/// `spec.probes` sequential JSON requests on one keep-alive connection, paced
/// by [`PROBE_PAUSE`]; latencies (ns) of the successful ones, sorted.
async fn probes(gateway: &Target, spec: StreamsSpec, errors: &mut usize) -> Vec<u64> {
    let body = Bytes::from_static(crate::load::BODY.as_bytes());
    let mut client = Client::new();
    let mut out = Vec::with_capacity(spec.probes);
    for _ in 0..spec.probes {
        let start = Instant::now();
        match client.send(gateway, &body, false, spec.timeout).await {
            Ok(_) => out.push(nanos(start.elapsed())),
            Err(e) => {
                if *errors == 0 {
                    eprintln!("bench: a probe failed: {e:#}");
                }
                *errors += 1;
            }
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
    out.sort_unstable();
    out
}

/// One held stream on its own connection: signals when its first delta is in,
/// then reads to the end. Returns the number of deltas read; an error unless
/// the content was one or more `"."` ticks then the mock's answer, and the
/// stream ended with `[DONE]`.
async fn stream(
    gateway: Arc<Target>,
    body: Bytes,
    opening: Arc<Semaphore>,
    signal: mpsc::Sender<Signal>,
    timeout: Duration,
) -> Result<u64> {
    let mut check = Check::default();
    let permit = opening.acquire_owned().await.context("the opening semaphore closed")?;
    let mut client = Client::new();
    let first = tokio::time::timeout(timeout, async {
        let sender = client.connect(gateway.addr).await?;
        sender.ready().await?;
        let resp = sender.send_request(gateway.request(&body, true)).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if status != StatusCode::OK {
            let bytes = body.collect().await?.to_bytes();
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(300)]));
        }
        while check.deltas == 0 {
            let frame = body.frame().await.ok_or_else(|| anyhow!("the stream ended before a delta"))??;
            if let Some(data) = frame.data_ref() {
                check.feed(data)?;
            }
        }
        Ok(body)
    })
    .await
    .unwrap_or_else(|_| Err(anyhow!("no delta within {} ms", timeout.as_millis())));
    drop(permit);
    let mut body = match first {
        Ok(b) => {
            let _ = signal.send(Signal::Opened).await;
            b
        }
        Err(e) => {
            let _ = signal.send(Signal::Failed(format!("{e:#}"))).await;
            return Err(e);
        }
    };
    // The driver bounds the rest (the hold, then its own timeout after the release).
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            check.feed(data)?;
        }
    }
    check.finish()
}

/// Follows one held stream: its content, its deltas and `[DONE]`.
#[derive(Default)]
struct Check {
    parser: SseParser,
    content: String,
    deltas: u64,
    done: bool,
}

impl Check {
    fn feed(&mut self, data: &[u8]) -> Result<()> {
        let Self { parser, content, deltas, done } = self;
        parser.feed(data, |item| {
            let SseItem::Event { data, .. } = item else { return Ok(()) };
            if data == b"[DONE]" {
                *done = true;
                return Ok(());
            }
            if *done {
                bail!("an event after data: [DONE]");
            }
            let chunk: Chunk = serde_json::from_slice(data)
                .with_context(|| format!("not a chunk: {}", String::from_utf8_lossy(data)))?;
            for text in chunk.choices.iter().filter_map(|c| c.delta.as_ref()?.content.as_deref()) {
                content.push_str(text);
                *deltas += 1;
            }
            Ok(())
        })
    }

    fn finish(self) -> Result<u64> {
        if !self.done {
            bail!("the stream ended without data: [DONE]");
        }
        let ticks = self.content.len() - self.content.trim_start_matches('.').len();
        if ticks == 0 || &self.content[ticks..] != ANSWER {
            bail!("unexpected content {:?} (want one or more \".\" then {ANSWER:?})", self.content);
        }
        Ok(self.deltas)
    }
}

/// `POST /_release` to the mock.
async fn release(mock: SocketAddr, timeout: Duration) -> Result<()> {
    let target = Target::new(crate::load::Route::Direct, mock, None);
    let mut client = Client::new();
    let fut = async {
        let sender = client.connect(mock).await?;
        let mut req = target.request(&Bytes::new(), false);
        *req.uri_mut() = hyper::Uri::from_static("/_release");
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let text = resp.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&text));
        }
        Ok(())
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| anyhow!("timed out"))?
}

/// p50 and p99 of sorted nanoseconds, in ms (NaN when there are none).
fn p50_p99_ms(sorted: &[u64]) -> (f64, f64) {
    let at = |p| pct_ms(sorted, p).unwrap_or(f64::NAN);
    (at(50.0), at(99.0))
}

impl StreamsResult {
    /// Failed streams and probes together.
    pub(crate) fn errors(&self) -> u64 {
        (self.failed + self.probe_errors) as u64
    }

    /// RSS of every process but the mock (the first), in MB.
    fn services_mb(states: &[ProcState]) -> f64 {
        states.iter().skip(1).map(|s| s.rss_kb).sum::<u64>() as f64 / 1024.0
    }

    /// The report.
    pub(crate) fn render(&self) -> String {
        let s = &self.spec;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "\nOpen streams: {} SSE streams through the gateway at once, one client connection each, a delta every {} ms while held",
            s.streams,
            s.tick.as_millis()
        );
        let _ = writeln!(
            o,
            "  opened {} of {} in {:.1} s (at most {} opening at a time); completed {}, failed {}; {} deltas read",
            self.opened,
            s.streams,
            self.open_wall.as_secs_f64(),
            s.open_concurrency,
            self.completed,
            self.failed,
            self.deltas
        );
        if let Some(e) = &self.first_error {
            let _ = writeln!(o, "  first error: {e}");
        }
        let _ = writeln!(
            o,
            "  {:<14} {:>16} {:>16} {:>16} {:>12} {:>14}",
            "process", "RSS before", "RSS held", "RSS after", "fds held", "CPU held"
        );
        let hold = self.hold_wall.as_secs_f64().max(1e-9);
        for (i, name) in self.names.iter().enumerate() {
            let mb = |v: &[ProcState]| v.get(i).map(|p| p.rss_kb as f64 / 1024.0).unwrap_or(f64::NAN);
            let per_stream_kb = self
                .held
                .get(i)
                .zip(self.before.get(i))
                .map(|(h, b)| h.rss_kb.saturating_sub(b.rss_kb) as f64 / self.opened.max(1) as f64);
            let cpu = self.hold_cpu.get(i).map(|t| *t as f64 / self.clk_tck.max(1) as f64 / hold * 100.0);
            let _ = writeln!(
                o,
                "  {:<14} {:>13.1} MB {:>10.1} MB ({:.1} KB/stream) {:>9.1} MB {:>12} {:>12.0} %",
                name,
                mb(&self.before),
                mb(&self.held),
                per_stream_kb.unwrap_or(f64::NAN),
                mb(&self.after),
                self.held.get(i).map(|p| p.fds).unwrap_or(0),
                cpu.unwrap_or(f64::NAN)
            );
        }
        let (b50, b99) = p50_p99_ms(&self.probes_before);
        let (h50, h99) = p50_p99_ms(&self.probes_held);
        let _ = writeln!(
            o,
            "  probe requests on another connection ({} each, {} ms apart): before p50 {b50:.2} ms / p99 {b99:.2} ms; with the streams open p50 {h50:.2} ms / p99 {h99:.2} ms; {} failed",
            s.probes,
            PROBE_PAUSE.as_millis(),
            self.probe_errors
        );
        let latency_ok =
            self.probe_errors == 0 && !self.probes_held.is_empty() && h99 <= LATENCY_FACTOR * b99;
        let rss = Self::services_mb(&self.held);
        let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
        let _ = writeln!(o, "  targets:");
        let _ = writeln!(
            o,
            "    every stream opened and ended well, every probe answered: {}",
            verdict(self.errors() == 0 && self.opened == s.streams && self.completed == s.streams)
        );
        let _ = writeln!(
            o,
            "    probes with all open at normal latency (p99 ≤ {LATENCY_FACTOR:.0}× the p99 before): {h99:.2} vs {b99:.2} ms: {}",
            verdict(latency_ok)
        );
        let _ = writeln!(
            o,
            "    RSS of agent-svc + gateway-http with all open: {rss:.1} MB (≤ {RSS_TARGET_MB:.0} MB): {}",
            verdict(rss <= RSS_TARGET_MB)
        );
        o
    }
}
