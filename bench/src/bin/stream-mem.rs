//! `stream-mem`: what each concurrent stream holds on the heap, and what stays after.
//!
//! Runs the real gateway (`sluice_proxy::listen::server::serve`, what `sluice serve` runs,
//! one worker, bench/compare.sh's bare config) on a thread of this process under
//! [`LiveAlloc`] (mimalloc, keeping a histogram of live allocations by size), in front of the
//! bundled mock, and drives it with `sluice-load streams` (both child processes, next to this
//! binary, so their memory is not ours). It snapshots the live histogram and RSS at idle, at
//! the plateau of the last stream count, and 3 s after the load ended, and prints:
//!
//! - per stream at the plateau: live blocks by size (what mimalloc set aside for them), so the
//!   RSS per stream can be split into what is allocated and what is allocator overhead;
//! - after vs idle: the blocks still live once the load has gone (pools that grew and stay).
//!
//! `--suite` runs bench/compare.sh's request/response phases (closed loop of 64, 1k and 5k
//! req/s, 32 streams; 10 s each) before the streams, as the full bench does.
//!
//! `--trace MIN-MAX --trace-after` traces from the start of the load instead, and lists the
//! stacks whose blocks are still live after it.
//!
//! `--trace MIN-MAX` records the call stacks of the allocations of MIN..=MAX bytes made during
//! the last step until the plateau is read (at most 100,000), and lists them by stack: how
//! many were made and how many are still live (slow: for finding where a size comes from, not
//! for measuring).
//!
//! ```text
//! cargo build --release -p sluice-proxy -p sluice-loadtest -p sluice-bench --bins
//! target/release/stream-mem [--counts 2048] [--port 19451] [--trace 10000-10300] [--suite]
//! ```

use std::io;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use sluice_bench::fixture::{bare_config, sibling, start_mock, wait_port, Kid};
use sluice_bench::live_alloc::{self, LiveAlloc, Snapshot};

#[global_allocator]
static ALLOC: LiveAlloc = LiveAlloc;

fn rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Memory mimalloc has committed from the OS, KiB.
fn committed_kib() -> i64 {
    let (mut e, mut u, mut s, mut rss, mut peak, mut commit, mut peak_commit, mut faults) =
        (0, 0, 0, 0, 0, 0, 0, 0);
    // SAFETY: every argument is a valid pointer to a local `usize` for the call's duration.
    unsafe {
        libmimalloc_sys::mi_process_info(
            &mut e,
            &mut u,
            &mut s,
            &mut rss,
            &mut peak,
            &mut commit,
            &mut peak_commit,
            &mut faults,
        );
    }
    (commit / 1024) as i64
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn table(title: &str, d: &Snapshot, per: f64, min_bytes_per: f64) -> String {
    let mut out = format!(
        "{title}\n| size (B) | blocks | asked (B) | held by mimalloc (B) |\n|--:|--:|--:|--:|\n"
    );
    let mut rows = d.rows.clone();
    rows.sort_by_key(|r| -r.usable.abs());
    let mut rest = (0.0, 0.0, 0.0);
    for r in rows {
        let (l, b, u) = (
            r.live as f64 / per,
            r.bytes as f64 / per,
            r.usable as f64 / per,
        );
        if u.abs() < min_bytes_per {
            rest = (rest.0 + l, rest.1 + b, rest.2 + u);
            continue;
        }
        out.push_str(&format!("| {} | {l:.2} | {b:.0} | {u:.0} |\n", r.size));
    }
    let t = d.total();
    out.push_str(&format!(
        "| (smaller rows) | {:.2} | {:.0} | {:.0} |\n| **total** | {:.2} | {:.0} | {:.0} |\n",
        rest.0,
        rest.1,
        rest.2,
        t.live as f64 / per,
        t.bytes as f64 / per,
        t.usable as f64 / per
    ));
    out
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("usage: stream-mem [--counts 2048] [--port 19451] [--trace MIN-MAX] [--suite]");
        return Ok(());
    }
    let counts = arg(&args, "--counts").unwrap_or("2048").to_string();
    let last: f64 = counts
        .rsplit(',')
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or("--counts: comma-separated numbers")?;
    let steps = counts.split(',').count() as u64;
    let base: u16 = arg(&args, "--port").unwrap_or("19451").parse()?;
    let (port, mock_port) = (base, base + 1);
    let trace = match arg(&args, "--trace") {
        None => None,
        Some(t) => {
            let (a, b) = t.split_once('-').ok_or("--trace MIN-MAX")?;
            Some((a.parse::<usize>()?, b.parse::<usize>()?))
        }
    };
    let dir = std::env::temp_dir().join(format!("sluice-stream-mem-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _mock = start_mock(mock_port)?;
    let path = bare_config(&dir, "stream-mem.toml", "stream-mem", port, mock_port)?;
    let cfg = sluice_proxy::listen::server::load_config(Some(&path))?;
    std::thread::Builder::new()
        .name("stream-mem-gateway".into())
        .spawn(move || sluice_proxy::listen::server::serve(cfg, Some(path)))?;
    wait_port(port)?;
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let load = |counts: &str, step: &str| -> io::Result<Kid> {
        Ok(Kid(Command::new(sibling("sluice-load"))
            .args(["streams", "--url", &url, "--counts", counts])
            .args([
                "--step-duration",
                step,
                "--timeout",
                "10s",
                "--threads",
                "1",
            ])
            .args(["--quiet", "--stream", "--expect-chunks", "20"])
            .args(["--expect-gap-ms", "50", "-H", "x-mock-chunks: 20"])
            .args(["-H", "x-mock-chunk-delay-ms: 50"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?))
    };
    // Warm up as the bench does (one short run), then idle.
    drop(wait_child(load("8", "1s")?));
    std::thread::sleep(Duration::from_secs(2));
    let idle = live_alloc::snapshot();
    let idle_rss = rss_kib();
    let idle_commit = committed_kib();
    let trace_after = args.iter().any(|a| a == "--trace-after");
    if let (Some((min, max)), true) = (trace, trace_after) {
        live_alloc::trace_from_now(min, max, 1_000_000);
    }
    if args.iter().any(|a| a == "--suite") {
        // bench/compare.sh's request/response phases first (10 s each).
        let run = |extra: &[&str]| -> io::Result<()> {
            drop(wait_child(Kid(Command::new(sibling("sluice-load"))
                .args(["run", "--url", &url, "--threads", "1", "--quiet"])
                .args(["--duration", "10s", "--timeout", "5s"])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?)));
            Ok(())
        };
        run(&["--concurrency", "64"])?;
        run(&["--rate", "1000"])?;
        run(&["--rate", "5000"])?;
        run(&["--concurrency", "32", "--stream", "-H", "x-mock-chunks: 20"])?;
        std::thread::sleep(Duration::from_secs(2));
        let mid = live_alloc::snapshot().since(&idle);
        println!(
            "after the request/response phases: RSS {:+.1} MiB over idle, live heap {:+.1} MiB",
            (rss_kib() - idle_rss) as f64 / 1024.0,
            mid.total().usable as f64 / 1048576.0
        );
    }
    // Each step lasts 4 s; the last one's plateau is read in its middle.
    let child = load(&counts, "4s")?;
    std::thread::sleep(Duration::from_millis(4000 * (steps - 1)));
    if let (Some((min, max)), false) = (trace, trace_after) {
        live_alloc::trace_from_now(min, max, 100_000);
    }
    std::thread::sleep(Duration::from_millis(2500));
    let plateau = live_alloc::snapshot();
    let plateau_rss = rss_kib();
    let traced = live_alloc::traced();
    drop(wait_child(child));
    std::thread::sleep(Duration::from_secs(3));
    let after = live_alloc::snapshot();
    let after_rss = rss_kib();
    let after_commit = committed_kib();

    let d = plateau.since(&idle);
    let t = d.total();
    println!(
        "idle: RSS {:.1} MiB, live heap {:.1} MiB held by mimalloc ({} blocks)",
        idle_rss as f64 / 1024.0,
        idle.total().usable as f64 / 1048576.0,
        idle.total().live
    );
    println!(
        "plateau of {last} streams: RSS +{:.1} KiB per stream over idle, live heap +{:.1} KiB per stream \
         (the rest, {:.1} KiB, is allocator pages not filled, and memory outside the heap)",
        (plateau_rss - idle_rss) as f64 / last,
        t.usable as f64 / 1024.0 / last,
        ((plateau_rss - idle_rss) * 1024 - t.usable) as f64 / 1024.0 / last,
    );
    println!();
    print!(
        "{}",
        table(
            &format!("Live blocks per stream at the plateau of {last} (over idle):"),
            &d,
            last,
            64.0
        )
    );
    let a = after.since(&idle);
    println!();
    println!(
        "after (3 s after the load): RSS {:.1} MiB ({:+.1} % of idle), live heap {:+.1} MiB over idle",
        after_rss as f64 / 1024.0,
        (after_rss - idle_rss) as f64 * 100.0 / idle_rss as f64,
        a.total().usable as f64 / 1048576.0
    );
    println!(
        "mimalloc's committed memory: idle {:.1} MiB, after {:.1} MiB",
        idle_commit as f64 / 1024.0,
        after_commit as f64 / 1024.0
    );
    print!(
        "{}",
        table(
            "Blocks still live after the load (over idle, whole):",
            &a,
            1.0,
            16384.0
        )
    );
    if trace_after {
        println!("\nTraced allocations still live after the load, by stack:");
        for (stack, live, bytes, made) in live_alloc::traced().iter().filter(|t| t.1 > 0).take(40) {
            println!("{made} made, {live} still live ({bytes} B)\n    {stack}");
        }
    } else if !traced.is_empty() {
        println!("\nTraced allocations of the last step until the plateau, by stack:");
        for (stack, live, bytes, made) in traced.iter().take(40) {
            println!("{made} made, {live} still live ({bytes} B)\n    {stack}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn wait_child(mut kid: Kid) -> Kid {
    let _ = kid.0.wait();
    kid
}

fn main() -> ExitCode {
    sluice_bench::cli::exit("stream-mem", run())
}
