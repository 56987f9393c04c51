//! The audit log of admin actions: every call that changes something (from the page, the CLI
//! or any other client of the API) is written to the store with who made it (the admin
//! token's id, never the token), what, on what, through what, when and how it ended.
//! `GET /admin/audit` reads it back, newest first.
//!
//! Only calls that presented the right token are recorded: a refused token changes nothing,
//! and recording those would let anyone fill the store.

use serde_json::{json, Value};
use sluice_core::http1::RequestHead;

use super::{fail, query_params, range, registry, store_error, Answer, Res};
use crate::state::Shared;
use crate::store::AuditRecord;

/// Longest target kept (ids and names are at most 64 characters; this bounds a bad path).
const MAX_TARGET: usize = 128;

/// The id of an admin token from its SHA-256: `admin-` and the first 4 bytes in hex. It names
/// the token in the audit log and on the page without revealing it.
pub fn token_id(hash: &[u8; 32]) -> String {
    format!(
        "admin-{}",
        sluice_core::keys::to_hex(hash.get(..4).unwrap_or_default())
    )
}

/// The audited name of a call that changes something, and the key id or team name it acts on
/// (from the path; `None` for a create); `None` for reads.
fn action(method: &str, parts: &[&str]) -> Option<(String, Option<String>)> {
    let (kind, rest) = parts.split_first()?;
    if !matches!(*kind, "keys" | "teams") {
        return None;
    }
    let verb = match (method, rest) {
        ("POST", []) => "create",
        ("PATCH", [_]) => "update",
        ("DELETE", [_]) => "delete",
        ("POST", [_, tail]) if matches!(*tail, "rotate" | "disable" | "enable") => tail,
        (m, _) if m != "GET" && m != "HEAD" => "unknown",
        _ => return None,
    };
    Some((
        format!("{kind}.{verb}"),
        rest.first().map(|t| t.to_string()),
    ))
}

/// Through what the call came: the page and the CLI say so in `x-sluice-client`.
fn via(head: &RequestHead) -> &'static str {
    match head.header("x-sluice-client") {
        Some(b"ui") => "ui",
        Some(b"cli") => "cli",
        _ => "api",
    }
}

/// Records the call in the audit log when it changes something. A store failure is logged,
/// never turned into a failure of the call, which has already happened.
pub(super) fn record(shared: &Shared, head: &RequestHead, parts: &[&str], answer: &Answer) {
    let Some((action, target)) = action(head.method(), parts) else {
        return;
    };
    let Some(token) = &shared.admin_token else {
        return;
    };
    let Answer(status, value) = answer;
    // A create names its target in the answer.
    let created = || {
        value["id"]
            .as_str()
            .or_else(|| value["name"].as_str())
            .map(str::to_string)
    };
    let mut target = target.or_else(created).unwrap_or_default();
    if target.len() > MAX_TARGET {
        let mut end = MAX_TARGET;
        while !target.is_char_boundary(end) {
            end -= 1;
        }
        target.truncate(end);
    }
    let entry = AuditRecord {
        ts_ms: crate::clock::unix_ms(),
        actor: token_id(token),
        via: via(head).to_string(),
        action,
        target,
        status: *status,
    };
    tracing::info!(
        actor = %entry.actor, via = %entry.via, action = %entry.action,
        target = %entry.target, status = entry.status, "admin: audit"
    );
    let Ok(reg) = registry(shared) else {
        return;
    };
    if let Err(e) = reg.store.insert_audit(&entry) {
        tracing::error!(error = %e, "admin: cannot write the audit log");
    }
}

/// `GET /admin/audit?from=&to=&limit=`: entries newest first (default 100, at most 10000).
pub(super) fn list(shared: &Shared, query: &str) -> Res {
    let params = query_params(query);
    let (from, to) = range(&params)?;
    let limit = match params.iter().find(|(k, _)| *k == "limit") {
        None => 100,
        Some((_, v)) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| fail(400, "invalid_request", "`limit` must be 1..=10000"))?,
    };
    let reg = registry(shared)?;
    let rows = reg.store.audit(from, to, limit).map_err(store_error)?;
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "ts_ms": r.ts_ms,
                "actor": r.actor,
                "via": r.via,
                "action": r.action,
                "target": r.target,
                "status": r.status,
            })
        })
        .collect();
    Ok(Answer(200, json!({"object": "list", "data": data})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_named_and_reads_are_not() {
        let a = |m: &str, p: &[&str]| action(m, p);
        assert_eq!(a("POST", &["keys"]), Some(("keys.create".into(), None)));
        assert_eq!(
            a("POST", &["keys", "key_1", "disable"]),
            Some(("keys.disable".into(), Some("key_1".into())))
        );
        assert_eq!(
            a("PATCH", &["teams", "t"]),
            Some(("teams.update".into(), Some("t".into())))
        );
        assert_eq!(
            a("DELETE", &["keys", "k"]),
            Some(("keys.delete".into(), Some("k".into())))
        );
        assert_eq!(a("GET", &["keys"]), None);
        assert_eq!(a("GET", &["keys", "k"]), None);
        assert_eq!(a("GET", &["spend"]), None);
        assert_eq!(a("POST", &["spend"]), None);
        assert_eq!(
            token_id(&[0xab; 32]),
            "admin-abababab",
            "four bytes of the hash, never the token"
        );
    }
}
