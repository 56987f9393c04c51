//! The admin listener (`listener`: metrics, health), the admin API on it (`api`: keys,
//! teams, spend, usage, the audit log, live traffic, upstream health), the live traffic
//! figures it computes from the gateway's counters (`traffic`) and the admin web page (`ui`).

pub mod api;
pub mod listener;
pub mod traffic;
pub mod ui;
