//! Measurement from `/proc` (the benchmark's and the soak test's): CPU time and
//! context switches per process, the machine's busy and stolen time, memory
//! (`VmRSS`, `VmHWM`) and open file descriptors.

use anyhow::{Context, Result};
use std::process::{Command, Stdio};

/// utime + stime of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let s = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name (field 2) may contain spaces and parentheses: fields after the last ')'.
    let rest = s.rsplit_once(')').map(|(_, r)| r).with_context(|| format!("{path}: malformed"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' come field 3 (state) onwards; utime is field 14, stime field 15.
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .with_context(|| format!("{path}: field {i} missing"))?
            .parse::<u64>()
            .with_context(|| format!("{path}: field {i} is not a number"))
    };
    Ok(field(14)? + field(15)?)
}

/// Voluntary + involuntary context switches of all threads of a process
/// (`/proc/<pid>/task/*/status`; threads that already exited are not counted).
pub fn ctx_switches(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot read {dir}"))? {
        let Ok(entry) = entry else { continue };
        // A thread may exit between the listing and the read.
        let Ok(s) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        for line in s.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().with_context(|| format!("{dir}: bad line {line:?}"))?;
            }
        }
    }
    Ok(total)
}

/// Machine-wide CPU ticks (all cores) from the `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineTicks {
    /// user + nice + system + irq + softirq.
    pub busy: u64,
    /// Time the hypervisor ran something else.
    pub steal: u64,
}

fn machine_ticks() -> Result<MachineTicks> {
    let s = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let line = s.lines().find(|l| l.starts_with("cpu ")).context("/proc/stat: no cpu line")?;
    let f: Vec<u64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0)).collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    Ok(MachineTicks { busy: at(0) + at(1) + at(2) + at(5) + at(6), steal: at(7) })
}

/// A `kB` line of `/proc/<pid>/status` (e.g. `VmRSS`), in kB.
pub fn status_kb(pid: u32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let s = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let line = s
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .with_context(|| format!("{path}: no {key} line"))?;
    let number = line.trim().trim_end_matches("kB").trim();
    number.parse().with_context(|| format!("{path}: {key} is not a number: {line:?}"))
}

/// Open file descriptors of a process: the entries of `/proc/<pid>/fd`.
pub fn open_fds(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&dir).with_context(|| format!("cannot read {dir}"))?;
    // An fd closed between the listing and the count may yield an error entry: it is gone, skip it.
    Ok(entries.filter(|e| e.is_ok()).count() as u64)
}

/// CPUs online: the `cpuN` lines of `/proc/stat` (at least 1).
pub fn online_cpus() -> usize {
    std::fs::read_to_string("/proc/stat")
        .map(|s| {
            s.lines()
                .filter(|l| {
                    l.strip_prefix("cpu").is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(1)
        .max(1)
}

/// `CLK_TCK` (the unit of utime/stime), from `getconf`; 100 when that fails.
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t: &u64| t > 0)
        .unwrap_or(100)
}

/// `after - before` element by element (a counter that went back counts 0).
pub fn deltas(after: &[u64], before: &[u64]) -> Vec<u64> {
    after.iter().zip(before).map(|(a, b)| a.saturating_sub(*b)).collect()
}

/// Counters read at the start and the end of a measured phase.
pub struct Sample {
    /// utime+stime per child process (ticks).
    pub cpu: Vec<u64>,
    /// Context switches per child process.
    pub ctx: Vec<u64>,
    /// The bench's own utime+stime (ticks).
    pub self_cpu: u64,
    pub machine: MachineTicks,
}

impl Sample {
    /// Reads every counter now.
    pub fn take(pids: &[u32]) -> Result<Self> {
        Ok(Self {
            cpu: pids.iter().map(|&p| cpu_ticks(p)).collect::<Result<_>>()?,
            ctx: pids.iter().map(|&p| ctx_switches(p)).collect::<Result<_>>()?,
            self_cpu: cpu_ticks(std::process::id())?,
            machine: machine_ticks()?,
        })
    }
}
