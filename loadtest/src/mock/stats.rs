//! Counters shared by every worker, and the record of the last request.
//!
//! Workers bump [`Counters`] with `Relaxed` atomics: each counter is
//! independent, and a [`MockStats`] snapshot is a set of values read one after
//! the other, not an atomic picture (a test that polls for a value converges).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Bodies at least this long are not copied into [`RecordedRequest::body`].
pub const MAX_RECORDED_BODY: usize = 64 * 1024;

/// A snapshot of the mock's counters, as returned by
/// [`MockServer::stats`](super::MockServer::stats) and `GET /mock/stats`.
///
/// Control requests (`/mock/*`) are not counted, except as connections.
/// Completions are counted just before the last byte of an answer is written
/// (and taken back if the write fails), so a client that has read a whole
/// answer always finds it counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MockStats {
    /// TCP connections accepted.
    pub connections: u64,
    /// Requests received (complete head and body).
    pub requests: u64,
    /// Responses written in full, streams included (errors included).
    pub responses_completed: u64,
    /// Streaming answers begun (counted before the first-token delay).
    pub streams_started: u64,
    /// Streaming answers written up to the chunked terminator.
    pub streams_completed: u64,
    /// Upstream requests cancelled by the client: the client went away during
    /// a stream, a delayed answer or a stall, or a write failed mid-stream.
    pub streams_cancelled: u64,
    /// Failures the mock injected: `x-mock-status`, fail rate, and
    /// `x-mock-disconnect-after`.
    pub failures_injected: u64,
    /// Requests answered with a stall (`x-mock-stall: 1`).
    pub stalls: u64,
    /// Vertex AI access tokens issued by `POST /token`.
    #[serde(default)]
    pub tokens_issued: u64,
}

/// One request as the mock received it, for assertions in tests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// Request method, e.g. `POST`.
    pub method: String,
    /// Request target as sent, query string included.
    pub path: String,
    /// Headers in arrival order, names as sent (values decoded lossily).
    pub headers: Vec<(String, String)>,
    /// The decoded body (lossy UTF-8); empty when the body was
    /// [`MAX_RECORDED_BODY`] bytes or longer.
    pub body: String,
    /// The decoded body's length, whatever its size.
    pub body_len: usize,
    /// For a body too large to keep in `body`: its FNV-1a 64 checksum ([`fnv1a`]), so a test
    /// can check a large upload arrived byte for byte (0 for smaller bodies, which `body`
    /// holds; the small requests of a load run pay nothing for it).
    pub body_fnv: u64,
}

/// FNV-1a, 64 bits: a checksum for tests (not a defence against anything).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl RecordedRequest {
    /// The first value of header `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Which counter to bump; one variant per [`MockStats`] field.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Counter {
    Connections,
    Requests,
    ResponsesCompleted,
    StreamsStarted,
    StreamsCompleted,
    StreamsCancelled,
    FailuresInjected,
    Stalls,
    TokensIssued,
}

/// State shared by all workers of one server.
#[derive(Default)]
pub(crate) struct Shared {
    counters: [AtomicU64; 9],
    next_id: AtomicU64,
    last_request: Mutex<Option<RecordedRequest>>,
    /// Set once shutdown begins; workers stop accepting.
    pub(crate) stopping: AtomicBool,
}

impl Shared {
    pub(crate) fn bump(&self, counter: Counter) {
        self.counters[counter as usize].fetch_add(1, Relaxed);
    }

    /// Takes back a [`Shared::bump`] made ahead of a write that then failed.
    pub(crate) fn unbump(&self, counter: Counter) {
        self.counters[counter as usize].fetch_sub(1, Relaxed);
    }

    /// A fresh number for response ids (`chatcmpl-mock-<n>`).
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Relaxed) + 1
    }

    pub(crate) fn snapshot(&self) -> MockStats {
        let get = |c: Counter| self.counters[c as usize].load(Relaxed);
        MockStats {
            connections: get(Counter::Connections),
            requests: get(Counter::Requests),
            responses_completed: get(Counter::ResponsesCompleted),
            streams_started: get(Counter::StreamsStarted),
            streams_completed: get(Counter::StreamsCompleted),
            streams_cancelled: get(Counter::StreamsCancelled),
            failures_injected: get(Counter::FailuresInjected),
            stalls: get(Counter::Stalls),
            tokens_issued: get(Counter::TokensIssued),
        }
    }

    /// Zeroes every counter (ids keep growing, so they stay unique).
    pub(crate) fn reset(&self) {
        for counter in &self.counters {
            counter.store(0, Relaxed);
        }
    }

    pub(crate) fn record(&self, request: RecordedRequest) {
        // A poisoned lock only means another worker panicked mid-store; the
        // value is a plain record, so keep using it.
        let mut slot = self
            .last_request
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *slot = Some(request);
    }

    pub(crate) fn last_request(&self) -> Option<RecordedRequest> {
        self.last_request
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bump_snapshot_reset() {
        let shared = Shared::default();
        shared.bump(Counter::Requests);
        shared.bump(Counter::Requests);
        shared.bump(Counter::Stalls);
        let stats = shared.snapshot();
        assert_eq!((stats.requests, stats.stalls, stats.connections), (2, 1, 0));
        shared.reset();
        assert_eq!(shared.snapshot(), MockStats::default());
        assert_eq!(shared.next_id(), 1);
        assert_eq!(shared.next_id(), 2);
    }
}
