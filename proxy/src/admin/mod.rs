//! The admin listener (`listener`: metrics, health) and the admin API on it (`api`: keys,
//! teams, spend and usage).

pub mod api;
pub mod listener;
