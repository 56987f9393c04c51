//! Live config reload on SIGHUP: a good config is swapped in for new requests while in-flight
//! ones finish on the old one; a bad one is refused; breakers and key limits survive.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn rewrite(gw: &Gateway, config: &str) {
    std::fs::write(gw.config_path(), config).unwrap();
    gw.sighup();
}

fn logged(gw: &Gateway, what: &str) -> bool {
    eventually(Duration::from_secs(3), || {
        gw.lines().iter().any(|l| l.contains(what))
    })
}

fn good_reload_under_traffic(driver: &str) {
    let mock = mock();
    let slow = mock_with(MockConfig {
        chunks: 10,
        chunk_delay_ms: 150,
        ..MockConfig::default()
    });
    let base = config(mock.addr(), "", "");
    let old = format!(
        "{base}\n[[providers]]\nname = \"slow\"\nbase_url = \"http://{}/v1\"\n\n[[models]]\nname = \"slow-stream\"\ndeployments = [{{ provider = \"slow\", model = \"slow-model\" }}]\n",
        slow.addr()
    );
    let gw = Gateway::start(&old, driver);
    // A slow stream started before the reload.
    let mut streaming = gw.connect();
    streaming
        .send_raw(post_bytes("/v1/chat/completions", &chat("slow-stream", true), "").as_bytes());
    // Keep-alive traffic during the reload.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let addr = gw.addr;
    let traffic = {
        let (stop, failures, sent) = (stop.clone(), failures.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            while !stop.load(Ordering::Relaxed) {
                let r = c.post("/v1/chat/completions", &chat("mock-fast", false), "");
                sent.fetch_add(1, Ordering::Relaxed);
                if r.status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let new = format!(
        "{}\n[[models]]\nname = \"mock-new\"\ndeployments = [{{ provider = \"mock\", model = \"mock-new-model\" }}]\n",
        old.replace(
            "model = \"mock-model\"",
            "model = \"mock-model-v2\""
        )
    );
    rewrite(&gw, &new);
    assert!(logged(&gw, "config reloaded"), "{:?}", gw.lines());
    let t0 = Instant::now();
    let mut c = gw.connect();
    assert!(
        eventually(Duration::from_secs(2), || {
            let r = c.post("/v1/chat/completions", &chat("mock-new", false), "");
            let f = c.post("/v1/chat/completions", &chat("mock-fast", false), "");
            r.status == 200 && f.status == 200 && f.json()["model"] == "mock-model-v2"
        }),
        "the new config is not served"
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    assert!(sent.load(Ordering::Relaxed) > 10);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during the reload"
    );
    // The stream started before the reload finishes on the old config.
    let r = streaming.read_response();
    assert_eq!(r.status, 200);
    assert!(r.text().contains("[DONE]"), "{}", r.text());
}

fn bad_config_is_refused(driver: &str) {
    let mock = mock();
    let cfg = config(mock.addr(), "", "");
    let gw = Gateway::start(&cfg, driver);
    rewrite(&gw, &format!("{cfg}\nno_such_key = 1\n"));
    assert!(logged(&gw, "config reload refused"), "{:?}", gw.lines());
    let mut c = gw.connect();
    let r = c.post("/v1/chat/completions", &chat("mock-fast", false), "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["model"], "mock-model");
}

fn breakers_and_key_limits_survive(driver: &str) {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mock = mock();
    let dir = std::env::temp_dir().join(format!("sluice-reload-{}-{driver}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = config(mock.addr(), "", "").replace("auth = \"none\"", "auth = \"keys\"");
    let cfg = format!(
        "{cfg}
[[providers]]
name = \"dead\"
base_url = \"http://{dead}/v1\"

[[models]]
name = \"flaky\"
strategy = \"priority\"
retry = {{ max_attempts = 1 }}
breaker = {{ consecutive_failures = 2, cooldown_ms = 60000 }}
deployments = [{{ provider = \"dead\", model = \"d\" }}]

[store]
path = \"{}\"

[[keys]]
name = \"limited\"
key = \"sk-sluice-reload-limited\"
rpm = 3

[[keys]]
name = \"free\"
key = \"sk-sluice-reload-free\"
",
        dir.join("s.db").display()
    );
    let gw = Gateway::start(&cfg, driver);
    let auth = "authorization: Bearer sk-sluice-reload-limited\r\n";
    let mut c = gw.connect();
    let free = "authorization: Bearer sk-sluice-reload-free\r\n";
    // Trip the breaker (2 failures); use the key's 3 requests per minute.
    assert_eq!(
        c.post("/v1/chat/completions", &chat("flaky", false), free)
            .status,
        502
    );
    assert_eq!(
        c.post("/v1/chat/completions", &chat("flaky", false), free)
            .status,
        502
    );
    for _ in 0..3 {
        assert_eq!(
            c.post("/v1/chat/completions", &chat("mock-fast", false), auth)
                .status,
            200
        );
    }
    assert_eq!(
        c.post("/v1/chat/completions", &chat("mock-fast", false), auth)
            .status,
        429
    );
    // Reload with a change elsewhere.
    rewrite(
        &gw,
        &format!("{cfg}\n[[models]]\nname = \"extra\"\ndeployments = [{{ provider = \"mock\", model = \"x\" }}]\n"),
    );
    assert!(logged(&gw, "config reloaded"), "{:?}", gw.lines());
    let mut c = gw.connect();
    assert!(eventually(Duration::from_secs(2), || {
        c.post(
            "/v1/chat/completions",
            &chat("extra", false),
            "authorization: Bearer nope\r\n",
        )
        .status
            == 401
    }));
    // The key's rpm usage survived: still refused.
    assert_eq!(
        c.post("/v1/chat/completions", &chat("mock-fast", false), auth)
            .status,
        429
    );
    // The breaker survived: the dead deployment is not tried, the request fails fast.
    let t0 = Instant::now();
    let r = c.post("/v1/chat/completions", &chat("flaky", false), free);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "upstream_unavailable")
    );
    assert!(
        t0.elapsed() < Duration::from_millis(200),
        "{:?}",
        t0.elapsed()
    );
    let metrics = Client::connect(gw.admin.unwrap()).get("/metrics").text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sluice_circuit_breaker_state")
                && l.contains("dead/d")
                && l.ends_with(" 2")),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

both_drivers!(
    good_reload_under_traffic,
    bad_config_is_refused,
    breakers_and_key_limits_survive,
);
