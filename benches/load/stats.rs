//! Counting deliveries: a log-linear latency histogram, run-wide counters shared by every
//! client task, and the server's CPU time and RSS read from `/proc`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use crate::proto::{MEASURED, parse_payload};

/// Sub-buckets per power of two: 64 gives about 1.6% resolution.
const SUB: u64 = 64;
/// Powers of two covered: 2^36 µs is 19 hours, far past any run.
const POWERS: u64 = 36;

/// Latency histogram in microseconds (HDR-style: exact below 64, then 64 steps per octave).
#[derive(Clone)]
pub struct Hist {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            counts: vec![0; (SUB * POWERS) as usize],
            total: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros() as u64; // v in [2^e, 2^(e+1))
    let shift = e - 6; // keep 6 significant bits below the leading one
    let sub = (v >> shift) - SUB;
    (((e - 5) * SUB + sub) as usize).min((SUB * POWERS - 1) as usize)
}

fn value(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let e = i / SUB + 5;
    let sub = i % SUB;
    // Upper edge of the bucket, so percentiles never flatter.
    ((SUB + sub + 1) << (e - 6)) - 1
}

impl Hist {
    /// Records one latency.
    pub fn record(&mut self, us: u64) {
        self.counts[index(us)] += 1;
        self.total += 1;
        self.max = self.max.max(us);
    }

    /// Adds another histogram.
    pub fn merge(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.total += o.total;
        self.max = self.max.max(o.max);
    }

    /// Recorded values.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q` quantile (0..=1) in microseconds.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let want = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return value(i).min(self.max);
            }
        }
        self.max
    }

    /// Largest value recorded.
    pub fn max(&self) -> u64 {
        self.max
    }
}

/// Counters every client task adds to. Latencies are kept per task and merged at the end;
/// the shared histogram is only touched when a task flushes.
pub struct Run {
    /// Origin of every timestamp in payloads.
    pub t0: Instant,
    /// Deliveries of any phase (for progress and saturation windows).
    pub delivered: AtomicU64,
    /// Deliveries of measured messages.
    pub measured: AtomicU64,
    /// Sessions that ended before the run did (closed by the server, errors).
    pub disconnects: AtomicU64,
    /// Frames a client could not read (protocol mismatch).
    pub bad_frames: AtomicU64,
    /// `Dropped` notices received (edgegate datagram/latest backpressure), summed counts.
    pub dropped_notices: AtomicU64,
    hist: Mutex<Hist>,
}

impl Run {
    /// A fresh run starting now.
    pub fn new() -> Self {
        Run {
            t0: Instant::now(),
            delivered: AtomicU64::new(0),
            measured: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            bad_frames: AtomicU64::new(0),
            dropped_notices: AtomicU64::new(0),
            hist: Mutex::new(Hist::default()),
        }
    }

    /// Microseconds since the origin.
    pub fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    /// The merged latency histogram.
    pub fn hist(&self) -> Hist {
        self.hist.lock().clone()
    }

    /// Clears the latency histogram (between saturation steps).
    pub fn reset_hist(&self) {
        *self.hist.lock() = Hist::default();
    }
}

/// A client task's local tally, flushed into [`Run`] in batches to keep the hot path free of
/// shared writes.
pub struct Tally<'a> {
    run: &'a Run,
    hist: Hist,
    delivered: u64,
    measured: u64,
    last_flush: u64,
}

impl<'a> Tally<'a> {
    /// A tally for one task.
    pub fn new(run: &'a Run) -> Self {
        Tally {
            run,
            hist: Hist::default(),
            delivered: 0,
            measured: 0,
            last_flush: 0,
        }
    }

    /// Records one delivered payload.
    pub fn payload(&mut self, p: &[u8]) {
        match parse_payload(p) {
            Some((phase, _, sent)) => {
                self.delivered += 1;
                if phase == MEASURED {
                    self.measured += 1;
                    self.hist.record(self.run.now_us().saturating_sub(sent));
                }
            }
            None => {
                self.run.bad_frames.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records a `Dropped` notice.
    pub fn dropped(&mut self, count: u64) {
        self.run.dropped_notices.fetch_add(count, Ordering::Relaxed);
    }

    /// Records a frame that could not be read.
    pub fn bad(&mut self) {
        self.run.bad_frames.fetch_add(1, Ordering::Relaxed);
    }

    /// Publishes counts so far; call after each read (cheap when little changed).
    pub fn flush_if_due(&mut self) {
        if self.delivered >= 256 || self.run.now_us() - self.last_flush > 100_000 {
            self.flush();
        }
    }

    /// Publishes everything recorded.
    pub fn flush(&mut self) {
        self.last_flush = self.run.now_us();
        if self.delivered > 0 {
            self.run
                .delivered
                .fetch_add(self.delivered, Ordering::Relaxed);
            self.delivered = 0;
        }
        if self.measured > 0 {
            self.run
                .measured
                .fetch_add(self.measured, Ordering::Relaxed);
            self.measured = 0;
        }
        if self.hist.count() > 0 {
            self.run.hist.lock().merge(&self.hist);
            self.hist = Hist::default();
        }
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux this runs on; `getconf CLK_TCK` would say otherwise.
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Resident set size of a process in bytes, from `/proc/PID/status`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Checks the histogram's bucket edges (called by the smoke run).
pub fn self_check() -> Result<(), String> {
    let mut h = Hist::default();
    for v in 1..=10_000u64 {
        h.record(v);
    }
    let p50 = h.quantile(0.5);
    let p99 = h.quantile(0.99);
    if !(5000..=5100).contains(&p50) || !(9900..=10_000).contains(&p99) {
        return Err(format!("histogram quantiles off: p50 {p50}, p99 {p99}"));
    }
    for v in [0u64, 1, 63, 64, 65, 1000, 123_456, 10_000_000] {
        if value(index(v)) < v {
            return Err(format!("bucket of {v} ends below it"));
        }
    }
    Ok(())
}
