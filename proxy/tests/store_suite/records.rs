//! The records the store suite's cases write: a key, a team, a ledger row.

use std::sync::Arc;

use sluice_core::keys::{hash_hex, visible_prefix, KeyRecord, Limits, TeamRecord};
use sluice_core::limits::BudgetPeriod;
use sluice_core::usage::Usage;
use sluice_proxy::store::UsageRecord;

pub fn key_record(id: &str, team: &str, key: &str) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        name: format!("{id} name"),
        team: team.into(),
        user: Some("ada@example.com".into()),
        hash: hash_hex(key),
        prefix: visible_prefix(key),
        models: vec!["gpt-4o".into(), "claude-sonnet-4".into()],
        limits: Limits {
            rpm: Some(600),
            tpm: Some(100_000),
            max_concurrency: Some(8),
            budget_usd: Some(25.5),
            budget_period: BudgetPeriod::Weekly,
        },
        expires_at_unix: Some(2_000_000_000),
        disabled: false,
        metadata: serde_json::json!({"cost_center": 42, "tags": ["a", "b"]}),
        created_at_unix: 1_700_000_000,
    }
}

pub fn team_record(name: &str) -> TeamRecord {
    TeamRecord {
        name: name.into(),
        limits: Limits {
            rpm: Some(1_000),
            tpm: None,
            max_concurrency: None,
            budget_usd: Some(100.0),
            budget_period: BudgetPeriod::Monthly,
        },
    }
}

/// 2024-03-15 12:00:00 UTC, in ms.
pub const T0_MS: u64 = 1_710_504_000_000;

pub fn usage_record(i: u64, key: &str, team: &str, cost: u64) -> UsageRecord {
    UsageRecord {
        request_id: format!("req-{i}"),
        ts_ms: T0_MS + i,
        key_id: Some(Arc::from(key)),
        team: Some(Arc::from(team)),
        model: Arc::from(if i.is_multiple_of(2) {
            "gpt-4o"
        } else {
            "gpt-4o-mini"
        }),
        deployment: Some(Arc::from("openai-east")),
        usage: Usage {
            input_tokens: 100,
            output_tokens: 20,
            cached_tokens: 10,
            cache_write_tokens: 0,
            reasoning_tokens: 5,
            estimated: false,
        },
        cost_micros: cost,
        status: 200,
        latency_ms: 123,
        cache: i.is_multiple_of(3).then_some("hit"),
        saved_micros: if i.is_multiple_of(3) { 7 } else { 0 },
    }
}
