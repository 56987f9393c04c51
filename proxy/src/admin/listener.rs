//! The admin listener: `GET /metrics` (Prometheus text), `GET /healthz`, the admin API
//! (`/admin/…`, see `admin::api`) and the admin web page (`/ui`, see `admin::ui`), with
//! blocking sockets on threads of its own, entirely off the data plane.
//!
//! Connections are served by a fixed pool of [`CONN_THREADS`] threads fed through a bounded
//! queue of [`QUEUE`] accepted connections: a flood of connections cannot start threads
//! without bound. When the queue is full, the acceptor answers 503 itself and closes. An idle
//! keep-alive connection holds its thread for at most [`IDLE_TIMEOUT`], and is closed after
//! its current answer when others are waiting.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use sluice_core::error::bounded;
use sluice_core::error::{ErrorKind, GatewayError};
use sluice_core::http1::{parse_request_head, BodyFraming, HeadLimits, RequestHead};

use crate::listen::respond;
use crate::state::Shared;

/// Largest admin request head or body.
const MAX_ADMIN_BYTES: usize = 1 << 20;
/// Threads serving admin connections.
pub const CONN_THREADS: usize = 8;
/// Accepted connections waiting for a thread.
pub const QUEUE: usize = 64;
/// How long a keep-alive connection may sit idle between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take to arrive once it has started.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds the admin listener and serves it on background threads. Returns the bound address.
pub fn spawn(generations: crate::state::Generations) -> io::Result<Option<SocketAddr>> {
    let first = generations.load_full();
    let cfg = &first.config.admin;
    if !cfg.enabled {
        return Ok(None);
    }
    let listener = TcpListener::bind(cfg.listen).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {} (admin): {e}", cfg.listen),
        )
    })?;
    let addr = listener.local_addr()?;
    crate::admin::api::started();
    let (tx, rx) = crossbeam_channel::bounded::<TcpStream>(QUEUE);
    for _ in 0..CONN_THREADS {
        let rx = rx.clone();
        let generations = generations.clone();
        std::thread::Builder::new()
            .name("sluice-admin-conn".into())
            .spawn(move || {
                for stream in rx.iter() {
                    serve(&generations, stream, &rx);
                }
            })?;
    }
    std::thread::Builder::new()
        .name("sluice-admin".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if let Err(crossbeam_channel::TrySendError::Full(mut stream)) = tx.try_send(stream)
                {
                    tracing::warn!("admin: every connection thread is busy; answering 503");
                    let busy = GatewayError::new(
                        ErrorKind::Overloaded,
                        "the admin listener is busy; try again",
                    );
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = stream.write_all(&respond::error(&busy, false, "admin"));
                }
            }
        })?;
    Ok(Some(addr))
}

fn serve(
    generations: &crate::state::Generations,
    mut stream: TcpStream,
    waiting: &crossbeam_channel::Receiver<TcpStream>,
) {
    let _ = stream.set_nodelay(true);
    let limits = HeadLimits {
        max_header_bytes: 64 * 1024,
        max_body_bytes: MAX_ADMIN_BYTES as u64,
    };
    let mut buf = Vec::with_capacity(4096);
    loop {
        let (head, body) = match read_request(&mut stream, &mut buf, &limits) {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(err) => {
                let _ = stream.write_all(&respond::error(&err, false, "admin"));
                return;
            }
        };
        // Keep the connection only while nobody else waits for a thread.
        let keep_alive = head.keep_alive && waiting.is_empty();
        let response = handle(&generations.load_full(), &head, &body, keep_alive);
        if stream.write_all(&response).is_err() || !keep_alive {
            return;
        }
    }
}

/// Reads one request (head and Content-Length body); `None` on a clean close.
fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limits: &HeadLimits,
) -> Result<Option<(RequestHead, Vec<u8>)>, GatewayError> {
    let mut chunk = [0u8; 4096];
    let (head, len) = loop {
        if let Some(parsed) = parse_request_head(buf, limits)? {
            break parsed;
        }
        let timeout = if buf.is_empty() {
            IDLE_TIMEOUT
        } else {
            REQUEST_TIMEOUT
        };
        let _ = stream.set_read_timeout(Some(timeout));
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    buf.drain(..len);
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let want = match head.body {
        BodyFraming::Length(n) => n as usize,
        BodyFraming::Empty | BodyFraming::UntilClose => 0,
        BodyFraming::Chunked => {
            return Err(GatewayError::new(
                ErrorKind::InvalidRequest,
                "the admin API takes Content-Length bodies",
            ))
        }
    };
    while buf.len() < want {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf.drain(..want).collect();
    Ok(Some((head, body)))
}

fn handle(shared: &Shared, head: &RequestHead, body: &[u8], keep_alive: bool) -> Vec<u8> {
    if crate::admin::api::is_admin_path(head.path()) {
        return crate::admin::api::handle(shared, head, body, keep_alive);
    }
    if crate::admin::ui::is_ui_path(head.path()) {
        return crate::admin::ui::handle(head.method(), head.path(), keep_alive);
    }
    match (head.method(), head.path()) {
        ("GET", "/metrics") => metrics_response(shared, keep_alive),
        ("GET", "/healthz") => respond::json(200, br#"{"status":"ok"}"#, &[], keep_alive, "admin"),
        (_, "/metrics") | (_, "/healthz") => respond::error_with(
            &GatewayError::new(ErrorKind::MethodNotAllowed, "use GET"),
            &[("allow", b"GET")],
            keep_alive,
            "admin",
        ),
        (method, path) => respond::error(
            &GatewayError::new(
                ErrorKind::RouteNotFound,
                format!("Unknown admin URL: {} {}", bounded(method), bounded(path)),
            ),
            keep_alive,
            "admin",
        ),
    }
}

/// The `/metrics` response (also served on the client listener when `metrics_on_main`).
pub fn metrics_response(shared: &Shared, keep_alive: bool) -> Vec<u8> {
    let mut text = crate::telemetry::metrics::render();
    cost_metrics(shared, &mut text);
    budget_metrics(shared, &mut text);
    let mut out = Vec::with_capacity(text.len() + 200);
    respond::write_head(
        &mut out,
        200,
        &[("content-type", b"text/plain; version=0.0.4; charset=utf-8")],
        respond::ClientFraming::Length(text.len() as u64),
        keep_alive,
        "metrics",
    );
    out.extend_from_slice(text.as_bytes());
    out
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `sluice_cost_usd_total`: a float counter (USD, from integer micro-USD), which the `metrics`
/// facade cannot hold, so it is written here. Labelled by model group; with
/// `admin.per_key_metrics`, requests with a key are counted in `{model, team}` series instead
/// (the `{model}` series then holds requests without a key), so every series adds up.
fn cost_metrics(shared: &Shared, out: &mut String) {
    use std::fmt::Write as _;
    let models = &shared.config.models;
    let _ = writeln!(
        out,
        "# HELP sluice_cost_usd_total Spend in USD at list prices, by model group."
    );
    let _ = writeln!(out, "# TYPE sluice_cost_usd_total counter");
    for (g, micros) in shared.auth.cost_by_group().into_iter().enumerate() {
        let Some(m) = models.get(g) else { continue };
        let _ = writeln!(
            out,
            "sluice_cost_usd_total{{model=\"{}\"}} {}",
            label(&m.name),
            micros as f64 / 1e6
        );
    }
    if !shared.config.admin.per_key_metrics {
        return;
    }
    let index = shared.auth.index();
    let mut teams: Vec<_> = index.teams().collect();
    teams.sort_by(|a, b| a.name.cmp(&b.name));
    for t in teams {
        for (g, c) in t.cost_by_group.iter().enumerate() {
            let micros = c.load(std::sync::atomic::Ordering::Relaxed);
            let Some(m) = models.get(g).filter(|_| micros > 0) else {
                continue;
            };
            let _ = writeln!(
                out,
                "sluice_cost_usd_total{{model=\"{}\",team=\"{}\"}} {}",
                label(&m.name),
                label(&t.name),
                micros as f64 / 1e6
            );
        }
    }
}

/// With `admin.per_key_metrics`: each key's and team's budget for the period and what is
/// left of it (USD), for keys and teams that have a budget. Read from the limit sets at
/// scrape time; labels are key ids (never keys) and team names.
fn budget_metrics(shared: &Shared, out: &mut String) {
    use std::fmt::Write as _;
    if !shared.config.admin.per_key_metrics {
        return;
    }
    let index = shared.auth.index();
    let usd = |m: u64| m as f64 / 1e6;
    let mut keys: Vec<_> = index
        .keys()
        .filter_map(|k| Some((k, k.limits.budget_limit_micros?)))
        .collect();
    keys.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    let mut teams: Vec<_> = index
        .teams()
        .filter_map(|t| Some((t, t.limits.budget_limit_micros?)))
        .collect();
    teams.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    for (name, help, remaining) in [
        (
            "sluice_key_budget_usd",
            "Budget of the period in USD, by key.",
            false,
        ),
        (
            "sluice_key_budget_remaining_usd",
            "Budget left this period in USD, by key.",
            true,
        ),
    ] {
        if keys.is_empty() {
            break;
        }
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (k, limit) in &keys {
            let v = if remaining {
                limit.saturating_sub(k.limits.budget.spend())
            } else {
                *limit
            };
            let _ = writeln!(
                out,
                "{name}{{key=\"{}\",team=\"{}\"}} {}",
                label(&k.id),
                label(&k.team.name),
                usd(v)
            );
        }
    }
    for (name, help, remaining) in [
        (
            "sluice_team_budget_usd",
            "Budget of the period in USD, by team.",
            false,
        ),
        (
            "sluice_team_budget_remaining_usd",
            "Budget left this period in USD, by team.",
            true,
        ),
    ] {
        if teams.is_empty() {
            break;
        }
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (t, limit) in &teams {
            let v = if remaining {
                limit.saturating_sub(t.limits.budget.spend())
            } else {
                *limit
            };
            let _ = writeln!(out, "{name}{{team=\"{}\"}} {}", label(&t.name), usd(v));
        }
    }
}
