//! The request histograms, counted by the workers into fixed buckets and rendered at the
//! scrape in the exporter's text.
//!
//! Through the `metrics` facade each sample was a clock read and a push onto the exporter's
//! lock-free sample list, six a request (some 1,100 instructions on the worker), and the
//! upkeep thread then drained every sample into the buckets. Here a worker finds the
//! sample's bucket itself and bumps three plain counters (its bucket, the count, the sum),
//! so the scrape reads counts, not samples. The text is the exporter's, line for line
//! (`# HELP`, `# TYPE`, cumulative `_bucket` lines with `le`, `+Inf`, `_sum`, `_count`, a blank
//! line after each family): the test `the_text_is_the_exporters` renders the same samples
//! both ways.
//!
//! Each [`LocalHistogram`] has one writer (it records through `&mut self` and is not
//! `Clone`); the scrape only loads. Workers with the same label set each have their own
//! cells, summed at the scrape, as the exporter's one handle per label set would count them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use metrics_exporter_prometheus::formatting::{
    sanitize_label_key, sanitize_label_value, write_help_line, write_type_line,
};

/// One series' counters.
struct Cells {
    /// Upper bounds, ascending.
    bounds: &'static [f64],
    /// Samples by the first bound at or above them (not cumulative); a sample above every
    /// bound (or NaN) is in none of them, only in `count`.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum of the samples, as `f64` bits.
    sum: AtomicU64,
}

/// A registered series: its family, its labels as written (`k="v",k2="v2"`), its cells.
struct Series {
    name: &'static str,
    labels: String,
    cells: Arc<Cells>,
}

/// Every series made so far, in the order they were made. A series whose writer is gone is
/// kept (its counts stay in the text, as the exporter keeps them) and handed to the next
/// writer of the same label set.
static SERIES: Mutex<Vec<Series>> = Mutex::new(Vec::new());

/// The `# HELP` text of each family rendered here.
static HELP: Mutex<Vec<(&'static str, &'static str)>> = Mutex::new(Vec::new());

/// Sets family `name`'s `# HELP` text (as `describe_histogram!` would).
pub fn describe(name: &'static str, help: &'static str) {
    let mut help_of = HELP.lock().unwrap_or_else(PoisonError::into_inner);
    match help_of.iter_mut().find(|(n, _)| *n == name) {
        Some(entry) => entry.1 = help,
        None => help_of.push((name, help)),
    }
}

/// A histogram series of one writer (a worker's handle).
pub struct LocalHistogram {
    cells: Arc<Cells>,
}

impl LocalHistogram {
    /// The series `name{labels}` with upper bounds `bounds` (ascending), registered for the
    /// scrape; it shows (with zero counts) from now on, as a registered exporter histogram
    /// does.
    pub fn new(name: &'static str, bounds: &'static [f64], labels: &[(&str, &str)]) -> Self {
        let mut text = String::new();
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            let _ = write!(
                text,
                "{}=\"{}\"",
                sanitize_label_key(k),
                sanitize_label_value(v)
            );
        }
        let mut series = SERIES.lock().unwrap_or_else(PoisonError::into_inner);
        // A series of the same labels whose writer is gone takes its new writer.
        if let Some(s) = series.iter().find(|s| {
            s.name == name
                && s.labels == text
                && std::ptr::eq(s.cells.bounds, bounds)
                && Arc::strong_count(&s.cells) == 1
        }) {
            // The last writer's stores happened before its `Arc` was dropped (a release):
            // this makes them visible to the new writer's loads.
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            return LocalHistogram {
                cells: Arc::clone(&s.cells),
            };
        }
        let cells = Arc::new(Cells {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        });
        series.push(Series {
            name,
            labels: text,
            cells: Arc::clone(&cells),
        });
        LocalHistogram { cells }
    }

    /// Counts `sample`. Plain loads and stores: this handle is the series' one writer.
    pub fn record(&mut self, sample: f64) {
        let cells = &*self.cells;
        if let Some(i) = cells.bounds.iter().position(|b| sample <= *b) {
            if let Some(bucket) = cells.buckets.get(i) {
                bump(bucket, 1);
            }
        }
        bump(&cells.count, 1);
        let sum = f64::from_bits(cells.sum.load(Relaxed)) + sample;
        cells.sum.store(sum.to_bits(), Relaxed);
    }
}

fn bump(cell: &AtomicU64, n: u64) {
    cell.store(cell.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Appends every family in the exporter's text format: families in the order their first
/// series was made, label sets in the order first made, the series of equal labels summed.
pub fn render(out: &mut String) {
    let series = SERIES.lock().unwrap_or_else(PoisonError::into_inner);
    let help = HELP.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let mut names: Vec<&'static str> = Vec::new();
    for s in series.iter() {
        if !names.contains(&s.name) {
            names.push(s.name);
        }
    }
    for name in names {
        // Equal labels merged.
        let mut merged: Vec<Merged> = Vec::new();
        for s in series.iter().filter(|s| s.name == name) {
            let c = &*s.cells;
            let at = match merged
                .iter()
                .position(|m| m.labels == s.labels && std::ptr::eq(m.bounds, c.bounds))
            {
                Some(at) => at,
                None => {
                    merged.push(Merged {
                        labels: &s.labels,
                        bounds: c.bounds,
                        buckets: vec![0; c.bounds.len()],
                        count: 0,
                        sum: 0.0,
                    });
                    merged.len() - 1
                }
            };
            let m = &mut merged[at];
            for (total, b) in m.buckets.iter_mut().zip(c.buckets.iter()) {
                *total += b.load(Relaxed);
            }
            m.count += c.count.load(Relaxed);
            m.sum += f64::from_bits(c.sum.load(Relaxed));
        }
        if let Some((_, text)) = help.iter().find(|(n, _)| *n == name) {
            write_help_line(out, name, None, None, text);
        }
        write_type_line(out, name, None, None, "histogram");
        for m in merged {
            let mut below = 0;
            for (le, n) in m.bounds.iter().zip(m.buckets) {
                below += n;
                line(out, name, "bucket", m.labels, Some(le), below);
            }
            line(out, name, "bucket", m.labels, Some(&"+Inf"), m.count);
            line::<&str, f64>(out, name, "sum", m.labels, None, m.sum);
            line::<&str, u64>(out, name, "count", m.labels, None, m.count);
        }
        out.push('\n');
    }
}

/// A label set's series of one family, summed for the scrape.
struct Merged<'a> {
    labels: &'a str,
    bounds: &'static [f64],
    /// Not cumulative, as in [`Cells`].
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

/// One line as the exporter's `write_metric_line` writes it (no unit suffix; the names here
/// end in none of `_bucket`, `_sum`, `_count`).
fn line<L: std::fmt::Display, V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &str,
    le: Option<&L>,
    value: V,
) {
    out.push_str(name);
    out.push('_');
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        out.push_str(labels);
        if let Some(le) = le {
            if !labels.is_empty() {
                out.push(',');
            }
            let _ = write!(out, "le=\"{le}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::{Key, Label, Recorder as _};
    use metrics_exporter_prometheus::PrometheusBuilder;

    static BOUNDS: [f64; 4] = [0.001, 0.5, 1.0, 120.0];

    /// The lines of each family, as a set (the exporter's family and label-set order is a
    /// hash map's).
    fn families(text: &str) -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = text
            .split("\n\n")
            .filter(|f| !f.trim().is_empty())
            .map(|f| {
                let mut lines: Vec<String> = f.lines().map(str::to_owned).collect();
                lines.sort();
                lines
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_text_is_the_exporters() {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BOUNDS)
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        let meta = metrics::Metadata::new("t", metrics::Level::INFO, None);
        recorder.describe_histogram(
            "test_local_a_seconds".into(),
            None,
            "A \"quoted\"\nhelp.".into(),
        );
        describe("test_local_a_seconds", "A \"quoted\"\nhelp.");
        let samples = [
            0.0, 0.0005, 0.001, 0.0011, 0.3, 0.5, 1.0, 7.25, 120.0, 121.0, 1e9, -3.0,
        ];
        let labels = [
            vec![("model", "m"), ("stream", "false")],
            vec![("model", "we\"ird\\\n"), ("stream", "true")],
        ];
        let mut ours = Vec::new();
        for (i, set) in labels.iter().enumerate() {
            let key = Key::from_parts(
                "test_local_a_seconds",
                set.iter()
                    .map(|(k, v)| Label::new(*k, v.to_string()))
                    .collect::<Vec<_>>(),
            );
            let theirs = recorder.register_histogram(&key, &meta);
            // Two writers of the first label set, as two workers: their counts add up.
            let mut a = LocalHistogram::new("test_local_a_seconds", &BOUNDS, set);
            let mut b = LocalHistogram::new("test_local_a_seconds", &BOUNDS, set);
            for (j, s) in samples.iter().enumerate().skip(i) {
                theirs.record(*s);
                let writer = if j % 2 == 0 { &mut a } else { &mut b };
                writer.record(*s);
            }
            ours.push((a, b));
        }
        // A registered series with no sample shows with zero counts.
        let key = Key::from_parts("test_local_b_seconds", vec![Label::new("op", "chat")]);
        let _theirs = recorder.register_histogram(&key, &meta);
        let _empty = LocalHistogram::new("test_local_b_seconds", &BOUNDS, &[("op", "chat")]);

        let mut text = String::new();
        render(&mut text);
        // Only this test's families (others' tests may have made theirs).
        let text: String = text
            .split_inclusive("\n\n")
            .filter(|f| f.contains("test_local_a_") || f.contains("test_local_b_"))
            .collect();
        assert_eq!(families(&text), families(&handle.render()), "{text}");
        assert!(
            text.contains(
                "test_local_a_seconds_bucket{model=\"m\",stream=\"false\",le=\"0.001\"} 4\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_series_whose_writer_is_gone_passes_to_the_next() {
        let labels = [("k", "v")];
        let mut first = LocalHistogram::new("test_local_c_seconds", &BOUNDS, &labels);
        first.record(0.2);
        drop(first);
        let mut second = LocalHistogram::new("test_local_c_seconds", &BOUNDS, &labels);
        second.record(0.3);
        let mut text = String::new();
        render(&mut text);
        assert!(
            text.contains("test_local_c_seconds_count{k=\"v\"} 2\n"),
            "{text}"
        );
        let series = SERIES.lock().unwrap();
        assert_eq!(
            series
                .iter()
                .filter(|s| s.name == "test_local_c_seconds")
                .count(),
            1
        );
    }
}
