//! SIGKILL under load: every request answered more than 300 ms before the kill is in the
//! ledger (the writer commits every 50 ms; the rest of the margin is for a loaded machine,
//! where a full test run saw the writer's thread wait over 100 ms for a core), and after a
//! restart the keys' spend is what the ledger says.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use access::*;
use common::*;
use serde_json::json;
use sluice_proxy::store::{Scope, Store};

both_drivers!(sigkill_under_load_loses_no_acknowledged_request,);

fn sigkill_under_load_loses_no_acknowledged_request(driver: &str) {
    let mock = mock();
    let dir = temp_dir("crash");
    let db = dir.join("s.db");
    let cfg = store_config(mock.addr(), &db, 2, "");
    let mut gw = start(&cfg, driver);
    let (id, key) = gw.create_key(json!({"name": "k", "budget_usd": 1000.0}));
    let load = acked::Acked::start(gw.addr, &key, 8, "crash");
    std::thread::sleep(Duration::from_millis(1500));
    let killed = Instant::now();
    gw.sigkill();
    let settled = load.stop(killed, Duration::from_millis(300));
    assert!(
        settled.len() > 100,
        "only {} requests under load",
        settled.len()
    );

    let store = Store::open(&db).unwrap();
    let rows = store.ledger(0, u64::MAX / 2, 10_000_000).unwrap();
    let in_ledger: HashSet<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    let missing: Vec<&String> = settled
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
