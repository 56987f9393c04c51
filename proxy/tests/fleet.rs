//! A fleet end to end: three `sluice` processes on loopback sharing one real `redis-server`
//! (started here in a temporary directory on a free port, stopped by PID) and one store file.
//! Limits are global across the replicas within the documented lease bound, a revocation
//! through one replica reaches the others within a second, a SIGKILLed replica's leases come
//! back, and Redis going away degrades (local) or closes (closed) without failing a request.
//!
//! `redis-server` must be installed (`scripts/test.sh` installs it): a missing server fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use access::*;
use common::*;
use serde_json::json;

fn fleet_config(mock: SocketAddr, store: &Path, redis: &Redis, extra: &str) -> String {
    store_config(
        mock,
        store,
        2,
        &format!(
            "[shared]\nredis_url = \"{}\"\nsync_interval_ms = 20\nlease_ttl_ms = 1000\n{extra}\n",
            redis.url()
        ),
    )
}

/// What a fleet test starts from: the mock, a temporary directory with a `redis-server` of
/// our own in it, and the config every replica shares ([`fleet_config`], with `extra` in
/// `[shared]`, the store file in the directory). Dropped, it stops Redis and, when the test
/// passed, removes the directory (a failed test keeps its files). Declare the replicas after
/// it, so they stop first.
struct Fleet {
    mock: MockServer,
    redis: Redis,
    dir: PathBuf,
    config: String,
}

impl Fleet {
    fn start(tag: &str, extra: &str) -> Fleet {
        let mock = mock();
        let dir = temp_dir(tag);
        let redis = Redis::start(&dir);
        let config = fleet_config(mock.addr(), &dir.join("s.db"), &redis, extra);
        Fleet {
            mock,
            redis,
            dir,
            config,
        }
    }

    /// `n` replicas of the fleet's config.
    fn replicas(&self, n: usize) -> Vec<Gw> {
        (0..n)
            .map(|_| start(&self.config, driver_name(false)))
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.redis.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits until every replica admits `key` (the key was made on one of them).
fn known_everywhere(gws: &[Gw], key: &str) {
    for gw in gws {
        assert!(
            eventually(Duration::from_secs(3), || gw
                .chat_as(key, &chat("mock-fast", false), "")
                .status
                != 401),
            "key never reached {}",
            gw.addr
        );
    }
}

/// `n` requests at once, spread over the replicas (one connection each); the statuses.
fn burst(gws: &[Gw], key: &str, n: usize, extra: &str) -> Vec<Response> {
    burst_body(gws, key, n, &chat("mock-fast", false), extra)
}

/// [`burst`] with `body`.
fn burst_body(gws: &[Gw], key: &str, n: usize, body: &str, extra: &str) -> Vec<Response> {
    let barrier = Arc::new(Barrier::new(n + 1));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, addr) = (barrier.clone(), gws[i % gws.len()].addr);
            let extra = format!("authorization: Bearer {key}\r\n{extra}");
            let body = body.to_string();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                barrier.wait();
                c.post("/v1/chat/completions", &body, &extra)
            })
        })
        .collect();
    barrier.wait();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// One client per replica sending requests back to back until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<u16>>>,
}

impl Load {
    fn start(gws: &[Gw], key: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = gws
            .iter()
            .map(|gw| {
                let (stop, addr) = (stop.clone(), gw.addr);
                let extra = format!("authorization: Bearer {key}\r\n");
                std::thread::spawn(move || {
                    let mut statuses = Vec::new();
                    let mut c = Client::connect(addr);
                    while !stop.load(Ordering::Relaxed) {
                        let r = c.post("/v1/chat/completions", &chat("mock-fast", false), &extra);
                        statuses.push(r.status);
                        if r.header("connection") == Some("close") {
                            c = Client::connect(addr);
                        }
                    }
                    statuses
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the clients; every status they saw.
    fn stop(self) -> Vec<u16> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    }
}

fn ok(rs: &[Response]) -> usize {
    rs.iter().filter(|r| r.status == 200).count()
}

/// `rpm` is a sliding 60 s window: at most `limit` plus the lease bound in any 60 s, so at most
/// that per started minute of `elapsed`.
fn window_law(limit: u64, elapsed: Duration, bound: u64) -> usize {
    ((limit + bound) * (elapsed.as_millis() as u64 / 60_000 + 1)) as usize
}

/// At most `limit` per minute plus the refill over `elapsed` plus the lease bound.
fn law(limit: u64, elapsed: Duration, bound: u64) -> usize {
    (limit + limit * elapsed.as_millis() as u64 / 60_000 + bound) as usize
}

#[test]
fn limits_are_global_revocations_spread_and_dead_leases_come_back() {
    // A generous timeout: on a loaded two-core CI machine a 20 ms wait can run out and send
    // the fleet to its local shares, which is not what this test measures (the local test
    // covers that).
    let fleet = Fleet::start("fleet", "timeout_ms = 500");
    let redis = &fleet.redis;
    let mut gws = fleet.replicas(3);

    // rpm = 10 through the three replicas: a limit too small to lease, taken from Redis.
    let (_, small) = gws[0].create_key(json!({"name": "small", "rpm": 10}));
    let started = Instant::now();
    known_everywhere(&gws, &small); // spends up to three requests
    let rs = burst(&gws, &small, 30, "");
    let admitted = ok(&rs) + 3;
    for gw in &gws {
        assert_eq!(
            sample(&gw.metrics(), "sluice_shared_unavailable_total"),
            0.0
        );
    }
    assert!(
        admitted <= window_law(10, started.elapsed(), 0),
        "rpm 10 admitted {admitted}"
    );
    assert!(rs.iter().any(|r| r.status == 429));

    // rpm = 60 over three replicas: leased; at most 60 + the refill + 3 × lease (3).
    let (_, big) = gws[1].create_key(json!({"name": "big", "rpm": 60}));
    let started = Instant::now();
    known_everywhere(&gws, &big);
    let rs = burst(&gws, &big, 150, "");
    let admitted = ok(&rs) + 3;
    for gw in &gws {
        assert_eq!(
            sample(&gw.metrics(), "sluice_shared_unavailable_total"),
            0.0
        );
    }
    assert!(
        admitted <= window_law(60, started.elapsed(), 3),
        "rpm 60 admitted {admitted}"
    );
    assert!(admitted >= 30, "rpm 60 admitted only {admitted}");

    // tpm = 3000 across the fleet: each request reserves 150 tokens (a 200-byte body is 50
    // prompt tokens, plus max_tokens 100) and holds them 500 ms upstream, so every
    // reservation of the burst is outstanding at once.
    let (_, tpm) = gws[0].create_key(json!({"name": "tpm", "tpm": 3000}));
    let started = Instant::now();
    known_everywhere(&gws, &tpm); // reserves 1024 + 10 tokens each: up to 3 × 1034
    let body = chat_body("mock-fast", false, Some(100), 200);
    let rs = burst_body(&gws, &tpm, 60, &body, "x-mock-latency-ms: 500\r\n");
    let reserved = ok(&rs) * 150;
    assert!(
        reserved <= law(3000, started.elapsed(), 3 * 62),
        "tpm 3000 reserved {reserved}"
    );
    assert!(ok(&rs) >= 1);
    assert!(rs.iter().any(|r| r.status == 429));

    // Concurrency 4 across the fleet, requests held 1.5 s upstream.
    let (conc_id, conc) = gws[2].create_key(json!({"name": "conc", "max_concurrency": 4}));
    known_everywhere(&gws, &conc);
    let rs = burst(&gws, &conc, 24, "x-mock-latency-ms: 1500\r\n");
    assert!(ok(&rs) <= 4, "concurrency admitted {}", ok(&rs));
    assert!(ok(&rs) >= 1);

    // A budget of 0.005 USD (each request reserves about 1125 micro-USD and costs about 205):
    // never passed across the fleet.
    let (budget_id, budget) = gws[0].create_key(json!({"name": "budget", "budget_usd": 0.005}));
    known_everywhere(&gws, &budget);
    let body = chat_body("mock-fast", false, Some(100), 200);
    let mut admitted = 0;
    for round in 0..6 {
        let rs = burst_body(&gws, &budget, 12, &body, "");
        admitted += ok(&rs);
        if round > 0 && ok(&rs) == 0 {
            break;
        }
    }
    assert!(admitted > 0);
    // Every replica writes the one store: its ledger has every request.
    let rows = wait_for(Duration::from_secs(5), || {
        let (_, v) = gws[0].admin(
            "GET",
            &format!("/admin/usage?key_id={budget_id}&limit=10000"),
            None,
        );
        let rows = v["data"].as_array().cloned().unwrap_or_default();
        (rows.iter().filter(|r| r["status"] == 200).count() >= admitted).then_some(rows)
    })
    .expect("ledger rows");
    let spent: u64 = rows
        .iter()
        .map(|r| r["cost_micros"].as_u64().unwrap())
        .sum();
    // Reservations (budget leases included) never pass the limit, and each request cost less
    // than it reserved.
    assert!(spent <= 5_000, "spent {spent}");
    // The budget's hash in Redis expires after its (monthly) period; it is seeded and spent.
    let hash = redis.cli(&[
        "--scan",
        "--pattern",
        &format!("sluice:b:k:{budget_id}:budget:*"),
    ]);
    assert!(!hash.is_empty() && !hash.contains('\n'), "{hash}");
    let ttl: i64 = redis.cli(&["PTTL", &hash]).parse().unwrap();
    assert!(ttl > 86_400_000, "ttl {ttl}");
    let spend: u64 = redis.cli(&["HGET", &hash, "spend"]).parse().unwrap();
    assert!(spend > 0 && spend <= 5_000, "spend in Redis {spend}");
    assert!(
        spent >= 5_000 - 3 * 1_125,
        "spent only {spent}: the budget was not used up"
    );

    // Revoke through replica A: B and C refuse within a second.
    let (status, _) = gws[0].admin("DELETE", &format!("/admin/keys/{conc_id}"), None);
    assert!(status == 200 || status == 204, "{status}");
    let revoked = Instant::now();
    for gw in &gws[1..] {
        assert!(
            eventually(Duration::from_secs(1), || gw
                .chat_as(&conc, &chat("mock-fast", false), "")
                .status
                == 401),
            "revocation did not reach {} in time",
            gw.addr
        );
    }
    let _ = revoked;

    // SIGKILL a replica holding concurrency slots: they come back once its lease expires.
    let (_, held) = gws[0].create_key(json!({"name": "held", "max_concurrency": 2}));
    known_everywhere(&gws, &held);
    let victim = gws.remove(2);
    let addr = victim.addr;
    // Two requests on the victim wait upstream for 30 s, each holding a slot (a 429 comes
    // back at once while the survivors still hold the slots they used above: try again).
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let extra = format!("authorization: Bearer {held}\r\nx-mock-latency-ms: 30000\r\n");
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(800)))
                        .unwrap();
                    s.write_all(
                        post_bytes("/v1/chat/completions", &chat("mock-fast", false), &extra)
                            .as_bytes(),
                    )
                    .unwrap();
                    let mut buf = [0u8; 64];
                    match s.read(&mut buf) {
                        // Admitted: the answer is 30 s away. Hold the connection.
                        Err(_) => return Some(s),
                        Ok(n) => {
                            assert!(n > 0, "connection closed");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
                None
            })
        })
        .collect();
    let holders: Vec<TcpStream> = holders
        .into_iter()
        .map(|h| h.join().unwrap().expect("the victim took a slot"))
        .collect();
    // Both slots are held by the victim: the survivors are refused.
    assert!(eventually(Duration::from_secs(3), || gws[0]
        .chat_as(&held, &chat("mock-fast", false), "")
        .status
        == 429));
    let mut victim = victim;
    victim.sigkill();
    assert!(
        eventually(Duration::from_secs(5), || gws[1]
            .chat_as(&held, &chat("mock-fast", false), "")
            .status
            == 200),
        "the dead replica's slots never came back"
    );
    drop(holders);

    // A replica stopped with SIGTERM returns its leases and leaves the fleet as it exits (the
    // killed one leaves the replica set when its entry is pruned, which can come after its
    // slots did).
    assert!(eventually(Duration::from_secs(5), || redis
        .cli(&["ZCARD", "sluice:replicas"])
        == "2"));
    let mut leaving = gws.remove(1);
    leaving.sigterm();
    assert!(leaving.wait_exit(Duration::from_secs(10)).is_some());
    assert_eq!(redis.cli(&["ZCARD", "sluice:replicas"]), "1");
}

#[test]
fn redis_down_local_mode_keeps_serving_then_global_limits_resume() {
    let mut fleet = Fleet::start("fleet-local", "expected_replicas = 3");
    let gws = fleet.replicas(3);
    let redis = &mut fleet.redis;
    let (key_id, key) = gws[0].create_key(json!({"name": "k", "rpm": 1_000_000}));
    let (_, share) = gws[0].create_key(json!({"name": "share", "rpm": 30}));
    known_everywhere(&gws, &key);
    known_everywhere(&gws, &share);
    // Stop Redis in the middle of a steady load: zero failed requests.
    let load = Load::start(&gws, &key);
    std::thread::sleep(Duration::from_millis(300));
    redis.stop();
    std::thread::sleep(Duration::from_millis(700));
    let statuses = load.stop();
    assert!(statuses.len() > 30, "{} requests", statuses.len());
    assert!(
        statuses.iter().all(|s| *s == 200),
        "failed requests while Redis went away: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    for gw in &gws {
        let m = gw.metrics();
        assert!(sample(&m, "sluice_shared_unavailable_total") >= 1.0, "{m}");
        assert_eq!(sample(&m, "sluice_shared_available"), 0.0);
        assert!(
            eventually(Duration::from_secs(10), || gw
                .lines()
                .iter()
                .any(|l| l.contains("shared store unavailable"))),
            "{:?}",
            gw.lines()
                .iter()
                .filter(|l| l.contains("shared"))
                .collect::<Vec<_>>()
        );
        let mut c = gw.connect();
        let r = c.get("/readyz");
        assert_eq!(
            r.json()["shared"]["limits"],
            "degraded_local",
            "{}",
            r.text()
        );
    }
    // Each replica enforces its share meanwhile: rpm 30 ÷ 3 replicas = 10 each.
    let started = Instant::now();
    let rs = burst(&gws, &share, 60, "");
    assert!(
        ok(&rs) <= 3 * law(10, started.elapsed(), 0),
        "share admitted {}",
        ok(&rs)
    );
    assert!(ok(&rs) >= 3, "share admitted {}", ok(&rs));
    redis.restart();
    for gw in &gws {
        assert!(
            eventually(Duration::from_secs(15), || sample(
                &gw.metrics(),
                "sluice_shared_available"
            ) == 1.0),
            "never recovered"
        );
        let mut c = gw.connect();
        assert_eq!(c.get("/readyz").json()["shared"]["limits"], "global");
    }
    // Redis stalls (SIGSTOP): a limit too small to lease needs Redis for every request; no
    // request waits for it longer than timeout_ms (a slow direct fetch, or the lease thread's
    // failed sync, turns the replica to its local share), none fails, the stall is counted.
    let (_, tiny) = gws[2].create_key(json!({"name": "tiny", "rpm": 40}));
    known_everywhere(&gws, &tiny);
    let outages = |gws: &[Gw]| -> f64 {
        gws.iter()
            .map(|g| sample(&g.metrics(), "sluice_shared_unavailable_total"))
            .sum()
    };
    let before = outages(&gws);
    redis.signal("STOP");
    let load = Load::start(&gws, &tiny);
    std::thread::sleep(Duration::from_millis(800));
    let statuses = load.stop();
    redis.signal("CONT");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        outages(&gws) >= before + 3.0,
        "every replica counts the stall"
    );
    for gw in &gws {
        assert!(eventually(Duration::from_secs(15), || sample(
            &gw.metrics(),
            "sluice_shared_available"
        ) == 1.0));
    }
    // The spend made meanwhile was settled into the (restarted, empty) Redis.
    let hash = format!("sluice:b:k:{key_id}:budget:0");
    assert!(
        eventually(Duration::from_secs(3), || redis
            .cli(&["HGET", &hash, "spend"])
            .parse::<u64>()
            .is_ok_and(|s| s > 0)),
        "degraded spend never reached Redis"
    );
    // Global limits resume: rpm 10 across the fleet.
    let (_, small) = gws[1].create_key(json!({"name": "small", "rpm": 10}));
    let started = Instant::now();
    known_everywhere(&gws, &small);
    let rs = burst(&gws, &small, 30, "");
    let admitted = ok(&rs) + 3;
    assert!(
        admitted <= law(10, started.elapsed(), 0),
        "admitted {admitted}"
    );
}

#[test]
fn redis_down_closed_mode_answers_503_then_recovers() {
    let mut fleet = Fleet::start("fleet-closed", "on_unavailable = \"closed\"");
    let gws = fleet.replicas(3);
    let redis = &mut fleet.redis;
    let (_, key) = gws[0].create_key(json!({"name": "k", "rpm": 6000}));
    let (_, free) = gws[0].create_key(json!({"name": "free"}));
    known_everywhere(&gws, &key);
    known_everywhere(&gws, &free);
    redis.stop();
    for gw in &gws {
        let mut r = gw.chat_as(&key, &chat("mock-fast", false), "");
        if r.status == 200 {
            // The outage is noticed at the next sync (20 ms).
            std::thread::sleep(Duration::from_millis(300));
            r = gw.chat_as(&key, &chat("mock-fast", false), "");
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.error_code(), "overloaded");
        assert!(r.text().contains("shared store"), "{}", r.text());
        // A key without limits has nothing to check: served.
        assert_eq!(gw.chat_as(&free, &chat("mock-fast", false), "").status, 200);
    }
    redis.restart();
    for gw in &gws {
        assert!(
            eventually(Duration::from_secs(5), || gw
                .chat_as(&key, &chat("mock-fast", false), "")
                .status
                == 200),
            "never recovered"
        );
    }
}

/// A CA and a certificate for 127.0.0.1 signed by it, written to `dir`: (cert, key, CA).
fn pki(dir: &Path, tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths = (
        dir.join(format!("{tag}-cert.pem")),
        dir.join(format!("{tag}-key.pem")),
        dir.join(format!("{tag}-ca.pem")),
    );
    std::fs::write(&paths.0, cert.pem()).unwrap();
    std::fs::write(&paths.1, key.serialize_pem()).unwrap();
    std::fs::write(&paths.2, ca_cert.pem()).unwrap();
    paths
}

#[test]
fn rediss_with_a_private_ca_and_a_wrong_one() {
    let mock = mock();
    let dir = temp_dir("fleet-tls");
    let (cert, key, ca) = pki(&dir, "redis");
    let (_, _, other_ca) = pki(&dir, "other");
    let redis = Redis::start_with(&dir, Some((cert, key, ca.clone())));
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let shared = |ca: &Path| {
        format!(
            "[shared]\nredis_url = \"{url}\"\nca_file = \"{}\"\nsync_interval_ms = 20\ntimeout_ms = 500\n",
            ca.display()
        )
    };
    let store = dir.join("s.db");
    let good: Vec<Gw> = (0..2)
        .map(|_| {
            start(
                &store_config(mock.addr(), &store, 1, &shared(&ca)),
                driver_name(false),
            )
        })
        .collect();
    for gw in &good {
        assert!(
            eventually(Duration::from_secs(5), || gw
                .connect()
                .get("/readyz")
                .json()["shared"]["available"]
                == true),
            "never reached Redis over TLS"
        );
    }
    // Global over TLS: rpm 10 across both.
    let (_, small) = good[0].create_key(json!({"name": "small", "rpm": 10}));
    let started = Instant::now();
    known_everywhere(&good, &small);
    let rs = burst(&good, &small, 24, "");
    let admitted = ok(&rs) + 2;
    assert!(
        admitted <= law(10, started.elapsed(), 0),
        "admitted {admitted}"
    );
    // A replica that does not trust Redis's certificate never talks to it.
    let bad = start(
        &store_config(mock.addr(), &store, 1, &shared(&other_ca)),
        driver_name(false),
    );
    std::thread::sleep(Duration::from_millis(500));
    let r = bad.connect().get("/readyz");
    assert_eq!(r.json()["shared"]["available"], false, "{}", r.text());
    assert_eq!(r.json()["shared"]["limits"], "degraded_local");
    drop(bad);
    drop(good);
    drop(redis);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn provider_limits_hold_across_the_fleet() {
    // The deployment allows 6 requests per minute: a limit too small to lease, but a
    // deployment keeps one unit per replica (its admission cannot wait on Redis), so the
    // fleet sends at most 6 + the refill + 3.
    let mut fleet = Fleet::start("fleet-provider", "timeout_ms = 500");
    fleet.config = fleet.config.replacen(
        "model = \"mock-model\" }",
        "model = \"mock-model\", rpm = 6 }",
        1,
    );
    let mock = &fleet.mock;
    let gws = fleet.replicas(3);
    let (_, key) = gws[0].create_key(json!({"name": "free"}));
    let started = Instant::now();
    known_everywhere(&gws, &key);
    let before = mock.stats().requests;
    let rs = burst(&gws, &key, 30, "");
    let sent = mock.stats().requests;
    assert!(
        sent as usize <= law(6, started.elapsed(), 3),
        "the provider saw {sent} requests"
    );
    assert!(sent >= 1, "nothing reached the provider");
    assert_eq!(ok(&rs), (sent - before) as usize);
    for r in rs.iter().filter(|r| r.status != 200) {
        assert_eq!(r.status, 429, "{}", r.text());
    }
}

/// Redis busy for a moment (a Lua script spinning 80 ms): a request whose direct fetch (rpm 10
/// is too small to lease) misses `timeout_ms` is admitted from the replica's local share, and
/// the replica stays global — one late fetch is not an outage.
#[test]
fn one_late_direct_fetch_does_not_degrade_the_replica() {
    let fleet = Fleet::start("fleet-late", "timeout_ms = 30");
    let redis = &fleet.redis;
    let gw = start(&fleet.config, driver_name(false));
    let (_, key) = gw.create_key(json!({"name": "small", "rpm": 10}));
    let late = |gw: &Gw| sample(&gw.metrics(), "sluice_shared_timeouts_total");
    let spin = "local s = redis.call('TIME') local e = s[1] * 1000000 + s[2] + 80000 \
                while true do local t = redis.call('TIME') \
                if t[1] * 1000000 + t[2] > e then break end end return 1";
    // A few tries: the request must meet Redis while it spins (never timed, only counted).
    let mut statuses = Vec::new();
    for _ in 0..5 {
        if late(&gw) >= 1.0 {
            break;
        }
        let port = redis.port.to_string();
        let busy = std::thread::spawn(move || {
            std::process::Command::new("redis-cli")
                .args(["-p", &port, "EVAL", spin, "0"])
                .output()
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(20));
        statuses.push(gw.chat_as(&key, &chat("mock-fast", false), "").status);
        busy.join().unwrap();
    }
    assert!(late(&gw) >= 1.0, "no fetch was ever late: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        sample(&gw.metrics(), "sluice_shared_unavailable_total"),
        0.0,
        "one late fetch is not an outage"
    );
    let mut c = gw.connect();
    assert_eq!(c.get("/readyz").json()["shared"]["limits"], "global");
}

/// The claim on two real replicas and one Redis, without waiting a minute: a burst of
/// 40 requests with rpm = 10 split over both admits at most 10, and 7 s later (a token bucket
/// of 10 per minute would have refilled one) a second burst admits none while the first
/// minute lasts.
#[test]
fn rpm_10_burst_across_two_replicas_is_capped_at_10() {
    let fleet = Fleet::start("fleet-window", "timeout_ms = 500");
    let gws = fleet.replicas(2);
    let (_, key) = gws[0].create_key(json!({"name": "ten", "rpm": 10}));
    let started = Instant::now();
    known_everywhere(&gws, &key); // spends one request on each replica
    let first = burst(&gws, &key, 40, "");
    let admitted = ok(&first) + 2;
    assert!(
        admitted <= window_law(10, started.elapsed(), 0),
        "rpm 10 admitted {admitted} in the first burst"
    );
    assert!(first.iter().any(|r| r.status == 429));
    // The refusals say when the oldest admission leaves the window.
    let refused = first.iter().find(|r| r.status == 429).unwrap();
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    std::thread::sleep(Duration::from_secs(7));
    let second = burst(&gws, &key, 10, "");
    let admitted = admitted + ok(&second);
    assert!(
        admitted <= window_law(10, started.elapsed(), 0),
        "rpm 10 admitted {admitted} after a second burst"
    );
    if started.elapsed() < Duration::from_secs(60) {
        assert_eq!(ok(&second), 0, "a window, not a refilling bucket");
    }
    for gw in &gws {
        assert_eq!(
            sample(&gw.metrics(), "sluice_shared_unavailable_total"),
            0.0
        );
    }
}

/// The `x-ratelimit-*` headers show the fleet's use of a shared bucket, not the replica's: four
/// requests through A, then one through B, and B says about five are left (its local bucket,
/// never used while leased, would say nine).
#[test]
fn ratelimit_headers_show_the_fleets_use() {
    let fleet = Fleet::start("fleet-headers", "timeout_ms = 500");
    let gws = fleet.replicas(2);
    let (_, key) = gws[0].create_key(json!({"name": "ten", "rpm": 10}));
    // (known_everywhere spends one request on each replica.)
    known_everywhere(&gws, &key);
    for _ in 0..3 {
        assert_eq!(
            gws[0].chat_as(&key, &chat("mock-fast", false), "").status,
            200
        );
    }
    let r = gws[1].chat_as(&key, &chat("mock-fast", false), "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("10"));
    let left: u64 = r
        .header("x-ratelimit-remaining-requests")
        .unwrap()
        .parse()
        .unwrap();
    // Six admitted, and a window gives none back within the minute.
    assert_eq!(left, 4, "remaining {left}");
    let reset = r.header("x-ratelimit-reset-requests").unwrap();
    assert!(reset.ends_with('s'), "reset {reset}");
}

/// Between its own transfers a replica's `x-ratelimit-*-requests` follow the fleet: a key
/// leased on both replicas (`rpm` 3200, a lease of 100 each); once both hold their lease, B
/// admits 200 requests (taking about 200 more from the window); A, which has transferred
/// nothing since, admits from its lease and within a few seconds says about 200 fewer are
/// left than its own last transfer saw. Without a read of the window A would say only its own
/// requests fewer (at most 25 here, too few to bring its pool down to a top-up).
#[test]
fn ratelimit_headers_follow_the_fleet_between_transfers() {
    let fleet = Fleet::start("fleet-peek", "timeout_ms = 500");
    let gws = fleet.replicas(2);
    let (_, key) = gws[0].create_key(json!({"name": "peek", "rpm": 3200}));
    let left = |gw: &Gw| -> u64 {
        let r = gw.chat_as(&key, &chat("mock-fast", false), "");
        assert_eq!(r.status, 200, "{}", r.text());
        r.header("x-ratelimit-remaining-requests")
            .unwrap()
            .parse()
            .unwrap()
    };
    known_everywhere(&gws, &key);
    // Both replicas top their pools up to a lease (sync every 20 ms).
    std::thread::sleep(Duration::from_millis(300));
    let mut on_b = 0;
    for _ in 0..200 {
        on_b = left(&gws[1]);
    }
    let first_on_a = left(&gws[0]);
    let started = Instant::now();
    let mut on_a = first_on_a;
    for _ in 0..24 {
        std::thread::sleep(Duration::from_millis(200));
        on_a = left(&gws[0]);
        if on_a + 100 < first_on_a {
            break;
        }
    }
    assert!(
        on_a + 100 < first_on_a,
        "A says {on_a} left {:?} after saying {first_on_a}; B said {on_b}",
        started.elapsed()
    );
}
