//! The load generator's machinery: shared counters, the measurement window
//! (warm-up, then CPU and operation counts sampled at both ends), latency
//! histograms and the live progress line on stderr.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;

use crate::procfs::CpuMeter;

/// Flags and counters shared by the tasks of one run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shared {
    /// Completed operations (all phases).
    pub(crate) ops: Arc<AtomicU64>,
    /// Whether latencies are recorded now (the measurement window).
    pub(crate) measuring: Arc<AtomicBool>,
    /// Whether tasks should stop.
    pub(crate) stop: Arc<AtomicBool>,
}

impl Shared {
    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub(crate) fn is_measuring(&self) -> bool {
        self.measuring.load(Ordering::Relaxed)
    }

    pub(crate) fn done_one(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
    }
}

/// A latency histogram in microseconds (1 µs .. 100 s, 3 significant digits).
/// Waits for the closed-loop tasks of a run, each of which returns its
/// latency histogram and how it ended: the first failure is the run's
/// (named `{what}: {each} 3 of 50`), and the histograms are merged.
pub(crate) async fn join_loops(
    what: &str,
    each: &str,
    tasks: Vec<tokio::task::JoinHandle<(Histogram<u64>, anyhow::Result<()>)>>,
) -> anyhow::Result<Histogram<u64>> {
    let mut merged = histogram();
    let total = tasks.len();
    for (i, task) in tasks.into_iter().enumerate() {
        let which = || format!("{what}: {each} {} of {total}", i + 1);
        let (h, outcome) = task
            .await
            .map_err(|e| anyhow::anyhow!("{}: its task failed: {e}", which()))?;
        outcome.with_context(which)?;
        merged
            .add(&h)
            .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
    }
    Ok(merged)
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable_histogram()))
}

fn unreachable_histogram() -> Histogram<u64> {
    // `Histogram::new(3)` only fails for more than 5 significant digits.
    match Histogram::new(1) {
        Ok(h) => h,
        Err(_) => unreachable!("1 significant digit is always valid"),
    }
}

/// Records `elapsed` (µs, at least 1).
pub(crate) fn record(h: &mut Histogram<u64>, elapsed: Duration) {
    let us = u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    h.saturating_record(us);
}

/// What a measurement window saw.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Wall-clock seconds.
    pub(crate) seconds: f64,
    /// Operations completed.
    pub(crate) ops: u64,
    /// Server CPU seconds (None when the server's pid is unknown).
    pub(crate) server_cpu: Option<f64>,
    /// Load generator CPU seconds.
    pub(crate) client_cpu: f64,
}

impl Window {
    pub(crate) fn rate(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }

    /// Server CPU µs per operation.
    pub(crate) fn server_us_per_op(&self) -> Option<f64> {
        self.server_cpu
            .filter(|_| self.ops > 0)
            .map(|c| c * 1e6 / self.ops as f64)
    }

    /// Load generator CPU µs per operation.
    pub(crate) fn client_us_per_op(&self) -> Option<f64> {
        (self.ops > 0).then(|| self.client_cpu * 1e6 / self.ops as f64)
    }
}

/// Runs the warm-up and the measurement window while the tasks work,
/// drawing a progress line; sets `measuring` during the window and `stop`
/// at its end.
pub(crate) async fn measure(
    label: &str,
    unit: &str,
    shared: &Shared,
    warmup: Duration,
    duration: Duration,
    server: Option<CpuMeter>,
    client: CpuMeter,
) -> Window {
    let progress = Progress::new(label);
    let start = Instant::now();
    let mut last = (start, shared.ops.load(Ordering::Relaxed));
    while start.elapsed() < warmup && !shared.stopped() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        progress.draw(&format!(
            "warming up {:.1} s",
            start.elapsed().as_secs_f64()
        ));
    }
    let (s0, c0) = (server.map(|m| m.seconds()), client.seconds());
    let (t0, n0) = (Instant::now(), shared.ops.load(Ordering::Relaxed));
    shared.measuring.store(true, Ordering::Relaxed);
    while t0.elapsed() < duration && !shared.stopped() {
        let left = duration.saturating_sub(t0.elapsed());
        tokio::time::sleep(left.min(Duration::from_millis(250))).await;
        let now = Instant::now();
        let n = shared.ops.load(Ordering::Relaxed);
        if now.duration_since(last.0) >= Duration::from_millis(500) {
            let rate = (n - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            last = (now, n);
            progress.draw(&format!(
                "{:.1}/{:.0} s  {} {unit}  ({} total)",
                t0.elapsed().as_secs_f64(),
                duration.as_secs_f64(),
                thousands(rate),
                n - n0
            ));
        }
    }
    let (t1, n1) = (Instant::now(), shared.ops.load(Ordering::Relaxed));
    let (s1, c1) = (server.map(|m| m.seconds()), client.seconds());
    shared.measuring.store(false, Ordering::Relaxed);
    shared.stop.store(true, Ordering::Relaxed);
    let window = Window {
        seconds: t1.duration_since(t0).as_secs_f64(),
        ops: n1 - n0,
        server_cpu: s0.zip(s1).map(|(a, b)| b - a),
        client_cpu: c1 - c0,
    };
    progress.finish(&format!(
        "{} {unit}, server {} CPU µs/op",
        thousands(window.rate()),
        window
            .server_us_per_op()
            .map_or_else(|| "?".to_owned(), |v| format!("{v:.2}"))
    ));
    window
}

/// The progress line: redrawn in place on a terminal, a line a second
/// otherwise (CI logs).
pub(crate) struct Progress {
    label: String,
    tty: bool,
    last: std::sync::Mutex<Instant>,
}

impl Progress {
    pub(crate) fn new(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            tty: std::io::stderr().is_terminal(),
            last: std::sync::Mutex::new(Instant::now()),
        }
    }

    pub(crate) fn draw(&self, status: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K  [{}] {status}", self.label);
            let _ = err.flush();
        } else if let Ok(mut last) = self.last.lock()
            && last.elapsed() >= Duration::from_secs(1)
        {
            *last = Instant::now();
            let _ = writeln!(err, "  [{}] {status}", self.label);
        }
    }

    pub(crate) fn finish(&self, status: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = writeln!(err, "\r\x1b[2K  [{}] {status}", self.label);
        } else {
            let _ = writeln!(err, "  [{}] {status}", self.label);
        }
    }
}

/// `1234567.8` → `1,234,568`.
pub(crate) fn thousands(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Opens `count` things with at most `parallel` attempts in flight, with a
/// progress line. `open(i)` makes the i-th. A failure names the run
/// (`label`) and the connection (`connection 17 of 50`) above the
/// client's error (the address dialled, the local address, what the
/// server answered).
pub(crate) async fn open_many<T, F, Fut>(
    label: &str,
    count: usize,
    parallel: usize,
    open: F,
) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let progress = Progress::new(label);
    let mut out = Vec::with_capacity(count);
    let mut pending = std::collections::VecDeque::new();
    let mut next = 0usize;
    while out.len() < count {
        while next < count && pending.len() < parallel.max(1) {
            pending.push_back((next, tokio::spawn(open(next))));
            next += 1;
        }
        let Some((i, handle)) = pending.pop_front() else {
            break;
        };
        let which = || format!("{label}: connection {} of {count}", i + 1);
        let item = handle
            .await
            .map_err(|e| anyhow::anyhow!("{}: its task failed: {e}", which()))?
            .with_context(which)?;
        out.push(item);
        if out.len().is_multiple_of(1000) {
            progress.draw(&format!("opened {}/{count}", out.len()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_open_names_the_run_and_the_connection() {
        let err = open_many("echo raw ws:// 2/5", 5, 2, |i| async move {
            if i == 2 {
                anyhow::bail!("TCP connect to 127.0.0.1:9 failed: refused")
            }
            Ok(i)
        })
        .await
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "echo raw ws:// 2/5: connection 3 of 5: TCP connect to 127.0.0.1:9 failed: refused"
        );
    }

    #[tokio::test]
    async fn a_failed_loop_names_its_connection() {
        let ok = |_| tokio::spawn(async { (histogram(), Ok(())) });
        let tasks = vec![
            ok(()),
            tokio::spawn(async { (histogram(), Err(anyhow::anyhow!("read failed: reset"))) }),
            ok(()),
        ];
        let err = join_loops("echo tagged 1/1", "connection", tasks)
            .await
            .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "echo tagged 1/1: connection 2 of 3: read failed: reset"
        );
    }

    #[test]
    fn formats_thousands() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234567.8), "1,234,568");
    }
}
