//! One load worker: a thread with its own monoio runtime, its own connection
//! pool and its own histograms (share nothing; merged by [`super::run`]).
//!
//! Everything here is single-threaded: the worker state lives in an `Rc` and
//! `RefCell` borrows are never held across an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;

use super::client::{BodySink, ClientError, Conn};
use super::report::ThreadReport;
use super::sse::{SseScanner, StreamOutcome};
use super::ticker::{Schedule, Ticker};
use super::{Load, RunSpec, StreamSpec};

/// Live progress of one worker, read by the progress bar. Cache-line
/// aligned so workers never share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Counters {
    /// Requests finished.
    pub done: AtomicU64,
    /// Requests finished with an error (stalled and lost included).
    pub errors: AtomicU64,
}

/// What a worker thread is handed.
pub(crate) struct ThreadCtx {
    pub spec: Arc<RunSpec>,
    pub request: Bytes,
    pub index: usize,
    pub counters: Arc<Counters>,
    pub stop: Arc<AtomicBool>,
}

/// Runs block_on on a fresh runtime: io_uring with epoll fallback
/// (`FusionDriver`), or epoll only when `SLUICE_DRIVER=epoll`.
pub fn block_on<F: Future>(future: F) -> io::Result<F::Output> {
    let epoll = std::env::var("SLUICE_DRIVER").is_ok_and(|v| v.eq_ignore_ascii_case("epoll"));
    if epoll {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()?;
        Ok(rt.block_on(future))
    } else {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()?;
        Ok(rt.block_on(future))
    }
}

/// The body of worker thread `ctx.index`.
pub(crate) fn run_thread(ctx: ThreadCtx) -> io::Result<ThreadReport> {
    let spec = &ctx.spec;
    if !spec.pin_cores.is_empty() {
        let id = spec.pin_cores[ctx.index % spec.pin_cores.len()];
        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            return Err(io::Error::other(format!(
                "cannot pin worker {} to core {id}",
                ctx.index
            )));
        }
    }
    let report = ThreadReport::new()?;
    block_on(worker(ctx, report))?
}

/// `total` split over `threads`: the first `total % threads` get one more.
fn share(total: u64, threads: usize, index: usize) -> u64 {
    let t = threads.max(1) as u64;
    total / t + u64::from((index as u64) < total % t)
}

/// A connection with its per-request scratch, pooled together.
struct Lane {
    conn: Conn,
    scan: SseScanner,
}

/// Idle connections of an open-loop worker, and requests waiting for one.
///
/// A waiter receives `Some(lane)` (a connection to reuse) or `None` (a free
/// slot: open a new connection). `open` counts connections that exist or
/// are being opened, so it never exceeds `max_conns`.
#[derive(Default)]
struct Pool {
    idle: Vec<Lane>,
    open: usize,
    waiters: VecDeque<oneshot::Sender<Option<Lane>>>,
}

/// How one request ended.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// A complete 2xx response (with its stream accounting when streaming).
    Ok(Option<StreamOutcome>),
    Status(u16),
    Connect,
    Timeout,
    Io,
    Protocol,
    /// A 2xx stream cut short after its head.
    Cut(StreamOutcome),
}

struct Worker {
    spec: Arc<RunSpec>,
    request: Bytes,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    stats: RefCell<ThreadReport>,
    pool: RefCell<Pool>,
    inflight: Cell<usize>,
}

async fn worker(ctx: ThreadCtx, report: ThreadReport) -> io::Result<ThreadReport> {
    let threads = ctx.spec.threads;
    let limit = ctx.spec.requests.map(|n| share(n, threads, ctx.index));
    let w = Rc::new(Worker {
        spec: Arc::clone(&ctx.spec),
        request: ctx.request,
        counters: ctx.counters,
        stop: ctx.stop,
        stats: RefCell::new(report),
        pool: RefCell::new(Pool::default()),
        inflight: Cell::new(0),
    });
    let start = Instant::now();
    let deadline = w.spec.duration.map(|d| start + d);
    match w.spec.load {
        Load::Rate(rate) => {
            let schedule = Schedule {
                start,
                rate: rate / threads as f64,
                limit,
                deadline,
            };
            open_loop(&w, schedule).await?;
        }
        Load::Concurrency(c) => {
            let c = share(c as u64, threads, ctx.index);
            closed_loop(&w, c, limit, deadline).await;
        }
    }
    while w.inflight.get() > 0 {
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
    w.stats.borrow_mut().elapsed = start.elapsed();
    w.pool.borrow_mut().idle.clear();
    match Rc::try_unwrap(w) {
        Ok(w) => Ok(w.stats.into_inner()),
        // A finished task not yet dropped still holds a clone: swap out.
        Err(w) => Ok(w.stats.replace(ThreadReport::new()?)),
    }
}

/// Launches request `i` at `start + i / rate` as its own task until the
/// deadline or the request limit; never waits for responses. A [`Ticker`]
/// thread provides the sub-millisecond wake-ups.
async fn open_loop(w: &Rc<Worker>, schedule: Schedule) -> io::Result<()> {
    let ticker = Ticker::start(schedule)?;
    let mut i = 0u64;
    while let Some(scheduled) = schedule.at(i) {
        if w.stop.load(Ordering::Relaxed) {
            break;
        }
        if scheduled > Instant::now() {
            ticker.wait_for(scheduled).await;
        }
        w.inflight.set(w.inflight.get() + 1);
        drop(monoio::spawn(open_request(Rc::clone(w), scheduled)));
        i += 1;
    }
    Ok(())
}

async fn open_request(w: Rc<Worker>, scheduled: Instant) {
    w.stats.borrow_mut().sched_lag.record(scheduled.elapsed());
    let lane = acquire(&w).await;
    let (outcome, lane) = exchange(&w, lane, scheduled).await;
    release(&w, lane);
    w.record(outcome, scheduled);
    w.inflight.set(w.inflight.get() - 1);
}

/// `concurrency` tasks, each on its own connection, sending back to back.
async fn closed_loop(
    w: &Rc<Worker>,
    concurrency: u64,
    limit: Option<u64>,
    deadline: Option<Instant>,
) {
    let issued = Rc::new(Cell::new(0u64));
    for _ in 0..concurrency {
        w.inflight.set(w.inflight.get() + 1);
        let (w, issued) = (Rc::clone(w), Rc::clone(&issued));
        drop(monoio::spawn(async move {
            let mut lane = None;
            loop {
                let out_of_time = deadline.is_some_and(|d| Instant::now() >= d);
                if out_of_time
                    || limit.is_some_and(|l| issued.get() >= l)
                    || w.stop.load(Ordering::Relaxed)
                {
                    break;
                }
                issued.set(issued.get() + 1);
                let sent = Instant::now();
                let (outcome, back) = exchange(&w, lane.take(), sent).await;
                lane = back;
                w.record(outcome, sent);
            }
            w.inflight.set(w.inflight.get() - 1);
        }));
    }
}

/// A pooled connection, or `None`: a slot to open a new one. Waits when
/// `max_conns` connections are busy.
async fn acquire(w: &Worker) -> Option<Lane> {
    let rx = {
        let mut pool = w.pool.borrow_mut();
        if let Some(lane) = pool.idle.pop() {
            return Some(lane);
        }
        if pool.open < w.spec.max_conns {
            pool.open += 1;
            return None;
        }
        let (tx, rx) = oneshot::channel();
        pool.waiters.push_back(tx);
        rx
    };
    // The pool outlives every waiter, so the sender is never dropped unsent.
    rx.await.unwrap_or(None)
}

/// Returns a reusable connection, or frees the slot of a closed one, handing
/// either straight to the oldest waiter.
fn release(w: &Worker, lane: Option<Lane>) {
    let mut pool = w.pool.borrow_mut();
    let mut grant = lane;
    while let Some(tx) = pool.waiters.pop_front() {
        match tx.send(grant) {
            Ok(()) => return,
            Err(back) => grant = back,
        }
    }
    match grant {
        Some(lane) => pool.idle.push(lane),
        None => pool.open = pool.open.saturating_sub(1),
    }
}

/// One request, connecting first if `lane` is `None`, bounded by the
/// timeout. Returns the lane when the connection can be reused.
async fn exchange(w: &Worker, lane: Option<Lane>, t0: Instant) -> (Outcome, Option<Lane>) {
    match monoio::time::timeout(w.spec.timeout, attempt(w, lane, t0)).await {
        Ok(done) => done,
        Err(_) => (Outcome::Timeout, None),
    }
}

async fn attempt(w: &Worker, lane: Option<Lane>, t0: Instant) -> (Outcome, Option<Lane>) {
    let mut lane = match lane {
        Some(lane) => lane,
        None => match Conn::connect(w.spec.endpoint.addr).await {
            Ok(conn) => Lane {
                conn,
                scan: SseScanner::new(),
            },
            Err(_) => return (Outcome::Connect, None),
        },
    };
    let mut retried = false;
    loop {
        let reused = lane.conn.is_reused();
        lane.scan.reset();
        let mut probe = Probe {
            stats: &w.stats,
            scan: &mut lane.scan,
            stream: w.spec.stream,
            t0,
            status: 0,
        };
        let result = lane.conn.request(w.request.clone(), &mut probe).await;
        let status = probe.status;
        let now = Instant::now();
        let ok_head = (200..300).contains(&status);
        return match result {
            Ok(resp) => {
                let outcome = if ok_head {
                    Outcome::Ok(
                        w.spec
                            .stream
                            .map(|s| w.finish_stream(&mut lane.scan, now, s)),
                    )
                } else {
                    Outcome::Status(resp.status)
                };
                (outcome, resp.keep_alive.then_some(lane))
            }
            Err(ClientError::ClosedEarly) if reused && !retried => {
                // A keep-alive connection the server had already closed.
                retried = true;
                match Conn::connect(w.spec.endpoint.addr).await {
                    Ok(conn) => lane.conn = conn,
                    Err(_) => return (Outcome::Connect, None),
                }
                continue;
            }
            Err(ClientError::ClosedEarly | ClientError::Io(_)) => match w.spec.stream {
                Some(s) if ok_head => (Outcome::Cut(w.finish_stream(&mut lane.scan, now, s)), None),
                _ => (Outcome::Io, None),
            },
            Err(ClientError::Protocol(_) | ClientError::Body(_)) => (Outcome::Protocol, None),
        };
    }
}

/// Feeds the response into the worker's histograms and the SSE scanner.
struct Probe<'a> {
    stats: &'a RefCell<ThreadReport>,
    scan: &'a mut SseScanner,
    stream: Option<StreamSpec>,
    t0: Instant,
    status: u16,
}

impl BodySink for Probe<'_> {
    fn on_head(&mut self, status: u16, now: Instant) {
        self.status = status;
        if (200..300).contains(&status) {
            self.stats
                .borrow_mut()
                .ttfb
                .record(now.saturating_duration_since(self.t0));
        }
    }

    fn on_body(&mut self, data: &[u8], now: Instant) -> Result<(), &'static str> {
        match self.stream {
            Some(s) if (200..300).contains(&self.status) => self
                .scan
                .feed(data, now, &mut self.stats.borrow_mut().gaps, s.stall)
                .map_err(|_| "SSE line too long"),
            _ => Ok(()),
        }
    }
}

impl Worker {
    fn finish_stream(&self, scan: &mut SseScanner, now: Instant, s: StreamSpec) -> StreamOutcome {
        scan.finish(now, &mut self.stats.borrow_mut().gaps, s.stall)
    }

    /// Accounts one finished request whose latency reference is `t0`.
    fn record(&self, outcome: Outcome, t0: Instant) {
        let now = Instant::now();
        let expect = self.spec.stream.and_then(|s| s.expect_chunks);
        let mut s = self.stats.borrow_mut();
        let s = &mut *s;
        s.requests += 1;
        let before = s.errors.total;
        let mut stream = None;
        match outcome {
            Outcome::Ok(o) => {
                s.ok += 1;
                s.latency.record(now.saturating_duration_since(t0));
                stream = o;
            }
            Outcome::Status(code) => *s.errors.status.entry(code).or_default() += 1,
            Outcome::Connect => s.errors.connect += 1,
            Outcome::Timeout => s.errors.timeout += 1,
            Outcome::Io => s.errors.io += 1,
            Outcome::Protocol => s.errors.protocol += 1,
            Outcome::Cut(o) => {
                if !o.lost(expect) {
                    s.errors.io += 1; // every chunk arrived; only the framing end was cut
                }
                stream = Some(o);
            }
        }
        if let Some(o) = stream {
            s.streams += 1;
            s.events += u64::from(o.events);
            s.content_events += u64::from(o.content_events);
            if let Some(first) = o.first_content {
                s.ttft.record(first.saturating_duration_since(t0));
            }
            s.errors.stalled += u64::from(o.stalled);
            s.errors.lost += u64::from(o.lost(expect));
        }
        s.errors.retotal();
        self.counters.done.fetch_add(1, Ordering::Relaxed);
        if s.errors.total > before {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_add_up() {
        for total in [0u64, 1, 7, 100] {
            for threads in 1..5 {
                let sum: u64 = (0..threads).map(|i| share(total, threads, i)).sum();
                assert_eq!(sum, total);
            }
        }
    }
}
