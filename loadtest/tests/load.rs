//! End-to-end tests of the load generator on 127.0.0.1: against the mock
//! provider, and against a tiny blocking server where a test needs a server
//! that misbehaves on a precise request.

// Test helpers outside `#[test]` functions may unwrap too.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use sluice_loadtest::load::cli::{execute, Cli};
use sluice_loadtest::load::{procstat, run, Load, RunSpec, StreamSpec};
use sluice_loadtest::mock::{MockConfig, MockServer};

fn mock(chunks: u32, ttft_ms: u64, chunk_delay_ms: u64) -> MockServer {
    MockServer::start(MockConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        chunks,
        chunk_size: 4,
        ttft_ms,
        chunk_delay_ms,
        ..Default::default()
    })
    .unwrap()
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/v1/chat/completions")
}

fn spec(addr: SocketAddr, load: Load) -> RunSpec {
    let mut s = RunSpec::new(&url(addr), load).unwrap();
    s.timeout = Duration::from_secs(5);
    s
}

fn streaming(mut s: RunSpec, stall_ms: u64, expect_chunks: Option<u32>) -> RunSpec {
    s.body = sluice_loadtest::load::default_body("mock-fast", true);
    s.stream = Some(StreamSpec::new(Some(stall_ms), None, expect_chunks));
    s
}

#[test]
fn percentiles_against_a_known_delay() {
    let m = mock(4, 20, 0);
    let mut s = spec(m.addr(), Load::Concurrency(4));
    s.requests = Some(40);
    s.duration = None;
    let r = run(&s).unwrap();
    assert_eq!(
        (r.requests, r.ok, r.errors.total),
        (40, 40, 0),
        "{}",
        r.render()
    );
    let p = r.latency.percentiles();
    assert!(p.p50 >= 20_000 && p.p50 < 60_000, "{}", r.render());
    assert!(p.min >= 20_000, "{}", r.render());

    // Open loop, two threads: the count is exact too.
    let mut s = spec(m.addr(), Load::Rate(400.0));
    s.requests = Some(41);
    s.duration = None;
    s.threads = 2;
    let r = run(&s).unwrap();
    assert_eq!((r.requests, r.ok), (41, 41), "{}", r.render());
    assert!(r.summary().sched_lag_us.is_some());
    assert!(r.latency.percentiles().p50 >= 20_000);
}

/// A server that answers one request at a time and stalls request number
/// `stall_at` for `stall` while later requests queue behind it.
fn serial_server(stall_at: u64, stall: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let gate = Arc::new(Mutex::new(()));
    let seen = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let (gate, seen) = (Arc::clone(&gate), Arc::clone(&seen));
            std::thread::spawn(move || serve(conn, &gate, &seen, stall_at, stall));
        }
    });
    addr
}

fn serve(mut conn: TcpStream, gate: &Mutex<()>, seen: &AtomicU64, stall_at: u64, stall: Duration) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        // Read one request: a head, then Content-Length bytes.
        let need = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let len = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .unwrap_or(0);
                break n + len;
            }
            match conn.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&tmp[..k]),
            }
        };
        while buf.len() < need {
            match conn.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&tmp[..k]),
            }
        }
        buf.drain(..need);
        let _serial = gate.lock().unwrap();
        if seen.fetch_add(1, Ordering::SeqCst) + 1 == stall_at {
            std::thread::sleep(stall);
        }
        if conn
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

#[test]
fn open_loop_charges_the_stall_to_every_request_scheduled_during_it() {
    let stall = Duration::from_millis(200);
    let slow = 100_000; // µs

    // Open loop at 200/s for 0.8 s: ~40 requests fall inside the stall.
    let mut s = spec(serial_server(20, stall), Load::Rate(200.0));
    s.duration = Some(Duration::from_millis(800));
    let r = run(&s).unwrap();
    assert_eq!(r.errors.total, 0, "{}", r.render());
    let open_slow = r.latency.count_at_or_above_us(slow);
    assert!(
        open_slow > 5,
        "open loop hid the stall: {open_slow} slow samples\n{}",
        r.render()
    );

    // The closed-loop view of the same stall shows a single slow sample:
    // the requests it never sent are exactly what coordinated omission hides.
    let mut s = spec(serial_server(20, stall), Load::Concurrency(1));
    s.duration = None;
    s.requests = Some(60);
    let r = run(&s).unwrap();
    assert_eq!(r.latency.count_at_or_above_us(slow), 1, "{}", r.render());
}

#[test]
fn stalled_lost_and_clean_streams() {
    let m = mock(5, 0, 0);

    let mut clean = streaming(spec(m.addr(), Load::Concurrency(2)), 100, Some(5));
    clean.requests = Some(6);
    clean.duration = None;
    let r = run(&clean).unwrap();
    assert_eq!(
        (r.ok, r.streams, r.errors.total),
        (6, 6, 0),
        "{}",
        r.render()
    );
    assert_eq!(r.content_events, 30);
    assert_eq!(r.ttft.len(), 6);
    assert_eq!(r.gaps.len(), 24);

    let mut stalled = clean.clone();
    stalled.headers = vec![
        ("x-mock-chunks".into(), "3".into()),
        ("x-mock-chunk-delay-ms".into(), "300".into()),
    ];
    stalled.stream = Some(StreamSpec::new(Some(100), None, Some(3)));
    stalled.requests = Some(2);
    let r = run(&stalled).unwrap();
    assert_eq!((r.errors.stalled, r.errors.lost), (2, 0), "{}", r.render());
    assert!(r.gaps.percentiles().p50 >= 290_000, "{}", r.render());

    let mut lost = clean.clone();
    lost.headers = vec![("x-mock-disconnect-after".into(), "2".into())];
    let r = run(&lost).unwrap();
    assert_eq!((r.errors.lost, r.errors.stalled), (6, 0), "{}", r.render());
}

fn cli_json(args: &[&str]) -> serde_json::Value {
    // Tests run in parallel: each call gets a file of its own.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-load-test-{}-{}-{}",
        std::process::id(),
        args[0],
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    let json = dir.with_extension("json");
    let mut argv: Vec<&str> = vec!["sluice-load"];
    argv.extend_from_slice(args);
    let json_arg = json.to_string_lossy().into_owned();
    argv.extend_from_slice(&["--json", &json_arg]);
    if args[0] != "idle" {
        argv.push("--quiet");
    }
    let cli = Cli::try_parse_from(argv).unwrap();
    let text = execute(&cli).unwrap();
    assert!(!text.is_empty());
    let value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(json);
    value
}

#[test]
fn compare_end_to_end() {
    let direct = mock(4, 0, 0);
    let gateway = mock(4, 3, 0);
    let pid = std::process::id().to_string();
    let v = cli_json(&[
        "compare",
        "--direct",
        &url(direct.addr()),
        "--gateway",
        &url(gateway.addr()),
        "--rate",
        "200",
        "--rounds",
        "2",
        "--round-duration",
        "300ms",
        "--pid",
        &pid,
    ]);
    assert_eq!(v["rounds"], 2);
    let targets = v["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    assert_eq!(targets[0]["name"], "direct");
    let gw = &targets[1];
    assert_eq!(gw["summary"]["errors"]["total"], 0);
    assert!(gw["summary"]["ok"].as_u64().unwrap() >= 100, "{gw}");
    let added = &gw["added"][0];
    assert_eq!(added["baseline"], "direct");
    assert!(
        added["latency_us"]["p50"].as_i64().unwrap() >= 2_000,
        "{added}"
    );
    assert!(gw["summary"]["pids"][0]["cpu_us"].as_u64().unwrap() > 0);
}

#[test]
fn streams_end_to_end() {
    let m = mock(4, 0, 5);
    let v = cli_json(&[
        "streams",
        "--url",
        &url(m.addr()),
        "--counts",
        "4,16",
        "--step-duration",
        "300ms",
        "--expect-chunks",
        "4",
        "--expect-gap-ms",
        "50",
    ]);
    assert_eq!(v["stall_ms"], 500, "10 × the expected gap");
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for step in steps {
        assert_eq!(step["clean"], true, "{step}");
        assert!(step["events_per_s"].as_f64().unwrap() > 0.0);
        assert!(
            step["summary"]["stream"]["gap_us"]["p50"].as_u64().unwrap() >= 4_000,
            "{step}"
        );
    }
    assert_eq!(v["max_clean_streams"], 16);
}

#[test]
fn frontier_end_to_end() {
    let m = mock(4, 0, 0);
    let v = cli_json(&[
        "frontier",
        "--url",
        &url(m.addr()),
        "--rates",
        "100,200",
        "--step-duration",
        "300ms",
    ]);
    let t = &v["targets"][0];
    // Timing on a shared 2-core machine is noisy: check the shape, not a
    // frontier. A sweep stops after a step fails the loosest bound.
    let steps = t["steps"].as_array().unwrap();
    assert!(!steps.is_empty() && steps.len() <= 2, "{t}");
    assert_eq!(steps[0]["summary"]["errors"]["total"], 0, "{t}");
    let sustained = t["sustained"].as_array().unwrap();
    assert_eq!(sustained.len(), 3);
    assert_eq!(sustained[2]["p99_bound_ms"], 10.0);
    assert!(
        sustained[2]["max_rate"].is_null() || sustained[2]["max_rate"].as_f64().unwrap() <= 200.0
    );
}

#[test]
fn procstat_reads_this_process() {
    let mut x = 0u64;
    for i in 0..20_000_000u64 {
        x = x.wrapping_mul(31).wrapping_add(i);
    }
    std::hint::black_box(x);
    let s = procstat::sample(std::process::id()).unwrap();
    assert!(s.cpu_us > 0 && s.rss_bytes > 0, "{s:?}");
    let sampler = procstat::Sampler::start(&[std::process::id()]).unwrap();
    let r = sampler.finish(10);
    assert_eq!(r.len(), 1);
    assert!(r[0].rss_idle_mib > 0.0 && r[0].rss_peak_mib >= r[0].rss_idle_mib);
    assert!(procstat::Sampler::start(&[u32::MAX]).is_err());
}

/// A keep-alive server that answers 200 to requests carrying
/// `authorization: Bearer sk-test` and 401 to the rest, like a gateway that
/// requires keys. Each connection gets a thread, which ends when the client
/// closes it.
fn key_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || answer_keyed(conn));
        }
    });
    addr
}

fn answer_keyed(mut conn: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // One request: the head, then Content-Length bytes of body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let body_len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < head_end + body_len {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + body_len);
        let answer: &[u8] = if head.contains("\r\nauthorization: bearer sk-test\r\n") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
        } else {
            b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\n{}"
        };
        if conn.write_all(answer).is_err() {
            return;
        }
    }
}

#[test]
fn compare_sends_each_named_target_its_own_headers() {
    let direct = mock(4, 0, 0);
    let keyed = url(key_server());
    let full = format!("full={keyed}");
    let v = cli_json(&[
        "compare",
        "--direct",
        &url(direct.addr()),
        "--gateway",
        &keyed,
        "--target",
        &full,
        "--target-header",
        "full=authorization: Bearer sk-test",
        "--concurrency",
        "2",
        "--rounds",
        "2",
        "--round-duration",
        "200ms",
    ]);
    let targets = v["targets"].as_array().unwrap();
    let names: Vec<&str> = targets
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["direct", "gateway", "full"]);
    // The gateway got no key: every request refused. The named target got it.
    let gw = &targets[1]["summary"];
    assert_eq!(gw["ok"], 0, "{gw}");
    assert!(gw["errors"]["status"]["401"].as_u64().unwrap() > 0, "{gw}");
    let full = &targets[2];
    assert_eq!(full["summary"]["errors"]["total"], 0, "{full}");
    assert!(full["summary"]["ok"].as_u64().unwrap() > 0);
    // Round by round as well as merged.
    let rounds = full["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    let per_round: u64 = rounds.iter().map(|r| r["ok"].as_u64().unwrap()).sum();
    assert_eq!(per_round, full["summary"]["ok"].as_u64().unwrap());
    // Every core's busy share during its runs, in [0, 1].
    let busy = full["summary"]["core_busy"].as_array().unwrap();
    assert!(!busy.is_empty());
    assert!(busy
        .iter()
        .all(|b| (0.0..=1.0).contains(&b.as_f64().unwrap())));
}

#[test]
fn idle_opens_holds_and_closes_keep_alive_connections() {
    let m = mock(4, 0, 0);
    let v = cli_json(&[
        "idle",
        "--url",
        &url(m.addr()),
        "--connections",
        "50",
        "--hold",
        "200ms",
    ]);
    assert_eq!(
        (v["held"].as_u64(), v["failed"].as_u64()),
        (Some(50), Some(0)),
        "{v}"
    );
    assert_eq!(v["signalled"], false);
    assert!(v["hold_s"].as_f64().unwrap() >= 0.2);
    // A server that refuses every request: each connection counts as failed.
    let v = cli_json(&[
        "idle",
        "--url",
        &url(key_server()),
        "--connections",
        "3",
        "--hold",
        "10ms",
    ]);
    assert_eq!(
        (v["held"].as_u64(), v["failed"].as_u64()),
        (Some(0), Some(3)),
        "{v}"
    );
    assert!(v["first_error"].as_str().unwrap().contains("401"), "{v}");
}
