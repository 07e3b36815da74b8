//! Results: the JSON model written by `--json`, and its Markdown rendering.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::BenchArgs;

/// Everything one `wsgate bench` run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Report {
    /// The wsgate version that ran.
    pub wsgate_version: String,
    /// Unix time the run started.
    pub started_unix: u64,
    /// The command line, as given.
    pub command: String,
    /// Where it ran.
    pub machine: Machine,
    /// Whether gateway (core 0) and load generator (core 1) were pinned.
    pub pinned: bool,
    /// A `--smoke` run: tiny, numbers meaningless.
    pub smoke: bool,
    /// Per scenario.
    pub scenarios: Vec<ScenarioResult>,
    /// Scenarios that failed, with why.
    pub failures: Vec<String>,
}

/// The machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Machine {
    /// Logical CPUs (`/proc/cpuinfo`).
    pub cpus: usize,
    /// CPU model name.
    pub cpu_model: String,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// `/proc/loadavg` when the run started (other work on the machine).
    pub load_average_at_start: String,
}

/// One scenario's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ScenarioResult {
    /// `echo`, `keys`, `login`, `idle`, `fanout`.
    pub name: String,
    /// What was measured.
    pub description: String,
    /// Settings that shape the numbers.
    pub settings: Vec<(String, String)>,
    /// One row per variant.
    pub rows: Vec<Row>,
    /// Remarks (skipped variants, caveats).
    pub notes: Vec<String>,
    /// The targets this scenario measures.
    pub targets: Vec<TargetCheck>,
}

/// One variant: its metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Row {
    /// Variant name (`raw ws:// (baseline 1)`, `wsgate ws:// tagged`, …).
    pub variant: String,
    /// Its measurements and ratios.
    pub metrics: Vec<Metric>,
}

/// A named measurement over the runs of a variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Metric {
    /// Column name (`req/s`, `server CPU µs/req`, `req/s ÷ raw ws://`).
    pub name: String,
    /// The values, one per run.
    pub stat: Stat,
    /// Draw a bar chart of this metric across variants.
    pub plot: bool,
}

/// Values over repeated runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Stat {
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Every run's value, in run order.
    pub samples: Vec<f64>,
}

impl Stat {
    /// From samples (empty → all zero).
    pub fn from_samples(samples: Vec<f64>) -> Self {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let median = match sorted.len() {
            0 => 0.0,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Self {
            median,
            min: sorted.first().copied().unwrap_or(0.0),
            max: sorted.last().copied().unwrap_or(0.0),
            samples,
        }
    }

    /// Run-by-run ratio `self / base` (runs are interleaved, so run i of
    /// both saw the same machine conditions).
    pub fn ratio_to(&self, base: &Stat) -> Stat {
        if self.samples.len() == base.samples.len() && !self.samples.is_empty() {
            Stat::from_samples(
                self.samples
                    .iter()
                    .zip(&base.samples)
                    .map(|(a, b)| if *b == 0.0 { f64::NAN } else { a / b })
                    .collect(),
            )
        } else if base.median != 0.0 {
            Stat::from_samples(vec![self.median / base.median])
        } else {
            Stat::default()
        }
    }

    /// Spread as a share of the median: (max − min) / median.
    pub fn spread(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.max - self.min) / self.median
        }
    }
}

/// One of the targets and where this run stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TargetCheck {
    /// The target as the issue states it.
    pub target: String,
    /// What this run measured (with the run-to-run range when it was
    /// judged from repeated runs).
    pub measured: String,
    /// `met`, `missed`, `within noise` (the threshold lies inside the
    /// run-to-run range: some runs meet it, some miss it), `not measured`
    /// (smoke runs, missing baselines).
    pub status: String,
}

/// Which side of its threshold a target wants a measured ratio on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// `≤ x`.
    AtMost(f64),
    /// `≥ x`.
    AtLeast(f64),
    /// `< x`.
    Below(f64),
}

impl Goal {
    fn holds(self, v: f64) -> bool {
        match self {
            Self::AtMost(x) => v <= x,
            Self::AtLeast(x) => v >= x,
            Self::Below(x) => v < x,
        }
    }
}

/// The verdict on `stat` for `goal`, from every run rather than the median
/// alone: `met` when all runs meet it, `missed` when none does, `within
/// noise` when the threshold lies inside the run-to-run range (so the
/// verdict of a single run could go either way).
pub fn verdict(stat: &Stat, goal: Goal) -> &'static str {
    let finite: Vec<f64> = stat
        .samples
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    let (lo, hi) = if finite.is_empty() {
        (stat.median, stat.median)
    } else {
        (stat.min, stat.max)
    };
    match (goal.holds(lo), goal.holds(hi)) {
        (true, true) => "met",
        (false, false) => "missed",
        _ => "within noise",
    }
}

impl TargetCheck {
    /// A target judged on a ratio measured over repeated runs
    /// ([`verdict`]); `measured` shows the median, the range and the number
    /// of runs, then `note` if not empty. Not judged (`not measured`)
    /// without a value or when `judge` is false (smoke runs).
    pub fn judged(target: &str, stat: Option<&Stat>, goal: Goal, judge: bool, note: &str) -> Self {
        let Some(stat) = stat.filter(|s| s.median.is_finite() && s.median != 0.0) else {
            return Self::new(target, format!("–{note}"), None);
        };
        let runs = stat.samples.len();
        let measured = if runs > 1 {
            format!(
                "{:.3}× (runs {:.3}–{:.3}×, {runs} runs){note}",
                stat.median, stat.min, stat.max
            )
        } else {
            format!("{:.3}× (1 run: no spread){note}", stat.median)
        };
        Self {
            target: target.to_owned(),
            measured,
            status: if judge {
                verdict(stat, goal).to_owned()
            } else {
                "not measured".to_owned()
            },
        }
    }

    /// A target on an absolute value (a rate, a size) measured over
    /// repeated runs, judged like [`TargetCheck::judged`]; `show` formats
    /// the median (e.g. `12,345/s per core`), the range is plain numbers.
    pub fn judged_value(
        target: &str,
        stat: Option<&Stat>,
        goal: Goal,
        judge: bool,
        show: impl Fn(f64) -> String,
    ) -> Self {
        let Some(stat) = stat.filter(|s| s.median.is_finite()) else {
            return Self::new(target, "–".into(), None);
        };
        let runs = stat.samples.len();
        let measured = if runs > 1 {
            format!(
                "{} (runs {}–{}, {runs} runs)",
                show(stat.median),
                fmt_num(stat.min),
                fmt_num(stat.max)
            )
        } else {
            format!("{} (1 run: no spread)", show(stat.median))
        };
        Self {
            target: target.to_owned(),
            measured,
            status: if judge {
                verdict(stat, goal).to_owned()
            } else {
                "not measured".to_owned()
            },
        }
    }

    /// A target compared with a measured value.
    pub fn new(target: &str, measured: String, met: Option<bool>) -> Self {
        Self {
            target: target.to_owned(),
            measured,
            status: match met {
                Some(true) => "met".into(),
                Some(false) => "missed".into(),
                None => "not measured".into(),
            },
        }
    }
}

impl Row {
    /// A row with no metrics yet.
    pub fn new(variant: impl Into<String>) -> Self {
        Self {
            variant: variant.into(),
            metrics: Vec::new(),
        }
    }

    /// Adds a metric.
    pub fn metric(&mut self, name: &str, samples: Vec<f64>, plot: bool) -> &mut Self {
        self.metrics.push(Metric {
            name: name.to_owned(),
            stat: Stat::from_samples(samples),
            plot,
        });
        self
    }

    /// Adds a ready-made statistic.
    pub fn stat(&mut self, name: &str, stat: Stat, plot: bool) -> &mut Self {
        self.metrics.push(Metric {
            name: name.to_owned(),
            stat,
            plot,
        });
        self
    }

    /// The metric called `name`.
    pub fn get(&self, name: &str) -> Option<&Stat> {
        self.metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| &m.stat)
    }
}

impl ScenarioResult {
    /// A scenario result with no rows yet.
    pub fn new(name: &str, description: &str) -> Self {
        Self {
            name: name.to_owned(),
            description: description.to_owned(),
            settings: Vec::new(),
            rows: Vec::new(),
            notes: Vec::new(),
            targets: Vec::new(),
        }
    }

    /// Records a setting.
    pub fn setting(&mut self, name: &str, value: impl ToString) {
        self.settings.push((name.to_owned(), value.to_string()));
    }

    /// The row called `variant`.
    pub fn row(&self, variant: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.variant == variant)
    }
}

/// A number for a table: thousands separators for big ones, 2–3
/// significant decimals for small ones.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    if a >= 10_000.0 {
        crate::load::thousands(v)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn cell(s: &Stat) -> String {
    if s.samples.len() > 1 {
        format!(
            "{} ({}–{})",
            fmt_num(s.median),
            fmt_num(s.min),
            fmt_num(s.max)
        )
    } else {
        fmt_num(s.median)
    }
}

impl Report {
    pub(crate) fn new(args: &BenchArgs, machine: Machine, pinned: bool) -> Self {
        Self {
            wsgate_version: env!("CARGO_PKG_VERSION").to_owned(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            command: redacted_command_line(),
            machine,
            pinned,
            smoke: args.smoke,
            scenarios: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// The whole report as Markdown: machine, one table per scenario,
    /// then every target with its status.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let _ = writeln!(
            md,
            "Machine: {} CPUs ({}), {} GiB, Linux {}; load average at start {}; {}.\n",
            m.cpus,
            m.cpu_model,
            m.memory_gib,
            m.kernel,
            m.load_average_at_start,
            if self.pinned {
                "gateway pinned to core 0, load generator to core 1"
            } else {
                "not pinned"
            }
        );
        let _ = writeln!(md, "Command: `{}`\n", self.command);
        if self.smoke {
            let _ = writeln!(
                md,
                "**Smoke run**: tiny and short; it proves the scenarios work, its numbers mean nothing.\n"
            );
        }
        for s in &self.scenarios {
            let _ = writeln!(md, "### {} — {}\n", s.name, s.description);
            if !s.settings.is_empty() {
                let settings: Vec<String> = s
                    .settings
                    .iter()
                    .map(|(k, v)| format!("{k} = {v}"))
                    .collect();
                let _ = writeln!(md, "Settings: {}.\n", settings.join(", "));
            }
            let mut columns: Vec<&str> = Vec::new();
            for r in &s.rows {
                for metric in &r.metrics {
                    if !columns.contains(&metric.name.as_str()) {
                        columns.push(&metric.name);
                    }
                }
            }
            if !s.rows.is_empty() {
                let _ = writeln!(md, "| variant | {} |", columns.join(" | "));
                let _ = writeln!(md, "|---|{}", "---:|".repeat(columns.len()));
                for r in &s.rows {
                    let cells: Vec<String> = columns
                        .iter()
                        .map(|c| r.get(c).map_or_else(String::new, cell))
                        .collect();
                    let _ = writeln!(md, "| {} | {} |", r.variant, cells.join(" | "));
                }
                md.push('\n');
            }
            for n in &s.notes {
                let _ = writeln!(md, "- {n}");
            }
            if !s.notes.is_empty() {
                md.push('\n');
            }
        }
        let targets: Vec<&TargetCheck> = self.scenarios.iter().flat_map(|s| &s.targets).collect();
        if !targets.is_empty() {
            let _ = writeln!(md, "### Targets\n");
            let _ = writeln!(md, "| target | measured | status |\n|---|---|---|");
            for t in targets {
                let _ = writeln!(md, "| {} | {} | {} |", t.target, t.measured, t.status);
            }
            md.push('\n');
        }
        if !self.failures.is_empty() {
            let _ = writeln!(md, "### Failed scenarios\n");
            for f in &self.failures {
                let _ = writeln!(md, "- {f}");
            }
            md.push('\n');
        }
        md
    }
}

/// The command line with secret values (`--password`, `--api-key`) hidden.
fn redacted_command_line() -> String {
    let mut out = Vec::new();
    let mut hide_next = false;
    for (i, a) in std::env::args().enumerate() {
        if i == 0 {
            out.push(
                std::path::Path::new(&a)
                    .file_name()
                    .map_or_else(|| a.clone(), |f| f.to_string_lossy().into_owned()),
            );
            continue;
        }
        if hide_next {
            out.push("***".to_owned());
            hide_next = false;
        } else if a == "--password" || a == "--api-key" {
            out.push(a);
            hide_next = true;
        } else if a.starts_with("--password=") || a.starts_with("--api-key=") {
            let name = a.split('=').next().unwrap_or_default().to_owned();
            out.push(format!("{name}=***"));
        } else {
            out.push(a);
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_paired_ratios() {
        let a = Stat::from_samples(vec![3.0, 1.0, 2.0]);
        assert_eq!((a.median, a.min, a.max), (2.0, 1.0, 3.0));
        let b = Stat::from_samples(vec![6.0, 2.0, 4.0]);
        let r = b.ratio_to(&a);
        assert_eq!((r.median, r.min, r.max), (2.0, 2.0, 2.0));
        assert_eq!(Stat::from_samples(vec![1.0, 3.0]).median, 2.0);
    }

    #[test]
    fn a_verdict_needs_every_run_to_agree() {
        let runs = |v: &[f64]| Stat::from_samples(v.to_vec());
        assert_eq!(
            verdict(&runs(&[1.02, 1.05, 1.08]), Goal::AtMost(1.10)),
            "met"
        );
        assert_eq!(
            verdict(&runs(&[1.12, 1.15, 1.30]), Goal::AtMost(1.10)),
            "missed"
        );
        // The median meets it, one run does not: the threshold is inside the range.
        assert_eq!(
            verdict(&runs(&[1.01, 1.05, 1.50]), Goal::AtMost(1.10)),
            "within noise"
        );
        assert_eq!(
            verdict(&runs(&[0.80, 0.86, 0.90]), Goal::AtLeast(0.85)),
            "within noise"
        );
        assert_eq!(
            verdict(&runs(&[0.99, 1.0]), Goal::Below(1.0)),
            "within noise"
        );
        assert_eq!(verdict(&runs(&[0.9]), Goal::Below(1.0)), "met");
        // A run without a value (NaN) does not count.
        assert_eq!(
            verdict(&runs(&[1.0, f64::NAN, 1.05]), Goal::AtMost(1.10)),
            "met"
        );
    }

    #[test]
    fn an_absolute_target_is_judged_run_by_run_too() {
        let stat = Stat::from_samples(vec![3900.0, 4000.0, 4200.0]);
        let show = |b: f64| format!("{b:.0} B");
        let t = TargetCheck::judged_value("≤ 4 KiB", Some(&stat), Goal::AtMost(4096.0), true, show);
        assert_eq!(t.measured, "4000 B (runs 3900–4200, 3 runs)");
        assert_eq!(t.status, "within noise");
        let t = TargetCheck::judged_value("≤ 8 KiB", Some(&stat), Goal::AtMost(8192.0), true, show);
        assert_eq!(t.status, "met");
        let t =
            TargetCheck::judged_value("≤ 8 KiB", Some(&stat), Goal::AtMost(8192.0), false, show);
        assert_eq!(t.status, "not measured");
        let t = TargetCheck::judged_value("≤ 8 KiB", None, Goal::AtMost(8192.0), true, show);
        assert_eq!(
            (t.measured.as_str(), t.status.as_str()),
            ("–", "not measured")
        );
    }

    #[test]
    fn a_judged_target_shows_the_range_and_the_runs() {
        let stat = Stat::from_samples(vec![1.01, 1.11, 1.50]);
        let t = TargetCheck::judged("≤ 1.10× raw", Some(&stat), Goal::AtMost(1.10), true, "");
        assert_eq!(t.measured, "1.110× (runs 1.010–1.500×, 3 runs)");
        assert_eq!(t.status, "within noise");
        let one = Stat::from_samples(vec![1.2]);
        let t = TargetCheck::judged(
            "≤ 1.10× raw",
            Some(&one),
            Goal::AtMost(1.10),
            true,
            " (at 25 %)",
        );
        assert_eq!(t.measured, "1.200× (1 run: no spread) (at 25 %)");
        assert_eq!(t.status, "missed");
        let t = TargetCheck::judged("≤ 1.10× raw", Some(&stat), Goal::AtMost(1.10), false, "");
        assert_eq!(t.status, "not measured");
        let t = TargetCheck::judged("≤ 1.10× raw", None, Goal::AtMost(1.10), true, "");
        assert_eq!(
            (t.measured.as_str(), t.status.as_str()),
            ("–", "not measured")
        );
    }

    #[test]
    fn markdown_cells_show_the_range_of_repeated_runs() {
        let mut s = ScenarioResult::new("echo", "test");
        let mut r = Row::new("raw");
        r.metric("req/s", vec![1000.0, 900.0, 1100.0], true);
        s.rows.push(r);
        let report = Report {
            wsgate_version: "0".into(),
            started_unix: 0,
            command: "wsgate bench echo".into(),
            machine: crate::procfs::machine(),
            pinned: false,
            smoke: false,
            scenarios: vec![s],
            failures: vec![],
        };
        assert!(report.markdown().contains("| raw | 1000 (900–1100) |"));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_num(123_456.0), "123,456");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(0.8512), "0.851");
        assert_eq!(fmt_num(f64::NAN), "–");
    }

    #[test]
    fn markdown_has_one_column_per_metric() {
        let mut s = ScenarioResult::new("echo", "test");
        let mut r = Row::new("raw");
        r.metric("req/s", vec![1000.0], true);
        s.rows.push(r);
        let mut r = Row::new("wsgate");
        r.metric("req/s", vec![900.0], true)
            .metric("req/s ÷ raw", vec![0.9], false);
        s.rows.push(r);
        let report = Report {
            wsgate_version: "0".into(),
            started_unix: 0,
            command: "wsgate bench echo".into(),
            machine: crate::procfs::machine(),
            pinned: false,
            smoke: true,
            scenarios: vec![s],
            failures: vec![],
        };
        let md = report.markdown();
        assert!(md.contains("| variant | req/s | req/s ÷ raw |"), "{md}");
        assert!(md.contains("| wsgate | 900 | 0.900 |"), "{md}");
    }
}
