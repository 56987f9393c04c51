//! The log's writer thread: diagnostics lines and the workers' batches of access lines go to
//! one sink (stdout) from one thread, so a slow terminal or disk never blocks a worker and
//! the lines of both never interleave.
//!
//! It replaces `tracing-appender`'s non-blocking writer, which cost the data plane in three
//! ways at a few hundred access lines per hand-off: it copied every 64 KiB batch into a new
//! buffer (`to_vec`, about 680 instructions a request on the worker), its thread spun in
//! `sched_yield` before it slept (two syscalls per hand-off), and it wrote each message with
//! its own `write(2)`. Here:
//! - a batch is handed over by moving its buffer ([`LogWriter::hand_over`]); the worker gets
//!   back a spare one the writer has emptied, so batches cost neither a copy nor an
//!   allocation;
//! - while lines keep coming, the writer thread looks at its queue every [`POLL`] without
//!   being woken (a worker's hand-off is then a push under a lock, no futex call and no
//!   context switch); after a look that found nothing it sleeps until the next message wakes
//!   it, so an idle gateway has an idle writer and a lone line is written at once;
//! - everything queued when it wakes goes out in as few `writev(2)` calls as the sink takes.
//!
//! Bounded and lossy like the appender it replaces: past [`QUEUE_LIMIT_BYTES`] waiting, a
//! message is dropped and its lines counted ([`LogWriter::dropped_lines`]); a sender never
//! blocks. On a graceful stop the [`LogGuard`] drains the queue into the sink before it
//! returns, so no accepted line is lost.

use std::io::{self, IoSlice, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes that may wait for the sink before messages are dropped: a disk that stalls for a
/// second at tens of MB/s of access lines loses nothing.
pub const QUEUE_LIMIT_BYTES: usize = 64 * 1024 * 1024;

/// Emptied buffers the writer keeps for the workers' next batches (a busy worker hands over
/// a few per [`POLL`]).
const SPARES: usize = 16;

/// How long the writer waits, unwoken, between two looks at its queue while lines keep
/// coming: a line waits at most this long in the queue (plus the worker's own batching).
pub const POLL: Duration = Duration::from_millis(10);

/// A buffer larger than this is not kept as a spare (one huge batch does not pin memory).
const SPARE_MAX_BYTES: usize = 1024 * 1024;

/// How long [`LogGuard`]'s drop waits for the writer to drain (a sink that blocks for good,
/// such as a full pipe nobody reads, must not hang the stop).
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Buffers a `writev(2)` takes at most (`IOV_MAX` is 1,024 on Linux).
const MAX_SLICES: usize = 512;

#[derive(Default)]
struct Queue {
    /// Messages in the order they were sent.
    msgs: Vec<Vec<u8>>,
    /// Their bytes.
    bytes: usize,
    /// Emptied buffers for [`LogWriter::hand_over`].
    spares: Vec<Vec<u8>>,
    /// The writer waits on `wake` until a message comes (set and cleared by the writer,
    /// under the lock); while it only naps between two looks ([`POLL`]) this stays false
    /// and senders do not wake it.
    sleeping: bool,
    /// The guard asked the writer to drain and stop.
    stopping: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    dropped: AtomicUsize,
    limit: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock leaves a queue of whole messages: keep using it.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The senders' handle: cheap to clone; `&LogWriter` is an [`io::Write`] that sends each
/// write as one message (what `tracing`'s formatter does with each line).
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Drains the queue into the sink and stops the writer when dropped; keep it until exit.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    done: crossbeam_channel::Receiver<()>,
}

impl LogWriter {
    /// Starts the writer thread on `sink`, with at most `limit` bytes waiting.
    pub fn spawn(sink: impl Write + Send + 'static, limit: usize) -> io::Result<(Self, LogGuard)> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            dropped: AtomicUsize::new(0),
            limit,
        });
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-log".into())
            .spawn(move || {
                run(&s, sink);
                let _ = done_tx.send(());
            })?;
        Ok((
            LogWriter {
                shared: shared.clone(),
            },
            LogGuard {
                shared,
                thread: Some(thread),
                done,
            },
        ))
    }

    /// Lines dropped because the queue was full (or the writer had stopped).
    pub fn dropped_lines(&self) -> usize {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Queues a copy of `line` (whole lines, newline included).
    pub fn send_line(&self, line: &[u8]) {
        if !line.is_empty() {
            self.send(line.to_vec(), false);
        }
    }

    /// Hands `batch` (whole lines) to the writer without copying it, and leaves in its place
    /// an empty buffer (a spare the writer emptied, when it has one), so the caller can fill
    /// it again. A full queue drops the batch and counts its lines.
    pub fn hand_over(&self, batch: &mut Vec<u8>) {
        if batch.is_empty() {
            return;
        }
        let full = std::mem::take(batch);
        if let Some(spare) = self.send(full, true) {
            *batch = spare;
        }
    }

    /// Queues `msg`; wakes the writer if it sleeps (the queue was empty). With `want_spare`,
    /// returns a spare buffer if the writer left one.
    fn send(&self, msg: Vec<u8>, want_spare: bool) -> Option<Vec<u8>> {
        let mut q = self.shared.lock();
        let spare = if want_spare { q.spares.pop() } else { None };
        if q.stopping || q.bytes + msg.len() > self.shared.limit {
            drop(q);
            let lines = msg.iter().filter(|b| **b == b'\n').count().max(1);
            self.shared.dropped.fetch_add(lines, Ordering::Relaxed);
            return spare;
        }
        q.bytes += msg.len();
        q.msgs.push(msg);
        let wake = q.sleeping && q.msgs.len() == 1;
        drop(q);
        if wake {
            self.shared.wake.notify_one();
        }
        spare
    }
}

impl Write for &LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send_line(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_one();
        if self.done.recv_timeout(STOP_WAIT).is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        } else {
            eprintln!(
                "sluice: the log writer did not drain within {STOP_WAIT:?}; lines may be lost"
            );
        }
    }
}

/// The writer thread: takes everything queued, writes it, gives the emptied buffers back as
/// spares, naps [`POLL`] and looks again; when a look finds nothing it sleeps until a sender
/// wakes it. Once stopping and drained, it flushes and returns.
fn run(shared: &Shared, mut sink: impl Write) {
    let mut taken: Vec<Vec<u8>> = Vec::new();
    // Whether the last look found something: then nap, else sleep until woken.
    let mut busy = false;
    loop {
        let stopping = {
            let mut q = shared.lock();
            // Buffers emptied by the last round go back as spares.
            for mut b in taken.drain(..) {
                if q.spares.len() < SPARES && b.capacity() <= SPARE_MAX_BYTES {
                    b.clear();
                    q.spares.push(b);
                }
            }
            if busy && !q.stopping {
                // Unannounced: senders do not wake a napping writer (the guard does).
                q = shared
                    .wake
                    .wait_timeout(q, POLL)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            while q.msgs.is_empty() && !q.stopping && !busy {
                q.sleeping = true;
                q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                q.sleeping = false;
            }
            busy = !q.msgs.is_empty();
            std::mem::swap(&mut q.msgs, &mut taken);
            q.bytes = 0;
            q.stopping
        };
        if let Err(e) = write_all(&mut sink, &taken).and_then(|()| sink.flush()) {
            // Like the appender it replaces: a sink error loses these lines, not the next.
            let lines: usize = taken
                .iter()
                .map(|m| m.iter().filter(|b| **b == b'\n').count())
                .sum();
            shared.dropped.fetch_add(lines, Ordering::Relaxed);
            if stopping {
                eprintln!("sluice: the log could not be written: {e}");
            }
        }
        if stopping && shared.lock().msgs.is_empty() {
            return;
        }
    }
}

/// Writes every buffer of `msgs`, in order, in as few vectored writes as the sink takes.
fn write_all(sink: &mut impl Write, msgs: &[Vec<u8>]) -> io::Result<()> {
    for group in msgs.chunks(MAX_SLICES) {
        let mut slices: Vec<IoSlice<'_>> = group.iter().map(|m| IoSlice::new(m)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match sink.write_vectored(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that keeps what it gets, optionally slowly, and counts its writes.
    #[derive(Clone, Default)]
    struct Sink {
        data: Arc<Mutex<Vec<u8>>>,
        writes: Arc<AtomicUsize>,
        delay: Option<Duration>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if let Some(d) = self.delay {
                std::thread::sleep(d);
            }
            self.writes.fetch_add(1, Ordering::Relaxed);
            // Takes at most 3 slices a call, and a part of the last: the caller must go on.
            let mut data = self.data.lock().unwrap();
            let mut n = 0;
            for (i, b) in bufs.iter().take(3).enumerate() {
                let take = if i == 2 { b.len().div_ceil(2) } else { b.len() };
                data.extend_from_slice(&b[..take]);
                n += take;
            }
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn lines_of(sink: &Sink) -> Vec<String> {
        let data = sink.data.lock().unwrap();
        String::from_utf8(data.clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn every_line_of_every_sender_arrives_whole_and_in_order_after_the_stop() {
        let sink = Sink {
            delay: Some(Duration::from_micros(200)),
            ..Sink::default()
        };
        let (writer, guard) = LogWriter::spawn(sink.clone(), QUEUE_LIMIT_BYTES).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = writer.clone();
                std::thread::spawn(move || {
                    let mut batch = Vec::new();
                    for i in 0..2_000 {
                        if t % 2 == 0 {
                            // A worker: lines gathered, handed over every 50.
                            writeln!(batch, "t{t} line {i} {}", "x".repeat(i % 300)).unwrap();
                            if i % 50 == 49 {
                                w.hand_over(&mut batch);
                                assert!(batch.is_empty());
                            }
                        } else {
                            // Diagnostics: one message a line, through `io::Write`, as
                            // `tracing`'s formatter writes a line it formatted whole
                            // (`writeln!` would send each piece as its own message).
                            (&w).write_all(format!("t{t} line {i}\n").as_bytes())
                                .unwrap();
                        }
                    }
                    w.hand_over(&mut batch);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let lines = lines_of(&sink);
        let odd: Vec<&String> = lines
            .iter()
            .filter(|l| !l.starts_with('t') || l.len() > 320)
            .take(3)
            .collect();
        assert_eq!(lines.len(), 8_000, "{odd:?}");
        for t in 0..4 {
            let mine: Vec<&String> = lines
                .iter()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .collect();
            assert_eq!(mine.len(), 2_000, "thread {t}");
            for (i, l) in mine.iter().enumerate() {
                let want = if t % 2 == 0 {
                    format!("t{t} line {i} {}", "x".repeat(i % 300))
                } else {
                    format!("t{t} line {i}")
                };
                assert_eq!(**l, want);
            }
        }
        assert_eq!(writer.dropped_lines(), 0);
    }

    #[test]
    fn batches_are_handed_over_without_a_copy_and_their_buffers_come_back() {
        let sink = Sink::default();
        let (writer, guard) = LogWriter::spawn(sink.clone(), QUEUE_LIMIT_BYTES).unwrap();
        let mut batch = Vec::with_capacity(4096);
        batch.extend_from_slice(b"first\n");
        let sent = batch.as_ptr();
        writer.hand_over(&mut batch);
        assert!(batch.is_empty());
        // Once the writer emptied it, the same allocation comes back for a later batch.
        let mut seen = false;
        for i in 0..200 {
            std::thread::sleep(Duration::from_millis(5));
            batch.extend_from_slice(format!("next {i}\n").as_bytes());
            writer.hand_over(&mut batch);
            if batch.as_ptr() == sent && batch.capacity() >= 4096 {
                seen = true;
                break;
            }
        }
        assert!(seen, "the first batch's buffer never came back as a spare");
        drop(guard);
        assert_eq!(lines_of(&sink)[0], "first");
    }

    #[test]
    fn a_full_queue_drops_and_counts_lines_and_never_blocks() {
        // A sink that takes a long time per write: the queue fills.
        let sink = Sink {
            delay: Some(Duration::from_millis(200)),
            ..Sink::default()
        };
        let (writer, guard) = LogWriter::spawn(sink.clone(), 100).unwrap();
        let start = std::time::Instant::now();
        for i in 0..50 {
            writer.send_line(format!("line {i:03}\n").as_bytes());
        }
        let mut batch = b"a\nb\nc\n".repeat(20);
        writer.hand_over(&mut batch);
        assert!(
            start.elapsed() < Duration::from_millis(150),
            "a sender blocked"
        );
        drop(guard);
        let written = lines_of(&sink).len();
        assert!(writer.dropped_lines() >= 60, "{}", writer.dropped_lines());
        assert_eq!(written + writer.dropped_lines(), 50 + 60);
        // After the stop nothing more is accepted, and it is counted.
        let before = writer.dropped_lines();
        writer.send_line(b"late\n");
        assert_eq!(writer.dropped_lines(), before + 1);
    }

    #[test]
    fn a_lone_line_reaches_the_sink_without_a_stop() {
        let sink = Sink::default();
        let (writer, _guard) = LogWriter::spawn(sink.clone(), QUEUE_LIMIT_BYTES).unwrap();
        // The writer sleeps first; one line must wake it.
        std::thread::sleep(Duration::from_millis(20));
        writer.send_line(b"alone\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while lines_of(&sink).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the line never arrived"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(lines_of(&sink), vec!["alone".to_owned()]);
        // Right after a round the writer naps unwoken: what comes then is written by its next
        // look, a poll later, still without a stop; and so is a line after it went back to
        // sleep.
        for (i, pause) in [Duration::ZERO, 10 * POLL].into_iter().enumerate() {
            std::thread::sleep(pause);
            writer.send_line(format!("then {i}\n").as_bytes());
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while lines_of(&sink).len() < i + 2 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "line {i} never arrived"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert_eq!(lines_of(&sink), ["alone", "then 0", "then 1"]);
    }

    #[test]
    fn many_queued_messages_go_out_in_few_writes() {
        let sink = Sink::default();
        let (writer, guard) = LogWriter::spawn(sink.clone(), QUEUE_LIMIT_BYTES).unwrap();
        let start_writes = sink.writes.load(Ordering::Relaxed);
        // 300 messages queued under one hold of the lock: the writer takes them at once.
        {
            let mut q = writer.shared.lock();
            for i in 0..300 {
                let m = format!("m {i}\n").into_bytes();
                q.bytes += m.len();
                q.msgs.push(m);
            }
        }
        writer.shared.wake.notify_one();
        drop(guard);
        // The test sink takes at most 3 slices a call, the last only in part: it ends 2
        // messages a call, 150 calls where a write per message would take 300 or more.
        let writes = sink.writes.load(Ordering::Relaxed) - start_writes;
        assert!(writes <= 160, "{writes} writes for 300 messages");
        let lines = lines_of(&sink);
        assert_eq!(lines.len(), 300);
        assert!(lines
            .iter()
            .enumerate()
            .all(|(i, l)| *l == format!("m {i}")));
    }
}
