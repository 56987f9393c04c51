//! `/admin/teams`: create, list, show, change and delete teams.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sluice_core::error::bounded;
use sluice_core::keys::{Limits, TeamRecord};
use sluice_core::limits::BudgetPeriod;

use super::keys::spend_usd;
use super::{
    check_budget, fail, limits, name_error, parse_body, patch_limit, rebuilt, registry,
    store_error, valid_name, Answer, Res,
};
use crate::request::auth::TeamEntry;
use crate::state::Shared;

fn team_view(t: &TeamEntry, keys: usize) -> Value {
    let r = t.record.as_ref().map(|r| &r.limits);
    json!({
        "object": "team",
        "name": &*t.name,
        "rpm": r.and_then(|r| r.rpm),
        "tpm": r.and_then(|r| r.tpm),
        "max_concurrency": r.and_then(|r| r.max_concurrency),
        "budget_usd": r.and_then(|r| r.budget_usd),
        "budget_period": r.map(|r| r.budget_period),
        "created": r.is_some(),
        "keys": keys,
        "spend_usd": spend_usd(&t.limits),
        "in_flight": sluice_core::lease::in_flight(&t.limits),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTeam {
    name: String,
    rpm: Option<u64>,
    tpm: Option<u64>,
    max_concurrency: Option<u32>,
    budget_usd: Option<f64>,
    budget_period: Option<BudgetPeriod>,
}

impl CreateTeam {
    /// Its limit fields as a team carries them.
    fn limits(&self) -> Limits {
        limits(
            self.rpm,
            self.tpm,
            self.max_concurrency,
            self.budget_usd,
            self.budget_period,
        )
    }
}

pub(super) fn teams_api(shared: &Shared, method: &str, rest: &[&str], body: &[u8]) -> Res {
    let auth = &shared.auth;
    let index = auth.index();
    let count = |name: &str| index.keys().filter(|k| &*k.team.name == name).count();
    match (method, rest) {
        ("GET", []) => {
            let mut teams: Vec<&std::sync::Arc<TeamEntry>> = index.teams().collect();
            teams.sort_by(|a, b| a.name.cmp(&b.name));
            let data: Vec<Value> = teams.iter().map(|t| team_view(t, count(&t.name))).collect();
            Ok(Answer(200, json!({"object": "list", "data": data})))
        }
        ("GET", [name]) => match index.team(name) {
            Some(t) => Ok(Answer(200, team_view(t, count(name)))),
            None => Err(fail(
                404,
                "not_found",
                format!("No team `{}`.", bounded(name)),
            )),
        },
        ("POST", []) => {
            let c: CreateTeam = parse_body(body)?;
            if !valid_name(&c.name) {
                return Err(name_error("name"));
            }
            check_budget(c.budget_usd)?;
            let record = TeamRecord {
                limits: c.limits(),
                name: c.name,
            };
            let reg = registry(shared)?;
            reg.store.create_team(&record).map_err(store_error)?;
            rebuilt(shared, &reg)?;
            tracing::info!(team = %record.name, "admin: team created");
            let index = auth.index();
            let view = index
                .team(&record.name)
                .map_or(Value::Null, |t| team_view(t, count(&record.name)));
            Ok(Answer(201, view))
        }
        ("PATCH", [name]) => {
            let patch: Map<String, Value> = parse_body(body)?;
            let reg = registry(shared)?;
            let mut t = reg
                .store
                .get_team(name)
                .map_err(store_error)?
                .ok_or_else(|| {
                    fail(
                        404,
                        "not_found",
                        format!(
                            "No team `{}` (create it with POST /admin/teams).",
                            bounded(name)
                        ),
                    )
                })?;
            for (f, v) in patch {
                if patch_limit(&mut t.limits, &f, v)?.is_some() {
                    return Err(fail(
                        400,
                        "invalid_request",
                        format!("unknown or read-only field `{}`", bounded(&f)),
                    ));
                }
            }
            reg.store.update_team(&t).map_err(store_error)?;
            rebuilt(shared, &reg)?;
            let index = auth.index();
            let view = index
                .team(name)
                .map_or(Value::Null, |e| team_view(e, count(name)));
            Ok(Answer(200, view))
        }
        ("DELETE", [name]) => {
            let reg = registry(shared)?;
            reg.store.delete_team(name).map_err(store_error)?;
            rebuilt(shared, &reg)?;
            Ok(Answer(
                200,
                json!({"object": "team", "name": name, "deleted": true}),
            ))
        }
        _ => Err(fail(
            405,
            "method_not_allowed",
            format!("{} is not allowed here", bounded(method)),
        )),
    }
}
