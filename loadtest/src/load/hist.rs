//! HDR histograms in microseconds and the percentile tables built from them.
//!
//! Every latency the generator records goes through [`Hist`]: microsecond
//! resolution, 3 significant figures, values clamped into `1 µs ..= 1 hour`
//! so a pathological sample saturates instead of failing. Workers record into
//! their own histograms and the coordinator merges them with [`Hist::add`].

use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest trackable value: one hour in microseconds.
const MAX_US: u64 = 3_600_000_000;
/// Significant figures kept by every histogram.
const SIGFIG: u8 = 3;

/// A latency histogram in microseconds (3 significant figures).
#[derive(Clone, Debug)]
pub struct Hist {
    inner: Histogram<u64>,
}

impl Hist {
    /// An empty histogram covering 1 µs to 1 hour.
    ///
    /// Fails only if hdrhistogram rejects the constant bounds, which a unit
    /// test rules out; callers create histograms once per run, not per sample.
    pub fn new() -> io::Result<Self> {
        Histogram::new_with_bounds(1, MAX_US, SIGFIG)
            .map(|inner| Self { inner })
            .map_err(|e| io::Error::other(format!("histogram: {e:?}")))
    }

    /// Records one duration (clamped to the trackable range).
    #[inline]
    pub fn record(&mut self, d: Duration) {
        self.record_us(u64::try_from(d.as_micros()).unwrap_or(MAX_US));
    }

    /// Records one value in microseconds (clamped to the trackable range).
    #[inline]
    pub fn record_us(&mut self, us: u64) {
        self.inner.saturating_record(us.clamp(1, MAX_US));
    }

    /// Adds every sample of `other` into `self`.
    pub fn add(&mut self, other: &Hist) {
        // Both histograms share bounds, so `add` only fails for an auto-resize
        // fallback that grew past ours; count such samples as saturated.
        if self.inner.add(&other.inner).is_err() {
            for v in other.inner.iter_recorded() {
                self.inner
                    .saturating_record_n(v.value_iterated_to().min(MAX_US), v.count_at_value());
            }
        }
    }

    /// Number of recorded samples.
    pub fn len(&self) -> u64 {
        self.inner.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Value at quantile `q` (0.0..=1.0) in microseconds; 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.inner.is_empty() {
            0
        } else {
            self.inner.value_at_quantile(q)
        }
    }

    /// Number of samples at or above `us` microseconds.
    pub fn count_at_or_above_us(&self, us: u64) -> u64 {
        let below = if us <= 1 {
            0
        } else {
            self.inner.count_between(0, us - 1)
        };
        self.inner.len().saturating_sub(below)
    }

    /// The percentile summary of this histogram.
    pub fn percentiles(&self) -> Percentiles {
        if self.inner.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: self.inner.len(),
            min: self.inner.min(),
            mean: self.inner.mean().round() as u64,
            p50: self.inner.value_at_quantile(0.50),
            p90: self.inner.value_at_quantile(0.90),
            p99: self.inner.value_at_quantile(0.99),
            p999: self.inner.value_at_quantile(0.999),
            max: self.inner.max(),
        }
    }
}

/// Percentiles of one histogram, every value in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: u64,
    /// Smallest sample.
    pub min: u64,
    /// Arithmetic mean, rounded.
    pub mean: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl Percentiles {
    /// `self − baseline` at each percentile (µs, negative when faster).
    pub fn minus(&self, baseline: &Percentiles) -> AddedPercentiles {
        let d = |a: u64, b: u64| {
            i64::try_from(a).unwrap_or(i64::MAX) - i64::try_from(b).unwrap_or(i64::MAX)
        };
        AddedPercentiles {
            p50: d(self.p50, baseline.p50),
            p90: d(self.p90, baseline.p90),
            p99: d(self.p99, baseline.p99),
            p999: d(self.p999, baseline.p999),
            max: d(self.max, baseline.max),
        }
    }
}

/// Latency a target adds over a baseline at each percentile, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedPercentiles {
    /// Added median.
    pub p50: i64,
    /// Added 90th percentile.
    pub p90: i64,
    /// Added 99th percentile.
    pub p99: i64,
    /// Added 99.9th percentile.
    pub p999: i64,
    /// Added maximum.
    pub max: i64,
}

/// Formats microseconds for humans: `850µs`, `12.3ms`, `4.20s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 100_000 {
        format!("{:.2}ms", us as f64 / 1_000.0)
    } else if us < 10_000_000 {
        format!("{:.0}ms", us as f64 / 1_000.0)
    } else {
        format!("{:.2}s", us as f64 / 1_000_000.0)
    }
}

/// Formats a signed microsecond delta for humans (`+1.20ms`, `-40µs`).
pub fn fmt_delta_us(us: i64) -> String {
    let sign = if us < 0 { "-" } else { "+" };
    format!("{sign}{}", fmt_us(us.unsigned_abs()))
}

/// A plain-text table with a header row and right-aligned columns after the first.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table whose first row is `header`.
    pub fn new<S: AsRef<str>>(header: &[S]) -> Self {
        Self {
            rows: vec![header.iter().map(|s| s.as_ref().to_owned()).collect()],
        }
    }

    /// Appends one row.
    pub fn row(&mut self, cells: Vec<String>) -> &mut Self {
        self.rows.push(cells);
        self
    }

    /// Appends a percentile row labelled `label`.
    pub fn percentile_row(&mut self, label: &str, p: &Percentiles) -> &mut Self {
        self.row(vec![
            label.to_owned(),
            p.count.to_string(),
            fmt_us(p.p50),
            fmt_us(p.p90),
            fmt_us(p.p99),
            fmt_us(p.p999),
            fmt_us(p.max),
        ])
    }

    /// Appends an added-latency row labelled `label`.
    pub fn added_row(&mut self, label: &str, a: &AddedPercentiles) -> &mut Self {
        self.row(vec![
            label.to_owned(),
            String::new(),
            fmt_delta_us(a.p50),
            fmt_delta_us(a.p90),
            fmt_delta_us(a.p99),
            fmt_delta_us(a.p999),
            fmt_delta_us(a.max),
        ])
    }

    /// The header used for percentile tables.
    pub fn percentile_header() -> Self {
        Self::new(&["", "count", "p50", "p90", "p99", "p99.9", "max"])
    }

    /// Renders the table with two spaces between columns.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0usize; cols];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                if i == 0 {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                } else {
                    line.push_str("  ");
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_merge() {
        let mut a = Hist::new().unwrap();
        let mut b = Hist::new().unwrap();
        for us in 1..=1000 {
            a.record_us(us);
        }
        b.record(Duration::from_secs(7200));
        a.add(&b);
        let p = a.percentiles();
        assert_eq!(p.count, 1001);
        assert!((499..=501).contains(&p.p50), "{p:?}");
        assert!(p.max >= MAX_US - MAX_US / 1000);
        assert_eq!(a.count_at_or_above_us(1000), 2);
    }

    #[test]
    fn added_is_signed() {
        let a = Percentiles {
            p50: 10,
            p99: 5,
            ..Default::default()
        };
        let b = Percentiles {
            p50: 4,
            p99: 9,
            ..Default::default()
        };
        let d = a.minus(&b);
        assert_eq!((d.p50, d.p99), (6, -4));
        assert_eq!(fmt_delta_us(-1500), "-1.50ms");
    }

    #[test]
    fn table_aligns() {
        let mut t = Table::new(&["a", "bb"]);
        t.row(vec!["xyz".into(), "1".into()]);
        assert_eq!(t.render(), "a    bb\nxyz   1\n");
    }
}
