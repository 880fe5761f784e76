//! The soak: the server's resident memory read through the load, its growth (from a settle point
//! to the end, and per hour), and optionally `/metrics` scraped every few seconds meanwhile, as a
//! Prometheus server would.
//!
//! ```text
//! roomcast bench --scenario fanout --members 10000 --rate 10 --duration 600 --ramp 200 \
//!     --client-endpoints 16 [--rss-every 5] [--soak-from 120] [--scrape-every 15]
//! ```
//!
//! A relay whose memory stays flat shows growth near zero however long it runs; one that keeps
//! something per message shows growth proportional to the load's duration. The growth is measured
//! from `--soak-from` seconds into the load (120 by default, at most half the load), past the
//! allocator's and the rings' warm-up: between the reading there and the last one, and as the
//! least-squares slope over every reading since (per hour), which a single outlier cannot move
//! as much.

use super::admin::Admin;
use super::stats::{self, LatencySummary};
use serde::Serialize;
use std::time::Duration;
use tokio::time::Instant;

/// One reading of the server's resident memory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RssSample {
    /// Seconds since the load started.
    pub secs: f64,
    /// VmRSS, KiB.
    pub rss_kib: u64,
}

/// How the server's memory moved during the load.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Soak {
    /// Seconds between two readings.
    pub rss_every_secs: f64,
    /// Every reading, from the start of the load to its end.
    pub samples: Vec<RssSample>,
    /// The growth is measured from the first reading at or after this many seconds.
    pub from_secs: f64,
    /// VmRSS at `from_secs`, KiB.
    pub rss_from_kib: u64,
    /// VmRSS at the end of the load, KiB.
    pub rss_last_kib: u64,
    /// The largest reading, KiB.
    pub rss_max_kib: u64,
    /// `rss_last_kib - rss_from_kib`.
    pub growth_kib: i64,
    /// `growth_kib` as a share of `rss_from_kib`, percent.
    pub growth_pct: f64,
    /// Least-squares slope of the readings since `from_secs`, KiB per hour.
    pub growth_kib_per_hour: f64,
    /// `growth_kib_per_hour` as a share of `rss_from_kib`, percent per hour.
    pub growth_pct_per_hour: f64,
    /// `/metrics` scrapes during the load (`--scrape-every`), when asked for.
    pub scrapes: Option<Scrapes>,
}

/// `/metrics` scrapes during the load.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Scrapes {
    /// Seconds between two scrapes.
    pub every_secs: f64,
    /// Scrapes answered with 200.
    pub ok: u64,
    /// Scrapes that failed or got another status.
    pub failed: u64,
    /// Time to the whole answer, µs.
    pub duration_us: LatencySummary,
    /// The largest page, bytes.
    pub bytes_max: usize,
}

/// The growth figures of `samples` (in time order), measured from the first sample at or after
/// `from_secs`; zero growth when fewer than two samples are that late.
pub fn growth(samples: &[RssSample], every_secs: f64, from_secs: f64) -> Soak {
    let late: Vec<RssSample> = samples
        .iter()
        .copied()
        .filter(|s| s.secs >= from_secs)
        .collect();
    let first = late.first().copied();
    let last = samples.last().copied();
    let rss_from = first.map_or(0, |s| s.rss_kib);
    let rss_last = last.map_or(0, |s| s.rss_kib);
    let growth_kib = if late.len() >= 2 {
        rss_last as i64 - rss_from as i64
    } else {
        0
    };
    let per_hour = slope_per_sec(&late) * 3600.0;
    let pct = |kib: f64| {
        if rss_from > 0 {
            kib * 100.0 / rss_from as f64
        } else {
            0.0
        }
    };
    Soak {
        rss_every_secs: every_secs,
        samples: samples.to_vec(),
        from_secs: first.map_or(from_secs, |s| s.secs),
        rss_from_kib: rss_from,
        rss_last_kib: rss_last,
        rss_max_kib: samples.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        growth_kib,
        growth_pct: pct(growth_kib as f64),
        growth_kib_per_hour: per_hour,
        growth_pct_per_hour: pct(per_hour),
        scrapes: None,
    }
}

/// Least-squares slope of RSS over time, KiB per second (0 with fewer than two distinct times).
fn slope_per_sec(samples: &[RssSample]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0.0;
    }
    let mean_t = samples.iter().map(|s| s.secs).sum::<f64>() / n;
    let mean_r = samples.iter().map(|s| s.rss_kib as f64).sum::<f64>() / n;
    let (mut cov, mut var) = (0.0, 0.0);
    for s in samples {
        let dt = s.secs - mean_t;
        cov += dt * (s.rss_kib as f64 - mean_r);
        var += dt * dt;
    }
    if var > 0.0 { cov / var } else { 0.0 }
}

/// Where growth is measured from: `soak_from`, or half the load when that is shorter.
pub fn from_secs(soak_from: f64, duration: f64) -> f64 {
    soak_from.min(duration / 2.0).max(0.0)
}

/// The readings (of `pid`, when known) and the scrapes (of `scrape`: the admin API and the
/// interval, when asked for) from `start` to `deadline`, both at once.
pub async fn run(
    pid: Option<u32>,
    rss_every: Duration,
    scrape: Option<(Admin, Duration)>,
    start: Instant,
    deadline: Instant,
) -> (Vec<RssSample>, Option<Scrapes>) {
    let readings = async {
        match pid {
            Some(pid) => sample_rss(pid, rss_every, start, deadline).await,
            None => Vec::new(),
        }
    };
    let scrapes = async {
        match scrape {
            Some((admin, every)) => Some(scrape_metrics(admin, every, start, deadline).await),
            None => None,
        }
    };
    tokio::join!(readings, scrapes)
}

/// Reads the RSS of `pid` at `start` and every `every` after it until `deadline`, and once more
/// at the deadline.
pub async fn sample_rss(
    pid: u32,
    every: Duration,
    start: Instant,
    deadline: Instant,
) -> Vec<RssSample> {
    let read = |at: Instant| {
        stats::sample(pid).map(|s| RssSample {
            secs: at.duration_since(start).as_secs_f64(),
            rss_kib: s.rss_kib,
        })
    };
    let mut out = Vec::new();
    let mut ticks = Ticks::new(start, every, deadline);
    while ticks.next().await {
        out.extend(read(Instant::now()));
    }
    out.extend(read(Instant::now()));
    out
}

/// Scrapes `/metrics` every `every` from `start + every` until `deadline`, one at a time (a slow
/// answer delays the next scrape rather than stacking them, as Prometheus does).
pub async fn scrape_metrics(
    admin: Admin,
    every: Duration,
    start: Instant,
    deadline: Instant,
) -> Scrapes {
    let mut tally = Scrapes {
        every_secs: every.as_secs_f64(),
        ..Scrapes::default()
    };
    let mut took = stats::Histogram::default();
    let mut ticks = Ticks::new(start + every, every, deadline);
    while ticks.next().await {
        let t0 = Instant::now();
        match admin.get("/metrics").await {
            Ok((200, body)) => {
                took.record(t0.elapsed().as_micros() as u64);
                tally.ok += 1;
                tally.bytes_max = tally.bytes_max.max(body.len());
            }
            Ok((status, _)) => {
                eprintln!("roomcast bench: GET /metrics answered {status}");
                tally.failed += 1;
            }
            Err(e) => {
                eprintln!("roomcast bench: {e}");
                tally.failed += 1;
            }
        }
    }
    tally.duration_us = took.summary();
    tally
}

/// Ticks at `first` and then every `period`, while that is before `deadline`; a tick that runs
/// late delays the next one rather than bunching them.
struct Ticks {
    every: tokio::time::Interval,
    deadline: Instant,
}

impl Ticks {
    fn new(first: Instant, period: Duration, deadline: Instant) -> Self {
        let mut every = tokio::time::interval_at(first, period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticks { every, deadline }
    }

    /// Waits for the next tick; false once the deadline came first.
    async fn next(&mut self) -> bool {
        tokio::select! {
            at = self.every.tick() => at < self.deadline,
            _ = tokio::time::sleep_until(self.deadline) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(points: &[(f64, u64)]) -> Vec<RssSample> {
        points
            .iter()
            .map(|&(secs, rss_kib)| RssSample { secs, rss_kib })
            .collect()
    }

    #[test]
    fn linear_growth_is_measured_from_the_settle_point() {
        // 100 MiB at the start, growing 10 KiB a second throughout.
        let s: Vec<RssSample> = (0..=60)
            .map(|i| RssSample {
                secs: f64::from(i) * 10.0,
                rss_kib: 102_400 + 100 * i as u64,
            })
            .collect();
        let g = growth(&s, 10.0, 120.0);
        assert_eq!(g.from_secs, 120.0);
        assert_eq!(g.rss_from_kib, 102_400 + 1_200);
        assert_eq!(g.rss_last_kib, 102_400 + 6_000);
        assert_eq!(g.growth_kib, 4_800);
        assert!((g.growth_kib_per_hour - 36_000.0).abs() < 1e-6, "{g:?}");
        let pct = 4_800.0 * 100.0 / 103_600.0;
        assert!((g.growth_pct - pct).abs() < 1e-9, "{g:?}");
        assert_eq!(g.rss_max_kib, 108_400);
        assert_eq!(g.samples.len(), 61);
    }

    #[test]
    fn a_flat_series_after_warm_up_shows_no_growth() {
        // Warm-up growth before the settle point does not count; one dip does not make a trend.
        let s = series(&[
            (0.0, 1_000),
            (60.0, 5_000),
            (120.0, 9_000),
            (180.0, 9_000),
            (240.0, 8_990),
            (300.0, 9_000),
        ]);
        let g = growth(&s, 60.0, 120.0);
        assert_eq!(g.growth_kib, 0);
        assert!(g.growth_kib_per_hour.abs() < 200.0, "{g:?}");
        assert_eq!(g.rss_max_kib, 9_000);
    }

    #[test]
    fn too_few_late_samples_report_no_growth() {
        let g = growth(&series(&[(0.0, 10), (5.0, 50)]), 5.0, 120.0);
        assert_eq!((g.growth_kib, g.growth_kib_per_hour), (0, 0.0));
        assert_eq!(g.rss_last_kib, 50);
        let empty = growth(&[], 5.0, 0.0);
        assert_eq!((empty.rss_from_kib, empty.growth_pct), (0, 0.0));
    }

    #[test]
    fn the_settle_point_is_at_most_half_the_load() {
        assert_eq!(from_secs(120.0, 600.0), 120.0);
        assert_eq!(from_secs(120.0, 60.0), 30.0);
        assert_eq!(from_secs(0.0, 60.0), 0.0);
    }
}
