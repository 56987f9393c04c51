//! `alloc-count`: heap allocations per proxied request, counted in-process.
//!
//! Runs the real gateway (`sluice_proxy::listen::server::serve`, what `sluice serve` runs)
//! on a thread of this process under a counting global allocator, in front of the bundled
//! mock (`sluice-mock`, a child process next to this binary, so its allocations are not
//! ours), and drives it from a client thread whose own allocations are excluded. For each
//! shape it sends warm-up requests, then counts every allocation the process makes while N
//! more requests go through, and prints allocations and bytes per request. Background
//! threads of the gateway (health, DNS, metrics upkeep) count too; the `idle` row is the
//! same wall time with no request, to show what they add.
//!
//! With `--full`, the gateway is the bench's `sluice_full`: a required key with rpm, tpm and
//! budget limits, the SQLite ledger (in a temporary directory), the JSON access log and
//! metrics. Its access log goes to stdout, as `sluice serve`'s does, so the table then goes
//! to stderr (run it with `> /dev/null`).
//!
//! ```text
//! cargo build --release -p sluice-proxy -p sluice-loadtest -p sluice-bench --bins
//! target/release/alloc-count [--requests 2000] [--warmup 200] [--full] [--sites N]
//! ```
//!
//! `--max-allocs N` makes it fail (exit 1) when a non-streaming shape took more than N
//! allocations per request (bench/tests/alloc_bound.rs holds the gateway to a bound).
//!
//! `--sites N` then sends N more requests of the first shape recording the call stack of
//! every allocation, and prints each distinct site (its innermost frames) with how many
//! allocations per request it made.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sluice_bench::alloc_count::{
    counts, skip_this_thread, take_sites, trace_sites, CountingAlloc, Counts,
};
use sluice_bench::fixture::{bare_config, start_mock, wait_port};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const PATH: &str = "/v1/chat/completions";

/// One request shape.
struct Shape {
    name: &'static str,
    /// Size of the prompt's content, bytes.
    prompt_bytes: usize,
    stream: bool,
    /// `x-mock-*` headers (answer size, stream chunks).
    mock_headers: &'static str,
}

const SHAPES: [Shape; 4] = [
    Shape {
        name: "1 KB request, ~1 KB answer",
        prompt_bytes: 900,
        stream: false,
        mock_headers: "x-mock-chunks: 20\r\nx-mock-chunk-size: 40\r\n",
    },
    Shape {
        name: "100 KB request, small answer",
        prompt_bytes: 100_000,
        stream: false,
        mock_headers: "",
    },
    Shape {
        name: "small request, 100 KB answer",
        prompt_bytes: 100,
        stream: false,
        mock_headers: "x-mock-chunks: 100\r\nx-mock-chunk-size: 1000\r\n",
    },
    Shape {
        name: "stream, 20 chunks",
        prompt_bytes: 100,
        stream: true,
        mock_headers: "x-mock-chunks: 20\r\nx-mock-chunk-delay-ms: 0\r\n",
    },
];

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The key `--full` requires.
const FULL_KEY: &str = "sk-sluice-alloc-count-0123456789";

fn config(dir: &std::path::Path, port: u16, mock_port: u16, full: bool) -> io::Result<PathBuf> {
    if full {
        return full_config(dir, port, mock_port);
    }
    bare_config(dir, "alloc-count.toml", "alloc-count", port, mock_port)
}

fn full_config(dir: &std::path::Path, port: u16, mock_port: u16) -> io::Result<PathBuf> {
    let store = dir.join("sluice.db");
    let text = format!(
        r#"# Written by alloc-count --full: the bench's sluice_full (keys, ledger, access log, metrics).
auth = "keys"

[server]
listen = "127.0.0.1:{port}"
workers = 1
pin_workers = false

[log]
level = "info"
format = "json"
access_log = true

[admin]
enabled = true
listen = "127.0.0.1:0"

[store]
path = "{store}"

[[keys]]
name = "bench"
key = "{FULL_KEY}"
team = "bench"
rpm = 1000000000
tpm = 1000000000000
budget_usd = 1000000000.0

[[providers]]
name = "mock"
kind = "openai"
base_url = "http://127.0.0.1:{mock_port}/v1"

[[models]]
name = "mock-fast"
deployments = [{{ provider = "mock", model = "mock-model" }}]

[prices."mock-model"]
input_per_mtok = 2.5
output_per_mtok = 10.0
"#,
        store = store.display()
    );
    let path = dir.join("alloc-count-full.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn request(shape: &Shape, port: u16, full: bool) -> Vec<u8> {
    let prompt = "x".repeat(shape.prompt_bytes);
    let body = format!(
        r#"{{"model":"mock-fast","stream":{},"messages":[{{"role":"user","content":"{prompt}"}}]}}"#,
        shape.stream
    );
    let auth = if full {
        format!("authorization: Bearer {FULL_KEY}\r\n")
    } else {
        String::new()
    };
    let mut r = format!(
        "POST {PATH} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n{}{auth}\r\n",
        body.len(),
        shape.mock_headers
    )
    .into_bytes();
    r.extend_from_slice(body.as_bytes());
    r
}

/// Reads one complete 2xx answer (Content-Length or chunked).
fn read_answer(conn: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    buf.clear();
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("closed before the answer".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 2") {
        return Err(bad(format!(
            "answer: {}",
            head.lines().next().unwrap_or_default()
        )));
    }
    let length: Option<usize> = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok());
    loop {
        let body = &buf[head_end..];
        let done = match length {
            Some(n) => body.len() >= n,
            None => body.ends_with(b"0\r\n\r\n"),
        };
        if done {
            return Ok(());
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("closed mid-answer".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn send(conn: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>, n: u64) -> io::Result<()> {
    for _ in 0..n {
        conn.write_all(req)?;
        read_answer(conn, buf)?;
    }
    Ok(())
}

struct Row {
    name: String,
    requests: u64,
    counted: Counts,
    secs: f64,
}

/// Sends `n` requests of the first shape recording every allocation's call stack; returns
/// the distinct sites, most frequent first, as (allocations, bytes, frames).
fn sites(port: u16, n: u64, full: bool) -> io::Result<Vec<(u64, u64, String)>> {
    skip_this_thread();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut buf = Vec::with_capacity(256 * 1024);
    let req = request(&SHAPES[0], port, full);
    let mut conn = TcpStream::connect(addr)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    send(&mut conn, &req, &mut buf, 50)?;
    drop(take_sites());
    trace_sites(true);
    let sent = send(&mut conn, &req, &mut buf, n);
    trace_sites(false);
    sent?;
    let mut by_site: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for (size, bt) in take_sites() {
        let e = by_site.entry(site_frames(&bt.to_string())).or_default();
        e.0 += 1;
        e.1 += size as u64;
    }
    let mut out: Vec<_> = by_site.into_iter().map(|(k, (a, b))| (a, b, k)).collect();
    out.sort_by(|a, b| b.0.cmp(&a.0).then(a.2.cmp(&b.2)));
    Ok(out)
}

/// The frames of a rendered backtrace that say where an allocation came from: the last
/// library frame before the first of this workspace's, and the next few, as
/// `function (file:line)`.
fn site_frames(bt: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR").trim_end_matches("/bench");
    let mut frames: Vec<(String, String)> = Vec::new();
    for line in bt.lines() {
        let t = line.trim();
        if let Some(at) = t.strip_prefix("at ") {
            if let Some(last) = frames.last_mut() {
                last.1 = at.to_string();
            }
        } else if let Some((num, sym)) = t.split_once(": ") {
            if num.chars().all(|c| c.is_ascii_digit()) {
                frames.push((sym.to_string(), String::new()));
            }
        }
    }
    // Workspace files are named relative to the workspace (or under it); libraries' by
    // absolute paths elsewhere.
    let ours = |f: &str| {
        (f.starts_with(root) || !f.starts_with('/'))
            && !f.is_empty()
            && !f.contains("alloc_count.rs")
            && !f.contains("alloc-count.rs")
    };
    let first = frames.iter().position(|(_, f)| ours(f)).unwrap_or(0);
    frames[first.saturating_sub(1)..]
        .iter()
        .take(7)
        .map(|(s, f)| {
            let s = s.split("::h").next().unwrap_or(s);
            let f = f.as_str();
            let f = f.strip_prefix(root).map_or_else(
                || f.rsplit_once("/src/").map_or(f, |(_, x)| x),
                |x| x.trim_start_matches('/'),
            );
            format!("    {s} ({f})")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn measure(port: u16, requests: u64, warmup: u64, full: bool) -> io::Result<Vec<Row>> {
    skip_this_thread();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut rows = Vec::new();
    let mut buf = Vec::with_capacity(256 * 1024);
    for shape in &SHAPES {
        let req = request(shape, port, full);
        let mut conn = TcpStream::connect(addr)?;
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        send(&mut conn, &req, &mut buf, warmup)?;
        let before = counts();
        let t0 = Instant::now();
        send(&mut conn, &req, &mut buf, requests)?;
        rows.push(Row {
            name: shape.name.into(),
            requests,
            counted: counts().since(before),
            secs: t0.elapsed().as_secs_f64(),
        });
    }
    // The same wall time as the last shape, with no request: the background's share.
    let secs = rows.last().map_or(1.0, |r| r.secs);
    let before = counts();
    std::thread::sleep(Duration::from_secs_f64(secs));
    rows.push(Row {
        name: format!("idle ({secs:.2} s, no request), per would-be request"),
        requests,
        counted: counts().since(before),
        secs,
    });
    Ok(rows)
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "usage: alloc-count [--requests N] [--warmup N] [--full] [--max-allocs N] [--sites N]"
        );
        return Ok(());
    }
    let requests = sluice_bench::cli::number(&args, "--requests", 2000)?;
    let warmup = sluice_bench::cli::number(&args, "--warmup", 200)?;
    let full = args.iter().any(|a| a == "--full");
    let max_allocs = match args.iter().position(|a| a == "--max-allocs") {
        None => None,
        Some(_) => Some(sluice_bench::cli::number(&args, "--max-allocs", 1)?),
    };
    let dir = std::env::temp_dir().join(format!("sluice-alloc-count-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (port, mock_port) = (free_port()?, free_port()?);
    let _mock = start_mock(mock_port)?;
    let path = config(&dir, port, mock_port, full)?;
    let cfg = sluice_proxy::listen::server::load_config(Some(&path))?;
    // The gateway runs until the process exits.
    std::thread::Builder::new()
        .name("alloc-count-gateway".into())
        .spawn(move || sluice_proxy::listen::server::serve(cfg, Some(path)))?;
    wait_port(port)?;
    let rows = std::thread::spawn(move || measure(port, requests, warmup, full))
        .join()
        .map_err(|_| "the client thread panicked")??;
    let site_requests = match args.iter().position(|a| a == "--sites") {
        None => None,
        Some(_) => Some(sluice_bench::cli::number(&args, "--sites", 10)?),
    };
    let site_list = match site_requests {
        Some(n) => Some((
            n,
            std::thread::spawn(move || sites(port, n, full))
                .join()
                .map_err(|_| "the client thread panicked")??,
        )),
        None => None,
    };
    let _ = std::fs::remove_dir_all(&dir);
    let mut table = format!(
        "Allocations per proxied request, {} (whole process but the client; {warmup} warm-up, {requests} counted each)\n\n",
        if full {
            "sluice_full: key, ledger, access log, metrics"
        } else {
            "bare gateway"
        }
    );
    table.push_str(
        "| shape | requests | allocations / request | bytes / request |\n|---|--:|--:|--:|\n",
    );
    let mut over = Vec::new();
    for (k, r) in rows.iter().enumerate() {
        let n = r.requests as f64;
        let per_request = r.counted.allocs as f64 / n;
        let bounded = SHAPES.get(k).is_some_and(|s| !s.stream);
        if let Some(max) = max_allocs.filter(|_| bounded) {
            if per_request > max as f64 {
                over.push(format!("{}: {per_request:.2} > {max}", r.name));
            }
        }
        table.push_str(&format!(
            "| {} | {} | {:.2} | {:.0} |\n",
            r.name,
            r.requests,
            r.counted.allocs as f64 / n,
            r.counted.bytes as f64 / n
        ));
    }
    // The request state (one heap block per request in flight) is bounded here, in the
    // release build that is measured, as well as by proxy's test in a debug one.
    let state = sluice_proxy::listen::conn::request_state_size();
    let limit = sluice_proxy::listen::conn::REQUEST_STATE_LIMIT;
    table.push_str(&format!(
        "\nRequest state (`serve_request`'s future): {state} B (limit {limit} B, mimalloc's size class)\n"
    ));
    if state > limit {
        over.push(format!("request state: {state} B > {limit} B"));
    }
    if let Some((n, list)) = site_list {
        table.push_str(&format!(
            "\nAllocation sites, {}, over {n} requests (allocations / request, bytes / request):\n",
            SHAPES[0].name
        ));
        for (allocs, bytes, frames) in list {
            table.push_str(&format!(
                "\n{:.2} allocs, {:.0} B:\n{frames}\n",
                allocs as f64 / n as f64,
                bytes as f64 / n as f64
            ));
        }
    }
    // With --full the gateway's access log is on stdout.
    if full {
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    if !over.is_empty() {
        return Err(format!("over the bound: {}", over.join("; ")).into());
    }
    Ok(())
}

fn main() -> ExitCode {
    sluice_bench::cli::exit("alloc-count", run())
}
