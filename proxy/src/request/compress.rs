//! Response compression, the byte half: core decides (`sluice_core::compress`), this module
//! compresses a whole answer's body with gzip, brotli or zstd.
//!
//! Where the work runs: a worker is one thread for every connection on its core, so a
//! multi-millisecond compression on it stalls every other request there. Bodies up to
//! `inline_max_bytes` (16 KiB by default: well under a millisecond at the default levels on a
//! quiet core, see `bench/benches/compress.rs`) are compressed inline, where a hand-off would
//! cost about as much as the work; with the default `min_bytes` (32 KiB) that is only a small
//! answer for a client that refused identity. Larger ones go to a small pool of compression
//! threads shared by the workers, through a bounded queue, and come back on a oneshot channel
//! that wakes the worker. When the queue is full the answer goes uncompressed: a full queue means compression is already
//! using all the CPU it was given, and doing it inline then would trade every other request
//! on the core (their latency) for one client's bandwidth. Sending identity is always correct;
//! compression is best effort.
//!
//! The pool starts on first use, sized from the config read then (`threads`; `0` picks a
//! quarter of the cores, at least one): a reload changes levels and thresholds at once, the
//! thread count only on restart.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use crossbeam_channel::{Sender, TrySendError};
use futures_channel::oneshot;
use sluice_core::compress::{AcceptEncoding, AnswerFacts, Coding, CompressionConfig, Decision};
use sluice_core::http1::ResponseHead;

/// Jobs queued per compression thread before answers go uncompressed.
const QUEUE_PER_THREAD: usize = 4;

/// What goes to the client: the body and how it is encoded.
pub(crate) struct Encoded {
    /// The body to send (compressed when `decision.coding` is set).
    pub body: Vec<u8>,
    /// The coding applied and whether to send `Vary`.
    pub decision: Decision,
}

/// One body for a compression thread.
struct Job {
    body: Vec<u8>,
    coding: Coding,
    level: i32,
    /// The compressed body, or the original one back when compression failed.
    done: oneshot::Sender<Result<Vec<u8>, Vec<u8>>>,
}

/// Compresses `body` when the client asked and the answer is worth it. `content_type` is the
/// type the client will see (the upstream's unless the body was translated). `None` only if
/// a compression thread died with the body (a bug: the caller answers 500).
pub(crate) async fn encode_answer(
    cfg: &CompressionConfig,
    accept: &AcceptEncoding,
    head: &ResponseHead,
    content_type: Option<&[u8]>,
    body: Vec<u8>,
) -> Option<Encoded> {
    // The common case costs one comparison: small, and the client did not refuse identity.
    if !cfg.enabled || ((body.len() as u64) < cfg.min_bytes && !accept.refuses_identity()) {
        return Some(identity(body, false));
    }
    let facts = AnswerFacts {
        len: body.len() as u64,
        content_type: content_type.or_else(|| head.header("content-type")),
        encoded: head
            .header("content-encoding")
            .is_some_and(|v| !v.trim_ascii().eq_ignore_ascii_case(b"identity")),
        no_transform: head
            .header("cache-control")
            .is_some_and(sluice_core::compress::has_no_transform),
    };
    encode_body(cfg, accept, &facts, body).await
}

/// [`encode_answer`] for a body the gateway wrote itself (a cached answer replayed), described
/// by `facts` rather than by an upstream's head.
pub(crate) async fn encode_body(
    cfg: &CompressionConfig,
    accept: &AcceptEncoding,
    facts: &AnswerFacts<'_>,
    body: Vec<u8>,
) -> Option<Encoded> {
    if !cfg.enabled || ((body.len() as u64) < cfg.min_bytes && !accept.refuses_identity()) {
        return Some(identity(body, false));
    }
    let decision = cfg.decide(accept, facts);
    let Some(coding) = decision.coding else {
        return Some(identity(body, decision.vary));
    };
    let level = level_of(cfg, coding);
    if body.len() as u64 <= cfg.inline_max_bytes {
        return Some(match encode(coding, level, &body) {
            Ok(out) => compressed(body.len(), out, decision, "inline"),
            Err(e) => {
                tracing::debug!(coding = coding.token(), error = %e, "compression failed");
                identity(body, decision.vary)
            }
        });
    }
    let (done, rx) = oneshot::channel();
    let job_len = body.len();
    let job = Job {
        body,
        coding,
        level,
        done,
    };
    match pool(cfg.threads).try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
            tracing::debug!(
                coding = coding.token(),
                bytes = job.body.len(),
                "compression threads busy: answer sent uncompressed"
            );
            metrics::counter!("sluice_compression_busy_total").increment(1);
            return Some(identity(job.body, decision.vary));
        }
    }
    let len = job_len;
    match rx.await.ok()? {
        Ok(out) => Some(compressed(len, out, decision, "pool")),
        Err(body) => Some(identity(body, decision.vary)),
    }
}

/// A compressed answer, counted.
fn compressed(len: usize, out: Vec<u8>, decision: Decision, place: &'static str) -> Encoded {
    let coding = decision.coding.map_or("", Coding::token);
    metrics::counter!("sluice_compressed_responses_total", "coding" => coding, "place" => place)
        .increment(1);
    metrics::counter!("sluice_compression_saved_bytes_total")
        .increment(len.saturating_sub(out.len()) as u64);
    Encoded {
        body: out,
        decision,
    }
}

fn identity(body: Vec<u8>, vary: bool) -> Encoded {
    Encoded {
        body,
        decision: Decision { coding: None, vary },
    }
}

/// The configured level of `coding`.
fn level_of(cfg: &CompressionConfig, coding: Coding) -> i32 {
    match coding {
        Coding::Gzip => cfg.gzip_level as i32,
        Coding::Brotli => cfg.br_level as i32,
        Coding::Zstd => cfg.zstd_level,
    }
}

/// Compresses `body` whole with `coding` at `level`.
pub fn encode(coding: Coding, level: i32, body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len() / 4 + 64);
    match coding {
        Coding::Gzip => {
            let level = flate2::Compression::new(level.clamp(1, 9) as u32);
            let mut enc = flate2::write::GzEncoder::new(out, level);
            enc.write_all(body)?;
            enc.finish()
        }
        Coding::Brotli => {
            let params = brotli::enc::BrotliEncoderParams {
                quality: level.clamp(0, 11),
                lgwin: 22,
                size_hint: body.len(),
                ..Default::default()
            };
            brotli::BrotliCompress(&mut &body[..], &mut out, &params)?;
            Ok(out)
        }
        Coding::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(out, level)?;
            enc.set_pledged_src_size(Some(body.len() as u64))?;
            enc.include_contentsize(true)?;
            enc.write_all(body)?;
            enc.finish()
        }
    }
}

/// The queue of the compression threads, started on first use.
fn pool(threads: usize) -> &'static Sender<Job> {
    static POOL: OnceLock<Sender<Job>> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 4).max(1))
        } else {
            threads
        };
        let (tx, rx) = crossbeam_channel::bounded::<Job>(threads * QUEUE_PER_THREAD);
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("sluice-compress-{i}"))
                .spawn(move || {
                    for job in rx.iter() {
                        let Job {
                            body,
                            coding,
                            level,
                            done,
                        } = job;
                        let out = catch_unwind(AssertUnwindSafe(|| encode(coding, level, &body)));
                        let _ = done.send(match out {
                            Ok(Ok(out)) => Ok(out),
                            _ => Err(body),
                        });
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start a compression thread");
            }
        }
        tx
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample() -> Vec<u8> {
        let mut body = Vec::new();
        for i in 0..5000 {
            body.extend_from_slice(
                format!("{{\"index\":{i},\"embedding\":[0.{i},-0.5]}},").as_bytes(),
            );
        }
        body
    }

    #[test]
    fn every_coding_round_trips() {
        let body = sample();
        for coding in [Coding::Gzip, Coding::Brotli, Coding::Zstd] {
            let packed = encode(coding, 3, &body).unwrap();
            assert!(packed.len() < body.len() / 4, "{coding:?}");
            let mut back = Vec::new();
            match coding {
                Coding::Gzip => {
                    flate2::read::GzDecoder::new(&packed[..])
                        .read_to_end(&mut back)
                        .unwrap();
                }
                Coding::Brotli => {
                    brotli::Decompressor::new(&packed[..], 4096)
                        .read_to_end(&mut back)
                        .unwrap();
                }
                Coding::Zstd => back = zstd::stream::decode_all(&packed[..]).unwrap(),
            }
            assert_eq!(back, body, "{coding:?}");
        }
    }
}
