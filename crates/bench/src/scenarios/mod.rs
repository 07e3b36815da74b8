//! The scenarios. Each returns a [`ScenarioResult`](crate::report::ScenarioResult)
//! whose rows include its same-run baselines and the ratios to them.

pub(crate) mod connect;
pub(crate) mod echo;
pub(crate) mod fanout;
pub(crate) mod fleet;
pub(crate) mod idle;
pub(crate) mod keys;
pub(crate) mod login;
pub(crate) mod proxy;
pub(crate) mod recovery;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::BenchArgs;

/// Connections per loopback source address: below the 28 232 ephemeral
/// ports of the default `ip_local_port_range`.
const PER_SOURCE_IP: usize = 20_000;

/// Warm-up, measured duration and repetitions of a timed scenario.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    pub(crate) repeat: usize,
}

/// Echo's runs per variant without `--repeat`: enough that the range
/// shows how far one run can stray, and that a target's verdict can be
/// `met` or `missed` across all of them, not one lucky run.
pub(crate) const ECHO_REPEAT: usize = 5;

/// The timing of a scenario measured for `default_secs` per run, repeated
/// `default_repeat` times unless `--repeat` says otherwise.
pub(crate) fn timing(args: &BenchArgs, default_secs: f64, default_repeat: usize) -> Timing {
    if args.smoke {
        return Timing {
            warmup: Duration::from_millis(200),
            duration: Duration::from_secs_f64(args.duration.unwrap_or(0.5).min(2.0)),
            repeat: args.repeat_or(1),
        };
    }
    Timing {
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs_f64(args.duration.unwrap_or(default_secs).max(0.1)),
        repeat: args.repeat_or(default_repeat),
    }
}

/// The source address of connection `i` of `total`: 127.0.0.1 (unbound)
/// while one address has ports enough, else 127.0.0.2, .3, … in blocks.
pub(crate) fn source_ip(i: usize, total: usize) -> Option<IpAddr> {
    if total <= PER_SOURCE_IP {
        return None;
    }
    let block = (i / PER_SOURCE_IP) as u32;
    let host = 2 + block;
    Some(IpAddr::V4(Ipv4Addr::from(
        0x7f00_0000 | (host & 0x00ff_ffff),
    )))
}

/// Median of a histogram quantile in microseconds.
pub(crate) fn quantile_us(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        f64::NAN
    } else {
        h.value_at_quantile(q) as f64
    }
}

/// What one server core could sustain, run by run: `1 / server CPU per
/// operation` (µs → operations per second).
pub(crate) fn per_core(cpu_us: &crate::report::Stat) -> crate::report::Stat {
    crate::report::Stat::from_samples(
        cpu_us
            .samples
            .iter()
            .map(|us| if *us > 0.0 { 1e6 / us } else { f64::NAN })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_spread_in_blocks() {
        assert_eq!(source_ip(5, 100), None);
        assert_eq!(
            source_ip(0, 100_000),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        );
        assert_eq!(
            source_ip(45_000, 100_000),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4)))
        );
    }
}
