//! The report commands: `sluice spend`, `sluice usage` and `sluice audit`, from the admin
//! API's ledger and audit log, as tables (default), CSV or the API's own JSON.

use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::admin::{list_of, opt_num, query, run, AdminArgs, Call, Outcome};
use super::table::{utc, Table};

/// How `spend` groups the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GroupBy {
    /// By team.
    Team,
    /// By key id.
    Key,
    /// By model.
    Model,
    /// By deployment.
    Deployment,
    /// By UTC day.
    Day,
}

impl GroupBy {
    fn name(self) -> &'static str {
        match self {
            GroupBy::Team => "team",
            GroupBy::Key => "key",
            GroupBy::Model => "model",
            GroupBy::Deployment => "deployment",
            GroupBy::Day => "day",
        }
    }
}

/// Output of the reports: a table (default), CSV or the API's JSON.
#[derive(Debug, Args)]
pub struct Format {
    /// CSV with a header row.
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    /// The admin API's JSON answer, as it came.
    #[arg(long)]
    pub json: bool,
}

impl Format {
    /// `t` as CSV with `csv_headers` (`--csv`), else as the aligned table followed by
    /// `footer` of it.
    fn print(
        &self,
        t: &Table,
        csv_headers: &[&str],
        footer: impl FnOnce(&Table) -> String,
    ) -> Outcome {
        if self.csv {
            return Ok(t.csv(csv_headers));
        }
        let mut out = t.render();
        out.push_str(&footer(t));
        Ok(out)
    }
}

/// A time range: unix seconds or UTC dates `YYYY-MM-DD`; `to` is excluded.
#[derive(Debug, Args)]
pub struct Range {
    /// From (unix seconds or YYYY-MM-DD, UTC); default: the beginning.
    #[arg(long)]
    pub from: Option<String>,
    /// To, excluded (unix seconds or YYYY-MM-DD, UTC); default: now.
    #[arg(long)]
    pub to: Option<String>,
}

impl Range {
    fn query(&self, q: &mut Vec<(&'static str, String)>) {
        if let Some(f) = &self.from {
            q.push(("from", f.clone()));
        }
        if let Some(t) = &self.to {
            q.push(("to", t.clone()));
        }
    }
}

/// Runs `sluice spend`.
pub fn spend(admin: &AdminArgs, group_by: GroupBy, range: &Range, format: &Format) -> ExitCode {
    let mut q = vec![("group_by", group_by.name().to_string())];
    range.query(&mut q);
    let call = Call::get(query("/admin/spend", &q));
    run(admin, Ok(call), format.json, |answer| {
        let mut t = Table::new(&[
            ("GROUP", false),
            ("REQUESTS", true),
            ("INPUT", true),
            ("OUTPUT", true),
            ("CACHED", true),
            ("REASONING", true),
            ("COST USD", true),
        ]);
        let mut total = 0u64;
        let mut requests = 0u64;
        for r in list_of(answer) {
            total += r["cost_micros"].as_u64().unwrap_or(0);
            requests += r["requests"].as_u64().unwrap_or(0);
            t.push(vec![
                r["group"].as_str().unwrap_or_default().to_string(),
                opt_num(&r["requests"]),
                opt_num(&r["input_tokens"]),
                opt_num(&r["output_tokens"]),
                opt_num(&r["cached_tokens"]),
                opt_num(&r["reasoning_tokens"]),
                r["cost_usd"].as_str().unwrap_or_default().to_string(),
            ]);
        }
        let headers = [
            group_by.name(),
            "requests",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "reasoning_tokens",
            "cost_usd",
        ];
        format.print(&t, &headers, |t| {
            format!(
                "\n{} groups, {requests} requests, ${} by {}\n",
                t.len(),
                sluice_core::cost::format_usd(total),
                group_by.name()
            )
        })
    })
}

/// What `sluice usage` filters on.
#[derive(Debug, Args)]
pub struct UsageFilter {
    /// Only this key (its id).
    #[arg(long)]
    pub key: Option<String>,
    /// Only this team.
    #[arg(long)]
    pub team: Option<String>,
    /// At most this many rows (1..=10000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

/// Runs `sluice usage`.
pub fn usage(admin: &AdminArgs, filter: &UsageFilter, range: &Range, format: &Format) -> ExitCode {
    let mut q = vec![("limit", filter.limit.to_string())];
    if let Some(k) = &filter.key {
        q.push(("key_id", k.clone()));
    }
    if let Some(t) = &filter.team {
        q.push(("team", t.clone()));
    }
    range.query(&mut q);
    run(
        admin,
        Ok(Call::get(query("/admin/usage", &q))),
        format.json,
        |answer| {
            let mut t = Table::new(&[
                ("TIME (UTC)", false),
                ("REQUEST ID", false),
                ("KEY", false),
                ("TEAM", false),
                ("MODEL", false),
                ("DEPLOYMENT", false),
                ("INPUT", true),
                ("OUTPUT", true),
                ("COST USD", true),
                ("STATUS", true),
                ("LATENCY MS", true),
            ]);
            for r in list_of(answer) {
                let s = |f: &str| r[f].as_str().unwrap_or("-").to_string();
                t.push(vec![
                    utc(r["ts_ms"].as_u64().unwrap_or(0)),
                    s("request_id"),
                    s("key_id"),
                    s("team"),
                    s("model"),
                    s("deployment"),
                    opt_num(&r["input_tokens"]),
                    opt_num(&r["output_tokens"]),
                    s("cost_usd"),
                    opt_num(&r["status"]),
                    opt_num(&r["latency_ms"]),
                ]);
            }
            let headers = [
                "time_utc",
                "request_id",
                "key_id",
                "team",
                "model",
                "deployment",
                "input_tokens",
                "output_tokens",
                "cost_usd",
                "status",
                "latency_ms",
            ];
            format.print(&t, &headers, |t| {
                if t.is_empty() {
                    "(no requests in this range)\n".to_string()
                } else {
                    String::new()
                }
            })
        },
    )
}

/// Runs `sluice audit`.
pub fn audit(admin: &AdminArgs, limit: u32, range: &Range, format: &Format) -> ExitCode {
    let mut q = vec![("limit", limit.to_string())];
    range.query(&mut q);
    run(
        admin,
        Ok(Call::get(query("/admin/audit", &q))),
        format.json,
        |answer| {
            let mut t = Table::new(&[
                ("TIME (UTC)", false),
                ("WHO", false),
                ("VIA", false),
                ("WHAT", false),
                ("ON", false),
                ("STATUS", true),
            ]);
            for e in list_of(answer) {
                let s = |f: &str| e[f].as_str().unwrap_or("-").to_string();
                t.push(vec![
                    utc(e["ts_ms"].as_u64().unwrap_or(0)),
                    s("actor"),
                    s("via"),
                    s("action"),
                    s("target"),
                    opt_num(&e["status"]),
                ]);
            }
            let headers = ["time_utc", "actor", "via", "action", "target", "status"];
            format.print(&t, &headers, |_| String::new())
        },
    )
}
