//! Zero-downtime restart under load: gateway A serves a port, load runs against it, gateway B
//! starts on the same port (SO_REUSEPORT), A gets SIGTERM and drains. No request may fail, a
//! stream in flight on A must finish in full during A's drain, and B must serve after A is
//! gone. Needs `net.ipv4.tcp_migrate_req = 1` (set here when /proc allows it, e.g. as root in
//! CI; otherwise the test prints a note and skips).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use sluice_loadtest::load::{self, Load, RunSpec};

const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Makes sure `tcp_migrate_req` is on; false when it is off and cannot be turned on.
fn migrate_req_on() -> bool {
    let read = || std::fs::read_to_string(MIGRATE_REQ).map(|s| s.trim().to_string());
    match read() {
        Ok(v) if v != "0" => return true,
        Ok(_) => {}
        Err(e) => {
            eprintln!("restart test skipped: cannot read {MIGRATE_REQ} ({e}); needs Linux 5.14+");
            return false;
        }
    }
    if let Err(e) = std::fs::write(MIGRATE_REQ, "1") {
        eprintln!(
            "restart test skipped: net.ipv4.tcp_migrate_req is 0 and cannot be set ({e}); \
             run as root or `sysctl -w net.ipv4.tcp_migrate_req=1`"
        );
        return false;
    }
    read().is_ok_and(|v| v != "0")
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn access_count(gw: &Gateway) -> usize {
    gw.lines()
        .iter()
        .filter(|l| l.contains("\"sluice::access\""))
        .count()
}

fn restart_under_load(driver: &str) {
    if !migrate_req_on() {
        return;
    }
    let mock = mock();
    let port = free_port();
    let cfg = config(mock.addr(), "", "").replace(
        "listen = \"127.0.0.1:0\"\nworkers = 1",
        &format!("listen = \"127.0.0.1:{port}\"\nworkers = 2\ndrain_timeout_ms = 10000"),
    );
    assert!(cfg.contains(&format!("127.0.0.1:{port}")));
    let mut a = Gateway::start(&cfg, driver);
    assert_eq!(a.addr.port(), port);

    // Load: a few hundred requests per second on keep-alive connections, for ~3.5 s.
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let mut spec = RunSpec::new(&url, Load::Rate(300.0)).unwrap();
    spec.duration = Some(Duration::from_millis(3500));
    spec.threads = 2;
    spec.max_conns = 64;
    spec.timeout = Duration::from_secs(10);
    let t0 = Instant::now();
    let loader = std::thread::spawn(move || load::run(&spec).unwrap());

    // A stream that starts on A (the only process listening yet) and outlives its SIGTERM.
    std::thread::sleep(Duration::from_millis(300));
    let stream_addr = a.addr;
    let streamer = std::thread::spawn(move || {
        let mut c = Client::connect(stream_addr);
        c.post(
            "/v1/chat/completions",
            &chat("mock-stream", true),
            "x-mock-chunks: 10\r\nx-mock-chunk-delay-ms: 150\r\n",
        )
    });

    // B on the same port; once it listens, A is told to stop.
    std::thread::sleep(Duration::from_millis(300));
    let b = Gateway::start(&cfg, driver);
    assert_eq!(b.addr.port(), port);
    std::thread::sleep(Duration::from_millis(200));
    a.sigterm();
    let status = a
        .wait_exit(Duration::from_secs(15))
        .expect("A exits after its drain");
    let a_exit = t0.elapsed();
    assert!(status.success(), "{status:?}");
    let b_at_a_exit = access_count(&b);
    assert!(
        a.lines().iter().any(|l| l.contains("shutting down")),
        "A drained"
    );

    let stream = streamer.join().unwrap();
    assert_eq!(stream.status, 200, "{}", stream.text());
    let data = stream.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let content = data.iter().filter(|d| d.contains("\"content\"")).count();
    assert!(content >= 10, "stream cut short during the drain: {data:?}");

    let report = loader.join().unwrap();
    assert!(
        a_exit < t0.elapsed(),
        "A exited ({a_exit:?}) before the load ended"
    );
    assert!(report.requests > 500, "{} requests", report.requests);
    assert_eq!(
        report.errors.total, 0,
        "failed requests across the restart: {:?}",
        report.errors
    );
    assert_eq!(report.ok, report.requests);
    // B kept serving after A was gone.
    assert!(
        eventually(Duration::from_secs(2), || access_count(&b) > b_at_a_exit),
        "B served nothing after A exited (A exited at {a_exit:?})"
    );
    let mut c = b.connect();
    assert_eq!(c.get("/healthz").status, 200);
}

both_drivers!(restart_under_load);
