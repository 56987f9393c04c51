//! Live traffic for the admin page, from the gateway's own Prometheus counters: requests/s,
//! errors, tokens/s and p50/p99 latency and time to first token per model group, over the
//! last few seconds.
//!
//! Nothing is added to the request path: each call renders the same text `/metrics` serves,
//! reads the families below from it ([`Snapshot::parse`]) and compares it with an earlier
//! snapshot kept here ([`Window`]), the way a dashboard compares two scrapes. Quantiles come
//! from the histogram buckets, interpolated within a bucket as Prometheus'
//! `histogram_quantile` does, so they are as fine as the buckets (a bucket bound, not an
//! exact value).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// How far back rates and quantiles look, when the window has a snapshot that old.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Snapshots older than this are dropped.
const KEEP: Duration = Duration::from_secs(60);
/// Snapshots kept at most (one per call; the page polls every few seconds).
const MAX_SNAPSHOTS: usize = 64;

/// One histogram: cumulative counts by upper bound (`le`, as f64 bits for ordering).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets(BTreeMap<u64, f64>);

impl Buckets {
    fn add(&mut self, le: f64, count: f64) {
        // Positive floats order like their bits; `+Inf` sorts last.
        *self.0.entry(le.to_bits()).or_default() += count;
    }

    fn minus(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|(le, c)| {
                    (
                        *le,
                        (c - earlier.0.get(le).copied().unwrap_or(0.0)).max(0.0),
                    )
                })
                .collect(),
        )
    }

    /// The `q` quantile (0..=1), interpolated in its bucket; `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.0.values().next_back().copied()?;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for (le, count) in &self.0 {
            let le = f64::from_bits(*le);
            if *count >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let width = count - lower.1;
                let within = if width > 0.0 {
                    (rank - lower.1) / width
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * within);
            }
            lower = (le, *count);
        }
        Some(lower.0)
    }
}

/// One model group's counters at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelCounters {
    /// Requests answered.
    pub requests: f64,
    /// Answered 4xx.
    pub client_errors: f64,
    /// Answered 5xx.
    pub server_errors: f64,
    /// Input tokens.
    pub input_tokens: f64,
    /// Output tokens.
    pub output_tokens: f64,
    /// Request duration, seconds.
    pub duration: Buckets,
    /// Time to first token, seconds.
    pub ttft: Buckets,
}

/// Every model group's counters at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot(pub BTreeMap<String, ModelCounters>);

/// One sample line: name, labels, value.
type Sample<'a> = (&'a str, Vec<(&'a str, String)>, f64);

/// Parses one line of the Prometheus text format; `None` for comments and anything else.
fn parse_line(line: &str) -> Option<Sample<'_>> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = Vec::new();
    let mut rest = rest;
    if let Some(mut body) = rest.strip_prefix('{') {
        loop {
            body = body.trim_start_matches(',');
            if let Some(after) = body.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = body.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break i,
                    c => value.push(c),
                }
            };
            labels.push((key, value));
            body = after.get(end + 1..)?;
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

fn label<'a>(labels: &'a [(&str, String)], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

impl Snapshot {
    /// The families this page shows, from the Prometheus text `/metrics` serves.
    pub fn parse(text: &str) -> Snapshot {
        let mut out: BTreeMap<String, ModelCounters> = BTreeMap::new();
        for (name, labels, value) in text.lines().filter_map(parse_line) {
            // `sluice_*` series name the model group `model`, `gen_ai_*` series
            // `gen_ai_request_model` (the GenAI conventions' name).
            let Some(model) =
                label(&labels, "model").or_else(|| label(&labels, "gen_ai_request_model"))
            else {
                continue;
            };
            let bucket = || {
                label(&labels, "le").and_then(|le| match le {
                    "+Inf" => Some(f64::INFINITY),
                    v => v.parse().ok(),
                })
            };
            let m = out.entry(model.to_string()).or_default();
            match name {
                "sluice_requests_total" => {
                    m.requests += value;
                    match label(&labels, "status_class") {
                        Some("4xx") => m.client_errors += value,
                        Some("5xx") => m.server_errors += value,
                        _ => {}
                    }
                }
                "sluice_tokens_total" => match label(&labels, "gen_ai_token_type") {
                    Some("input") => m.input_tokens += value,
                    Some("output") => m.output_tokens += value,
                    _ => {}
                },
                "sluice_request_duration_seconds_bucket" => {
                    if let Some(le) = bucket() {
                        m.duration.add(le, value);
                    }
                }
                "gen_ai_server_time_to_first_token_seconds_bucket" => {
                    if let Some(le) = bucket() {
                        m.ttft.add(le, value);
                    }
                }
                _ => {}
            }
        }
        Snapshot(out)
    }
}

/// One model group's traffic over a window.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModelTraffic {
    /// The model group.
    pub model: String,
    /// Requests per second.
    pub requests_per_s: f64,
    /// 4xx answers per second.
    pub client_errors_per_s: f64,
    /// 5xx answers per second.
    pub server_errors_per_s: f64,
    /// Input tokens per second.
    pub input_tokens_per_s: f64,
    /// Output tokens per second.
    pub output_tokens_per_s: f64,
    /// Median request duration, ms (`None` without requests in the window).
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile request duration, ms.
    pub latency_p99_ms: Option<f64>,
    /// Median time to first token, ms.
    pub ttft_p50_ms: Option<f64>,
    /// 99th percentile time to first token, ms.
    pub ttft_p99_ms: Option<f64>,
    /// Requests since start.
    pub requests_total: f64,
    /// 4xx and 5xx answers since start.
    pub errors_total: f64,
    /// Input and output tokens since start.
    pub tokens_total: f64,
}

/// Rates and quantiles between `earlier` and `now`, `seconds` apart.
pub fn compare(earlier: &Snapshot, now: &Snapshot, seconds: f64) -> Vec<ModelTraffic> {
    let empty = ModelCounters::default();
    let per_s = |d: f64| if seconds > 0.0 { d / seconds } else { 0.0 };
    let ms = |v: Option<f64>| v.map(|s| (s * 1e6).round() / 1e3);
    now.0
        .iter()
        .map(|(model, n)| {
            let e = earlier.0.get(model).unwrap_or(&empty);
            let duration = n.duration.minus(&e.duration);
            let ttft = n.ttft.minus(&e.ttft);
            ModelTraffic {
                model: model.clone(),
                requests_per_s: per_s(n.requests - e.requests),
                client_errors_per_s: per_s(n.client_errors - e.client_errors),
                server_errors_per_s: per_s(n.server_errors - e.server_errors),
                input_tokens_per_s: per_s(n.input_tokens - e.input_tokens),
                output_tokens_per_s: per_s(n.output_tokens - e.output_tokens),
                latency_p50_ms: ms(duration.quantile(0.5)),
                latency_p99_ms: ms(duration.quantile(0.99)),
                ttft_p50_ms: ms(ttft.quantile(0.5)),
                ttft_p99_ms: ms(ttft.quantile(0.99)),
                requests_total: n.requests,
                errors_total: n.client_errors + n.server_errors,
                tokens_total: n.input_tokens + n.output_tokens,
            }
        })
        .collect()
}

/// Earlier snapshots, oldest first, for [`Window::observe`].
#[derive(Debug, Default)]
pub struct Window {
    snapshots: VecDeque<(Instant, Snapshot)>,
}

impl Window {
    /// Adds `snap` taken at `now` and returns the traffic since the newest snapshot at least
    /// [`WINDOW`] old (or the oldest kept; or since `started`, from zero, on the first call),
    /// with the seconds it covers.
    pub fn observe(
        &mut self,
        now: Instant,
        snap: Snapshot,
        started: Instant,
    ) -> (f64, Vec<ModelTraffic>) {
        while self.snapshots.len() >= MAX_SNAPSHOTS
            || self
                .snapshots
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > KEEP)
        {
            self.snapshots.pop_front();
        }
        let base = self
            .snapshots
            .iter()
            .rev()
            .find(|(t, _)| now.saturating_duration_since(*t) >= WINDOW)
            .or(self.snapshots.front());
        let empty = Snapshot::default();
        let (since, earlier) = base.map_or((started, &empty), |(t, s)| (*t, s));
        let seconds = now.saturating_duration_since(since).as_secs_f64();
        let traffic = compare(earlier, &snap, seconds);
        self.snapshots.push_back((now, snap));
        (seconds, traffic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE sluice_requests_total counter
sluice_requests_total{model="m",deployment="p/x",provider="p",status_class="2xx",stream="false"} 8
sluice_requests_total{model="m",deployment="p/x",provider="p",status_class="5xx",stream="true"} 2
sluice_requests_total{model="a \"quoted\" name",status_class="4xx"} 1
sluice_tokens_total{model="m",gen_ai_token_type="input"} 100
sluice_tokens_total{model="m",gen_ai_token_type="output"} 40
sluice_request_duration_seconds_bucket{model="m",stream="false",le="0.1"} 5
sluice_request_duration_seconds_bucket{model="m",stream="false",le="0.5"} 8
sluice_request_duration_seconds_bucket{model="m",stream="false",le="+Inf"} 8
sluice_request_duration_seconds_bucket{model="m",stream="true",le="0.1"} 0
sluice_request_duration_seconds_bucket{model="m",stream="true",le="0.5"} 0
sluice_request_duration_seconds_bucket{model="m",stream="true",le="+Inf"} 2
sluice_request_duration_seconds_sum{model="m",stream="false"} 1.5
gen_ai_server_time_to_first_token_seconds_bucket{gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="m",le="0.1"} 3
gen_ai_server_time_to_first_token_seconds_bucket{gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="m",le="+Inf"} 4
sluice_build_info{version="0.1.0"} 1
"#;

    #[test]
    fn parses_the_families_it_shows() {
        let s = Snapshot::parse(TEXT);
        let m = &s.0["m"];
        assert_eq!(
            (m.requests, m.server_errors, m.client_errors),
            (10.0, 2.0, 0.0)
        );
        assert_eq!((m.input_tokens, m.output_tokens), (100.0, 40.0));
        assert_eq!(s.0["a \"quoted\" name"].client_errors, 1.0);
        // Buckets of both stream labels add up.
        assert_eq!(
            m.duration.0.values().copied().collect::<Vec<_>>(),
            [5.0, 8.0, 10.0]
        );
        // The GenAI series name the model group `gen_ai_request_model`.
        assert_eq!(m.ttft.0.values().copied().collect::<Vec<_>>(), [3.0, 4.0]);
        assert!(parse_line("garbage{").is_none() && parse_line("# HELP x").is_none());
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let mut b = Buckets::default();
        for (le, c) in [(0.1, 50.0), (0.5, 100.0), (f64::INFINITY, 100.0)] {
            b.add(le, c);
        }
        assert_eq!(b.quantile(0.5), Some(0.1));
        let p75 = b.quantile(0.75).unwrap();
        assert!((p75 - 0.3).abs() < 1e-9, "{p75}");
        assert_eq!(Buckets::default().quantile(0.5), None);
        // Everything past the last finite bound: that bound.
        let mut slow = Buckets::default();
        slow.add(1.0, 0.0);
        slow.add(f64::INFINITY, 3.0);
        assert_eq!(slow.quantile(0.99), Some(1.0));
    }

    #[test]
    fn rates_come_from_the_window() {
        let t0 = Instant::now();
        let mut w = Window::default();
        let first = Snapshot::parse(TEXT);
        let (secs, t) = w.observe(t0 + Duration::from_secs(5), first.clone(), t0);
        assert_eq!(secs, 5.0);
        let m = t.iter().find(|x| x.model == "m").unwrap();
        assert_eq!((m.requests_per_s, m.requests_total), (2.0, 10.0));
        // Ten more requests, all fast, 10 s later: the window starts at the first snapshot.
        let later = TEXT
            .replace(
                "status_class=\"2xx\",stream=\"false\"} 8",
                "status_class=\"2xx\",stream=\"false\"} 18",
            )
            .replace("le=\"0.1\"} 5", "le=\"0.1\"} 15")
            .replace("le=\"0.5\"} 8", "le=\"0.5\"} 18")
            .replace(
                "stream=\"false\",le=\"+Inf\"} 8",
                "stream=\"false\",le=\"+Inf\"} 18",
            );
        let (secs, t) = w.observe(t0 + Duration::from_secs(15), Snapshot::parse(&later), t0);
        assert_eq!(secs, 10.0);
        let m = t.iter().find(|x| x.model == "m").unwrap();
        assert_eq!((m.requests_per_s, m.requests_total), (1.0, 20.0));
        assert_eq!(m.server_errors_per_s, 0.0);
        assert!(m.latency_p99_ms.unwrap() <= 100.0, "{m:?}");
    }
}
