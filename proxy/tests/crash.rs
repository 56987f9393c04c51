//! SIGKILL under load: every request answered more than 100 ms before the kill is in the
//! ledger (the writer commits every 50 ms), and after a restart the keys' spend is what the
//! ledger says.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use access::*;
use common::*;
use serde_json::json;
use sluice_core::http1::{parse_response_head, BodyFraming};
use sluice_proxy::store::{Scope, Store};

both_drivers!(sigkill_under_load_loses_no_acknowledged_request,);

/// One request on `s`; the status once the whole answer is read, `None` when the connection
/// failed (the gateway is gone).
fn try_post(s: &mut TcpStream, bytes: &[u8]) -> Option<u16> {
    s.write_all(bytes).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Ok(Some((head, len))) = parse_response_head(&buf, 1 << 20, false) {
            let want = match head.body {
                BodyFraming::Length(n) => n as usize,
                BodyFraming::Empty => 0,
                _ => return None,
            };
            while buf.len() < len + want {
                let n = s.read(&mut chunk).ok().filter(|n| *n > 0)?;
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(head.status);
        }
        let n = s.read(&mut chunk).ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn client(
    addr: SocketAddr,
    key: String,
    t: usize,
    stop: Arc<AtomicBool>,
    done: Arc<Mutex<Vec<(String, Instant)>>>,
) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("crash-{t}-{i}");
        i += 1;
        let extra = format!("authorization: Bearer {key}\r\nx-request-id: {id}\r\n");
        let bytes = post_bytes("/v1/chat/completions", &chat("mock-fast", false), &extra);
        match try_post(&mut s, bytes.as_bytes()) {
            Some(200) => done.lock().unwrap().push((id, Instant::now())),
            Some(_) => {}
            None => return,
        }
    }
}

fn sigkill_under_load_loses_no_acknowledged_request(driver: &str) {
    let mock = mock();
    let dir = temp_dir("crash");
    let db = dir.join("s.db");
    let cfg = store_config(mock.addr(), &db, 2, "");
    let mut gw = start(&cfg, driver);
    let (id, key) = gw.create_key(json!({"name": "k", "budget_usd": 1000.0}));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..8)
        .map(|t| {
            let (stop, done, key) = (stop.clone(), done.clone(), key.clone());
            let addr = gw.addr;
            std::thread::spawn(move || client(addr, key, t, stop, done))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let killed = Instant::now();
    gw.sigkill();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let done = done.lock().unwrap().clone();
    let settled: Vec<&String> = done
        .iter()
        .filter(|(_, at)| *at + Duration::from_millis(100) < killed)
        .map(|(id, _)| id)
        .collect();
    assert!(
        settled.len() > 100,
        "only {} requests under load",
        settled.len()
    );

    let store = Store::open(&db).unwrap();
    let rows = store.ledger(0, u64::MAX / 2, 10_000_000).unwrap();
    let in_ledger: HashSet<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    let missing: Vec<&&String> = settled
        .iter()
        .filter(|id| !in_ledger.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged requests missing from the ledger, e.g. {:?}",
        missing.len(),
        settled.len(),
        missing.first()
    );
    // Spend per day was committed with the ledger rows, in the same transactions.
    let ledger_cost: u64 = rows
        .iter()
        .filter(|r| r.key_id.as_deref() == Some(id.as_str()))
        .map(|r| r.cost_micros)
        .sum();
    assert!(ledger_cost > 0);
    assert_eq!(store.spend_since(Scope::Key, &id, 0).unwrap(), ledger_cost);
    drop(store);

    // After a restart the key's spend is rebuilt from the store: it matches the ledger.
    let gw = start(&cfg, driver);
    let (_, v) = gw.admin("GET", &format!("/admin/keys/{id}"), None);
    assert_eq!(
        (v["spend_usd"].as_f64().unwrap() * 1e6).round() as u64,
        ledger_cost
    );
    assert_eq!(gw.chat_as(&key, &chat("mock-fast", false), "").status, 200);
    let _ = std::fs::remove_dir_all(dir);
}
