//! Hand-written SVG bar charts, one per plotted metric of each scenario:
//! a bar at the median, a whisker from the smallest to the largest run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::report::{Report, ScenarioResult, Stat, fmt_num};

const WIDTH: f64 = 760.0;
const LABEL_W: f64 = 250.0;
const VALUE_W: f64 = 110.0;
const ROW_H: f64 = 30.0;
const TOP: f64 = 44.0;
const COLORS: [&str; 6] = [
    "#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2",
];

/// Writes every chart of `report` into `dir`; returns the files written.
pub(crate) fn write_all(report: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for s in &report.scenarios {
        for metric in plotted_metrics(s) {
            let path = dir.join(format!("{}-{}.svg", s.name, slug(&metric)));
            std::fs::write(&path, chart(s, &metric, report.smoke))
                .with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
        }
    }
    Ok(written)
}

fn plotted_metrics(s: &ScenarioResult) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in &s.rows {
        for m in r.metrics.iter().filter(|m| m.plot) {
            if !out.contains(&m.name) {
                out.push(m.name.clone());
            }
        }
    }
    out
}

/// `server CPU µs/req` → `server-cpu-us-req`.
pub(crate) fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.replace('µ', "u").chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_owned()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn chart(s: &ScenarioResult, metric: &str, smoke: bool) -> String {
    let rows: Vec<(&str, &Stat)> = s
        .rows
        .iter()
        .filter_map(|r| r.get(metric).map(|st| (r.variant.as_str(), st)))
        .collect();
    let scale_max = rows
        .iter()
        .map(|(_, st)| st.max.max(st.median))
        .fold(0.0f64, f64::max)
        .max(1e-12);
    let plot_w = WIDTH - LABEL_W - VALUE_W;
    let height = TOP + ROW_H * rows.len() as f64 + 30.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="22" font-size="15" font-weight="bold">{}: {}{}</text>"#,
        escape(&s.name),
        escape(metric),
        if smoke { " (smoke run)" } else { "" }
    );
    let _ = writeln!(
        svg,
        r##"<line x1="{LABEL_W}" y1="{}" x2="{LABEL_W}" y2="{}" stroke="#333"/>"##,
        TOP - 6.0,
        TOP + ROW_H * rows.len() as f64
    );
    for (i, (variant, st)) in rows.iter().enumerate() {
        let y = TOP + ROW_H * i as f64;
        let w = (st.median / scale_max * plot_w).max(0.0);
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            LABEL_W - 8.0,
            y + 16.0,
            escape(variant)
        );
        let _ = writeln!(
            svg,
            r#"<rect x="{LABEL_W}" y="{}" width="{w:.1}" height="{}" fill="{color}"/>"#,
            y + 4.0,
            ROW_H - 10.0
        );
        if st.samples.len() > 1 {
            let (x0, x1) = (
                LABEL_W + st.min / scale_max * plot_w,
                LABEL_W + st.max / scale_max * plot_w,
            );
            let ym = y + ROW_H / 2.0 - 1.0;
            let _ = writeln!(
                svg,
                r##"<path d="M{x0:.1} {:.1} V{:.1} M{x0:.1} {ym:.1} H{x1:.1} M{x1:.1} {:.1} V{:.1}" stroke="#222" fill="none"/>"##,
                ym - 5.0,
                ym + 5.0,
                ym - 5.0,
                ym + 5.0
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}">{}</text>"#,
            LABEL_W + w.max(st.max / scale_max * plot_w) + 6.0,
            y + 16.0,
            escape(&fmt_num(st.median))
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="10" y="{}" fill="#555">bar: median of the runs; whisker: smallest to largest run</text>"##,
        height - 10.0
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Row;

    #[test]
    fn slugs_are_file_names() {
        assert_eq!(slug("server CPU µs/req"), "server-cpu-us-req");
        assert_eq!(slug("req/s ÷ raw ws://"), "req-s-raw-ws");
    }

    #[test]
    fn chart_is_well_formed_enough() {
        let mut s = ScenarioResult::new("echo", "t");
        let mut r = Row::new("a <b>");
        r.metric("req/s", vec![1.0, 2.0, 3.0], true);
        s.rows.push(r);
        let svg = chart(&s, "req/s", false);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;b&gt;"));
    }
}
