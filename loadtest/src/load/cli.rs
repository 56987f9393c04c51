//! The `sluice-load` command line: argument parsing and turning arguments
//! into specs for [`run`], [`compare`], [`frontier`] and [`streams`].
//! Bad arguments exit 64 before any load is sent; run failures exit 1.

use std::io::{self, IsTerminal, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use super::compare::{compare, CompareSpec, CompareTarget};
use super::idle::{idle, IdleSpec};
use super::sweep::{frontier, streams, FrontierSpec, StreamsSpec, DEFAULT_BOUNDS_MS};
use super::{default_body, run, Load, RunSpec, StreamSpec};

/// Exit code for unusable arguments (`EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;

/// Open-loop HTTP/1.1 load generator with HDR histograms.
#[derive(Debug, Parser)]
#[command(name = "sluice-load", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// One load test against one URL.
    Run {
        /// Target URL (`http://host:port/path`).
        #[arg(long)]
        url: String,
        /// The offered load.
        #[command(flatten)]
        load: LoadArgs,
        /// Stop after this long (`10s`, `500ms`, `2m`); default 10s unless --requests.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Stop after this many requests.
        #[arg(long)]
        requests: Option<u64>,
        /// Options shared by all subcommands.
        #[command(flatten)]
        common: Common,
    },
    /// The same load against a direct baseline and gateways, interleaved in rounds.
    Compare {
        /// The upstream (mock) directly: the baseline.
        #[arg(long)]
        direct: String,
        /// The gateway in front of the same upstream.
        #[arg(long)]
        gateway: String,
        /// The upstream pinned where the gateway runs: a second baseline.
        #[arg(long)]
        direct_xcore: Option<String>,
        /// nginx as a plain reverse proxy in front of the same upstream.
        #[arg(long)]
        nginx: Option<String>,
        /// Another system, `NAME=URL` (repeatable); runs after the gateway, before nginx.
        #[arg(long = "target", value_parser = parse_named)]
        targets: Vec<(String, String)>,
        /// A header for one target only, `NAME=HEADER: VALUE` (repeatable); NAME is a
        /// `--target` name or direct, direct-xcore, gateway, nginx.
        #[arg(long = "target-header", value_parser = parse_target_header)]
        target_headers: Vec<(String, (String, String))>,
        /// The offered load.
        #[command(flatten)]
        load: LoadArgs,
        /// Rounds; each visits every target once.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Length of one target's run in a round.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        round_duration: Duration,
        /// Options shared by all subcommands.
        #[command(flatten)]
        common: Common,
    },
    /// A rate sweep: the highest rate with p99 under 1, 5 and 10 ms and no errors.
    Frontier {
        /// Target URL.
        #[arg(long)]
        url: String,
        /// A baseline URL swept alongside (e.g. the mock directly).
        #[arg(long)]
        baseline: Option<String>,
        /// Offered rates, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        rates: Vec<f64>,
        /// Length of each step.
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        step_duration: Duration,
        /// Options shared by all subcommands.
        #[command(flatten)]
        common: Common,
    },
    /// Many idle keep-alive connections: open N, one request each, hold them silent, close.
    Idle {
        /// Target URL.
        #[arg(long)]
        url: String,
        /// Connections to open (one after another).
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Hold them at most this long (SIGTERM, SIGINT or SIGUSR1 ends the hold sooner).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        hold: Duration,
        /// Stop opening after this long and hold what is open.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        open_timeout: Duration,
        /// Connect, write and read timeout of each connection's one exchange.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
        /// Extra request header `name: value` (repeatable).
        #[arg(long = "header", short = 'H', value_parser = parse_header)]
        headers: Vec<(String, String)>,
        /// Model of the default chat body.
        #[arg(long, default_value = "mock-fast")]
        model: String,
        /// Write the JSON report here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// A sweep of concurrent streams: the most carried with no stalled or lost chunk.
    Streams {
        /// Target URL.
        #[arg(long)]
        url: String,
        /// Concurrent stream counts, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        counts: Vec<usize>,
        /// Length of each step (closed loop).
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        step_duration: Duration,
        /// Options shared by all subcommands.
        #[command(flatten)]
        common: Common,
    },
}

/// `--rate` or `--concurrency`.
#[derive(Debug, Clone, Copy, Args)]
#[group(required = true, multiple = false)]
pub struct LoadArgs {
    /// Open loop: requests per second in total.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Closed loop: requests in flight.
    #[arg(long)]
    pub concurrency: Option<usize>,
}

impl LoadArgs {
    fn load(self) -> Load {
        match (self.rate, self.concurrency) {
            (Some(r), _) => Load::Rate(r),
            (None, Some(c)) => Load::Concurrency(c),
            (None, None) => Load::Concurrency(1),
        }
    }
}

/// Options shared by all subcommands.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Extra request header `name: value` (repeatable).
    #[arg(long = "header", short = 'H', value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Send this file as the request body instead of the default chat request.
    #[arg(long)]
    pub body: Option<PathBuf>,
    /// Model of the default body.
    #[arg(long, default_value = "mock-fast")]
    pub model: String,
    /// Stream: `"stream": true` in the default body, and SSE accounting.
    #[arg(long)]
    pub stream: bool,
    /// Content events each stream must carry (fewer: lost).
    #[arg(long)]
    pub expect_chunks: Option<u32>,
    /// Expected gap between content events; the stall bound defaults to 10×.
    #[arg(long)]
    pub expect_gap_ms: Option<u64>,
    /// A content gap above this marks the stream stalled (default 1000).
    #[arg(long)]
    pub stall_ms: Option<u64>,
    /// Worker threads, each with its own runtime.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Pin worker threads to these cores, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub pin_cores: Vec<usize>,
    /// Connections per worker thread at most (open loop).
    #[arg(long, default_value_t = 1024)]
    pub max_conns: usize,
    /// Per-request timeout.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Sample this process's CPU and RSS (repeatable).
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

impl Common {
    /// The run spec for `url` under `load`, streaming when `stream`.
    pub fn spec(&self, url: &str, load: Load, stream: bool) -> io::Result<RunSpec> {
        let mut spec = RunSpec::new(url, load)?;
        spec.body = match &self.body {
            Some(path) => Bytes::from(std::fs::read(path).map_err(|e| {
                io::Error::new(e.kind(), format!("--body {}: {e}", path.display()))
            })?),
            None => default_body(&self.model, stream),
        };
        spec.headers = self.headers.clone();
        spec.stream =
            stream.then(|| StreamSpec::new(self.stall_ms, self.expect_gap_ms, self.expect_chunks));
        spec.threads = self.threads;
        spec.pin_cores = self.pin_cores.clone();
        spec.max_conns = self.max_conns;
        spec.timeout = self.timeout;
        spec.pids = self.pids.clone();
        spec.progress = !self.quiet;
        Ok(spec)
    }

    fn status(&self, line: &str) {
        if !self.quiet && io::stderr().is_terminal() {
            eprint!("\r\x1b[2K{line}");
            let _ = io::stderr().flush();
        }
    }

    fn status_done(&self) {
        self.status("");
    }

    fn write_json<T: Serialize>(&self, report: &T) -> io::Result<()> {
        if let Some(path) = &self.json {
            let text = serde_json::to_string_pretty(report).map_err(io::Error::other)?;
            std::fs::write(path, text + "\n")
                .map_err(|e| io::Error::new(e.kind(), format!("--json {}: {e}", path.display())))?;
        }
        Ok(())
    }
}

/// Parses `10s`, `250ms`, `2m`, `1h`, `1.5s` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("bad duration {s:?}"))
}

/// Parses `NAME=REST` (a `--target` or `--target-header`).
pub fn parse_named(s: &str) -> Result<(String, String), String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not `NAME=...`"))?;
    let name = name.trim();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        return Err(format!("bad target name in {s:?}"));
    }
    Ok((name.to_owned(), rest.to_owned()))
}

/// Parses `NAME=HEADER: VALUE`.
pub fn parse_target_header(s: &str) -> Result<(String, (String, String)), String> {
    let (name, header) = parse_named(s)?;
    Ok((name, parse_header(&header)?))
}

/// Parses `name: value`.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("header {s:?} is not `name: value`"))?;
    let k = k.trim();
    let valid = |b: u8| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b);
    if k.is_empty() || !k.bytes().all(valid) || v.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(format!("bad header {s:?}"));
    }
    Ok((k.to_owned(), v.trim().to_owned()))
}

/// The targets of `compare` in round order, each with its own headers.
/// Duplicate names, and headers for a name that is not a target, are
/// refused (a typo would otherwise send no key and measure 401s).
fn compare_targets(
    named: &[(&str, &str, bool)],
    headers: &[(String, (String, String))],
) -> io::Result<Vec<CompareTarget>> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    for (i, (name, _, _)) in named.iter().enumerate() {
        if named[..i].iter().any(|(n, _, _)| n == name) {
            return Err(bad(format!("two targets are named {name}")));
        }
    }
    if let Some((name, _)) = headers
        .iter()
        .find(|(n, _)| !named.iter().any(|(t, _, _)| t == n))
    {
        return Err(bad(format!(
            "--target-header for {name}, which is not a target"
        )));
    }
    Ok(named
        .iter()
        .map(|&(name, url, baseline)| CompareTarget {
            name: name.to_owned(),
            url: url.to_owned(),
            baseline,
            headers: headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, h)| h.clone())
                .collect(),
        })
        .collect())
}

/// Parses the process arguments, runs, prints; returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { 0 };
        }
    };
    match execute(&cli) {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
            eprintln!("sluice-load: {e}");
            EXIT_USAGE
        }
        Err(e) => {
            eprintln!("sluice-load: {e}");
            1
        }
    }
}

/// Runs a parsed command line; returns the human report (the JSON report,
/// if asked for, is already written).
pub fn execute(cli: &Cli) -> io::Result<String> {
    match &cli.command {
        Command::Run {
            url,
            load,
            duration,
            requests,
            common,
        } => {
            let mut spec = common.spec(url, load.load(), common.stream)?;
            spec.requests = *requests;
            spec.duration = match (duration, requests) {
                (Some(d), _) => Some(*d),
                (None, Some(_)) => None,
                (None, None) => Some(Duration::from_secs(10)),
            };
            let report = run(&spec)?;
            common.write_json(&report.summary())?;
            Ok(report.render())
        }
        Command::Compare {
            direct,
            gateway,
            direct_xcore,
            nginx,
            targets: extra,
            target_headers,
            load,
            rounds,
            round_duration,
            common,
        } => {
            let mut named: Vec<(&str, &str, bool)> = vec![("direct", direct, true)];
            if let Some(url) = direct_xcore {
                named.push(("direct-xcore", url, true));
            }
            named.push(("gateway", gateway, false));
            named.extend(extra.iter().map(|(n, u)| (n.as_str(), u.as_str(), false)));
            if let Some(url) = nginx {
                named.push(("nginx", url, false));
            }
            let targets = compare_targets(&named, target_headers)?;
            let spec = CompareSpec {
                base: common.spec(direct, load.load(), common.stream)?,
                targets,
                rounds: *rounds,
                round_duration: *round_duration,
            };
            let report = compare(&spec, |r, name| {
                common.status(&format!("round {}/{rounds}: {name}", r + 1))
            })?;
            common.status_done();
            common.write_json(&report)?;
            Ok(report.render())
        }
        Command::Frontier {
            url,
            baseline,
            rates,
            step_duration,
            common,
        } => {
            let mut targets = vec![("target".to_owned(), url.clone())];
            if let Some(b) = baseline {
                targets.insert(0, ("baseline".to_owned(), b.clone()));
            }
            let spec = FrontierSpec {
                base: common.spec(url, Load::Rate(1.0), common.stream)?,
                targets,
                rates: rates.clone(),
                step_duration: *step_duration,
                bounds_ms: DEFAULT_BOUNDS_MS.to_vec(),
            };
            let report = frontier(&spec, |rate, name| {
                common.status(&format!("{name} at {rate:.0}/s"))
            })?;
            common.status_done();
            common.write_json(&report)?;
            Ok(report.render())
        }
        Command::Idle {
            url,
            connections,
            hold,
            open_timeout,
            timeout,
            headers,
            model,
            json,
        } => {
            let endpoint = super::Endpoint::parse(url)?;
            let request = endpoint
                .request_bytes(headers, &default_body(model, false))
                .to_vec();
            let spec = IdleSpec {
                endpoint,
                request,
                connections: *connections,
                hold: *hold,
                open_timeout: *open_timeout,
                io_timeout: *timeout,
            };
            let report = idle(&spec, |n| {
                println!("holding {n} connections");
                let _ = io::stdout().flush();
            })?;
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report).map_err(io::Error::other)?;
                std::fs::write(path, text + "\n").map_err(|e| {
                    io::Error::new(e.kind(), format!("--json {}: {e}", path.display()))
                })?;
            }
            Ok(report.render())
        }
        Command::Streams {
            url,
            counts,
            step_duration,
            common,
        } => {
            let spec = StreamsSpec {
                base: common.spec(url, Load::Concurrency(1), true)?,
                counts: counts.clone(),
                step_duration: *step_duration,
            };
            let report = streams(&spec, |n| common.status(&format!("{n} concurrent streams")))?;
            common.status_done();
            common.write_json(&report)?;
            Ok(report.render())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("fast").is_err() && parse_duration("3d").is_err());
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("Authorization: Bearer sk-1"),
            Ok(("Authorization".into(), "Bearer sk-1".into()))
        );
        assert!(parse_header("no colon").is_err() && parse_header("a b: c").is_err());
    }

    #[test]
    fn target_headers_go_to_their_target_only() {
        let named = [
            ("direct", "http://a:1/", true),
            ("gateway", "http://b:2/", false),
            ("full", "http://c:3/", false),
        ];
        let h = parse_target_header("full=authorization: Bearer sk-1").unwrap();
        let targets = compare_targets(&named, std::slice::from_ref(&h)).unwrap();
        assert_eq!(targets.len(), 3);
        assert!(targets[0].headers.is_empty() && targets[1].headers.is_empty());
        assert_eq!(
            targets[2].headers,
            vec![("authorization".to_owned(), "Bearer sk-1".to_owned())]
        );
        let typo = parse_target_header("ful=authorization: Bearer sk-1").unwrap();
        assert!(compare_targets(&named, &[typo]).is_err());
        let twice = [("gateway", "http://b:2/", false), ("gateway", "u", false)];
        assert!(compare_targets(&twice, &[]).is_err());
        assert!(parse_named("=http://x/").is_err() && parse_named("no-equals").is_err());
    }

    #[test]
    fn parses_each_subcommand() {
        let run = Cli::try_parse_from([
            "sluice-load",
            "run",
            "--url",
            "http://127.0.0.1:1/",
            "--rate",
            "100",
            "-H",
            "a: b",
        ]);
        assert!(run.is_ok());
        assert!(Cli::try_parse_from([
            "sluice-load",
            "run",
            "--url",
            "u",
            "--rate",
            "1",
            "--concurrency",
            "2"
        ])
        .is_err());
        let cmp = [
            "sluice-load",
            "compare",
            "--direct",
            "http://a:1/",
            "--gateway",
            "http://b:2/",
            "--concurrency",
            "4",
            "--rounds",
            "3",
        ];
        assert!(Cli::try_parse_from(cmp).is_ok());
        let named = [
            "sluice-load",
            "compare",
            "--direct",
            "http://a:1/",
            "--gateway",
            "http://b:2/",
            "--target",
            "full=http://c:3/",
            "--target-header",
            "full=authorization: Bearer sk-1",
            "--rate",
            "10",
        ];
        assert!(Cli::try_parse_from(named).is_ok());
        assert!(Cli::try_parse_from([
            "sluice-load",
            "idle",
            "--url",
            "http://a:1/",
            "--connections",
            "10",
            "--hold",
            "1s"
        ])
        .is_ok());
        assert!(Cli::try_parse_from([
            "sluice-load",
            "frontier",
            "--url",
            "u",
            "--rates",
            "1000,2000"
        ])
        .is_ok());
        assert!(Cli::try_parse_from([
            "sluice-load",
            "streams",
            "--url",
            "u",
            "--counts",
            "4,16",
            "--expect-chunks",
            "8"
        ])
        .is_ok());
    }
}
