//! Command line: `sluice serve [--config FILE]`, `sluice check-config FILE`,
//! `sluice doctor [--config FILE]` and `sluice keys create|list|show|rotate|revoke` (a client of
//! the admin API).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::listen::server;

/// Exit status for a configuration that was refused (EX_USAGE), before any port is bound.
const EXIT_CONFIG: u8 = 64;

/// Sluice: a thread-per-core LLM API gateway.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve {
        /// Config file; without it, the embedded default (127.0.0.1:8080, providers whose keys
        /// are in the environment).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print what would be served.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Check this host (io_uring, limits, sysctls, CPUs, clock) and print what to change.
    Doctor {
        /// Config file to check against (workers, driver, port); without it, the defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Manage virtual keys through a running gateway's admin API (token from
    /// `SLUICE_ADMIN_TOKEN`).
    Keys {
        /// The admin listener.
        #[arg(long, global = true, default_value = "http://127.0.0.1:8081")]
        admin: String,
        /// Print the API's JSON answers as they come.
        #[arg(long, global = true)]
        json: bool,
        /// What to do.
        #[command(subcommand)]
        action: KeysAction,
    },
}

/// `sluice keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Issue a key; it is printed once and never again.
    Create {
        /// A human name.
        #[arg(long)]
        name: String,
        /// The team it belongs to (default: `default`).
        #[arg(long)]
        team: Option<String>,
        /// The user it is issued to.
        #[arg(long)]
        user: Option<String>,
        /// Models it may call, comma-separated (`gpt-*` patterns allowed); default: all.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u64>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// Requests in flight.
        #[arg(long)]
        max_concurrency: Option<u32>,
        /// Budget in USD per period.
        #[arg(long)]
        budget_usd: Option<f64>,
        /// daily, weekly, monthly (default) or lifetime.
        #[arg(long)]
        budget_period: Option<String>,
        /// Unix second after which the key is refused.
        #[arg(long)]
        expires_at: Option<u64>,
    },
    /// List every key (never the keys themselves: their prefixes).
    List,
    /// Show one key.
    Show {
        /// Its id.
        id: String,
    },
    /// Issue a new key for the same id; the old one is refused at once.
    Rotate {
        /// Its id.
        id: String,
    },
    /// Refuse a key from now on (`--delete` removes it; its usage stays in the ledger).
    Revoke {
        /// Its id.
        id: String,
        /// Delete instead of disable.
        #[arg(long)]
        delete: bool,
    },
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::CheckConfig { file } => match server::load_config(Some(&file)) {
            Ok(cfg) => {
                print!("{}", cfg.summary());
                println!("config ok: {}", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice: {}: {e}", file.display());
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Doctor { config } => {
            let cfg = match config.as_deref().map(|p| server::load_config(Some(p))) {
                None => None,
                Some(Ok(cfg)) => Some(cfg),
                Some(Err(e)) => {
                    eprintln!("sluice: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let checks = crate::ops::doctor::run(cfg.as_ref());
            print!("{}", crate::ops::doctor::render(&checks));
            if crate::ops::doctor::has_failure(&checks) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Keys {
            admin,
            json,
            action,
        } => keys(&admin, json, action),
        Command::Serve { config } => {
            let cfg = match server::load_config(config.as_deref()) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("sluice: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match server::serve(cfg, config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sluice: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs a `sluice keys` subcommand against the admin API.
fn keys(admin: &str, raw_json: bool, action: KeysAction) -> ExitCode {
    let Some(token) = std::env::var("SLUICE_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    else {
        eprintln!("sluice: set SLUICE_ADMIN_TOKEN to the gateway's admin token");
        return ExitCode::from(EXIT_CONFIG);
    };
    let (method, path, body) = match &action {
        KeysAction::Create {
            name,
            team,
            user,
            models,
            rpm,
            tpm,
            max_concurrency,
            budget_usd,
            budget_period,
            expires_at,
        } => {
            let mut v = serde_json::json!({ "name": name, "models": models });
            let mut set = |k: &str, x: serde_json::Value| {
                if !x.is_null() {
                    v[k] = x;
                }
            };
            set("team", serde_json::json!(team));
            set("user", serde_json::json!(user));
            set("rpm", serde_json::json!(rpm));
            set("tpm", serde_json::json!(tpm));
            set("max_concurrency", serde_json::json!(max_concurrency));
            set("budget_usd", serde_json::json!(budget_usd));
            set("budget_period", serde_json::json!(budget_period));
            set("expires_at", serde_json::json!(expires_at));
            ("POST", "/admin/keys".to_string(), Some(v))
        }
        KeysAction::List => ("GET", "/admin/keys".to_string(), None),
        KeysAction::Show { id } => ("GET", format!("/admin/keys/{id}"), None),
        KeysAction::Rotate { id } => ("POST", format!("/admin/keys/{id}/rotate"), None),
        KeysAction::Revoke { id, delete: true } => ("DELETE", format!("/admin/keys/{id}"), None),
        KeysAction::Revoke { id, delete: false } => {
            ("POST", format!("/admin/keys/{id}/disable"), None)
        }
    };
    let (status, answer) = match admin_call(admin, token.trim(), method, &path, body.as_ref()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("sluice: admin API at {admin}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !(200..300).contains(&status) {
        let msg = answer["error"]["message"]
            .as_str()
            .map_or_else(|| answer.to_string(), str::to_string);
        eprintln!("sluice: {status}: {msg}");
        return ExitCode::FAILURE;
    }
    if raw_json {
        println!("{answer}");
        return ExitCode::SUCCESS;
    }
    let line = |k: &serde_json::Value| {
        let status = if k["disabled"].as_bool() == Some(true) {
            "disabled"
        } else {
            "active"
        };
        format!(
            "{:<22} {:<16} {:<12} {:<20} {:<8} {}",
            k["id"].as_str().unwrap_or(""),
            k["name"].as_str().unwrap_or(""),
            k["team"].as_str().unwrap_or(""),
            k["prefix"].as_str().unwrap_or(""),
            status,
            k["spend_usd"]
                .as_f64()
                .map_or(String::new(), |s| format!("${s:.6}")),
        )
    };
    match action {
        KeysAction::List => {
            println!(
                "{:<22} {:<16} {:<12} {:<20} {:<8} SPEND",
                "ID", "NAME", "TEAM", "PREFIX", "STATUS"
            );
            for k in answer["data"].as_array().into_iter().flatten() {
                println!("{}", line(k));
            }
        }
        KeysAction::Revoke { delete: true, id } => println!("deleted {id}"),
        _ => {
            println!("{}", line(&answer));
            if let Some(key) = answer["key"].as_str() {
                println!("\nkey: {key}\n(shown once: store it now; only its hash is kept)");
            }
        }
    }
    ExitCode::SUCCESS
}

/// One HTTP/1.1 call to the admin API over a plain TCP connection: (status, JSON body).
fn admin_call(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value), String> {
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    use std::time::Duration;
    let rest = base
        .strip_prefix("http://")
        .ok_or("the admin URL must start with http://")?;
    let host = rest.split('/').next().unwrap_or(rest);
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {host}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send: {e}"))?;
    let mut buf = Vec::new();
    stream
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    let (head, len) = sluice_core::http1::parse_response_head(&buf, 64 * 1024, false)
        .map_err(|e| format!("bad answer: {e}"))?
        .ok_or("incomplete answer")?;
    let json = serde_json::from_slice(buf.get(len..).unwrap_or_default())
        .map_err(|e| format!("answer is not JSON: {e}"))?;
    Ok((head.status, json))
}
