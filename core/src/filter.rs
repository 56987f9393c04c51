//! Body filters: sans-IO stages chained on an answer's body as it streams — translate the
//! upstream's dialect into the client's, strip the usage chunk the gateway asked for, keep a
//! bounded copy to read usage from or to store in the response cache (and, later, redact) —
//! so they compose instead of being one mode or another.
//!
//! ```text
//! upstream body bytes ─► [translate | usage scan] ─► [capture] ─► … ─► client body bytes
//!                        handle_bytes(in, out) per read; finish(end, out) once
//! ```
//!
//! Call order on a [`Chain`]: [`Chain::handle_bytes`] for each piece of the body as it arrives
//! (any split), then [`Chain::finish`] once with how the body ended. Read
//! [`Chain::usage`] and [`Chain::data_events`] after that.

use smallvec::SmallVec;

use crate::dialect::StreamTranslator;
use crate::error::GatewayError;
use crate::sse::SseScanner;
use crate::usage::{self, Usage};

/// How the body ended.
#[derive(Clone, Copy, Debug)]
pub enum BodyEnd<'e> {
    /// The upstream finished its body (framing intact).
    Complete,
    /// The upstream failed mid-body: end an event stream with this error, never a silent cut.
    Failed(&'e GatewayError),
    /// The client went away: nothing more is written.
    Cancelled,
}

/// One stage of a chain.
pub trait BodyFilter {
    /// Takes the next piece of the body (any split) and appends what the next stage gets.
    fn handle_bytes(&mut self, input: &[u8], out: &mut Vec<u8>);
    /// The body ended: appends what is left (a held partial event, a terminal or error event).
    fn finish(&mut self, end: BodyEnd<'_>, out: &mut Vec<u8>);
    /// Usage this stage read from the body, if it reads any.
    fn usage(&self) -> Option<Usage> {
        None
    }
    /// Data events passed (streams), for estimating a cancelled stream's output.
    fn data_events(&self) -> u64 {
        0
    }
    /// The model the upstream says answered (bounded), if this stage reads it.
    fn answered_model(&self) -> Option<String> {
        None
    }
}

/// An OpenAI event stream passed through: scanned for usage, the injected usage chunk
/// stripped; a stream cut by the upstream ends with an SSE error event.
impl BodyFilter for SseScanner {
    fn handle_bytes(&mut self, input: &[u8], out: &mut Vec<u8>) {
        SseScanner::handle_bytes(self, input, out);
    }
    fn finish(&mut self, end: BodyEnd<'_>, out: &mut Vec<u8>) {
        if matches!(end, BodyEnd::Cancelled) {
            return;
        }
        SseScanner::finish(self, out);
        if let BodyEnd::Failed(err) = end {
            if self.client_mid_event() {
                out.extend_from_slice(b"\n\n");
            }
            out.extend_from_slice(&interrupted(err).to_sse());
        }
    }
    fn usage(&self) -> Option<Usage> {
        SseScanner::usage(self)
    }
    fn data_events(&self) -> u64 {
        SseScanner::data_events(self)
    }
    fn answered_model(&self) -> Option<String> {
        SseScanner::answered_model(self).map(str::to_owned)
    }
}

/// Another dialect's event stream, translated event by event into the client's.
impl BodyFilter for StreamTranslator {
    fn handle_bytes(&mut self, input: &[u8], out: &mut Vec<u8>) {
        StreamTranslator::handle_bytes(self, input, out);
    }
    fn finish(&mut self, end: BodyEnd<'_>, out: &mut Vec<u8>) {
        match end {
            BodyEnd::Cancelled => {}
            BodyEnd::Complete if self.upstream_complete() => StreamTranslator::finish(self, out),
            BodyEnd::Complete => self.error_event(
                &GatewayError::new(
                    crate::error::ErrorKind::UpstreamUnreachable,
                    "stream interrupted: the upstream ended the stream early",
                ),
                out,
            ),
            BodyEnd::Failed(err) => self.error_event(&interrupted(err), out),
        }
    }
    fn usage(&self) -> Option<Usage> {
        StreamTranslator::usage(self)
    }
    fn answered_model(&self) -> Option<String> {
        StreamTranslator::answered_model(self).map(str::to_owned)
    }
}

/// The response cache's capture: bytes pass unchanged, the answer's pivot is built beside
/// them and kept only when the body completed.
impl BodyFilter for crate::cache::capture::PivotCapture {
    fn handle_bytes(&mut self, input: &[u8], out: &mut Vec<u8>) {
        crate::cache::capture::PivotCapture::handle_bytes(self, input, out);
    }
    fn finish(&mut self, end: BodyEnd<'_>, _out: &mut Vec<u8>) {
        crate::cache::capture::PivotCapture::finish(self, matches!(end, BodyEnd::Complete));
    }
}

fn interrupted(err: &GatewayError) -> GatewayError {
    let mut e = err.clone();
    e.message = format!("stream interrupted: {}", e.message);
    e
}

/// A bounded copy of a body that is passed through unchanged: usage is read from it when the
/// body completes; the copy is what a response store keeps.
#[derive(Debug, Default)]
pub struct Capture {
    copy: Vec<u8>,
    max: usize,
    overflowed: bool,
    complete: bool,
    /// Read usage from the copy (a JSON body) at the end.
    read_usage: bool,
}

impl Capture {
    /// A capture of at most `max` bytes; `read_usage` reads usage from a complete JSON body.
    pub fn new(max: usize, read_usage: bool) -> Self {
        Capture {
            copy: Vec::new(),
            max,
            overflowed: false,
            complete: false,
            read_usage,
        }
    }

    /// The whole body, when it completed within the bound.
    pub fn body(&self) -> Option<&[u8]> {
        (self.complete && !self.overflowed).then_some(&self.copy[..])
    }
}

impl BodyFilter for Capture {
    fn handle_bytes(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(input);
        if self.copy.len() + input.len() <= self.max {
            self.copy.extend_from_slice(input);
        } else {
            self.overflowed = true;
        }
    }
    fn finish(&mut self, end: BodyEnd<'_>, _out: &mut Vec<u8>) {
        self.complete = matches!(end, BodyEnd::Complete);
    }
    fn usage(&self) -> Option<Usage> {
        if self.read_usage {
            usage::from_body(self.body()?)
        } else {
            None
        }
    }
    fn answered_model(&self) -> Option<String> {
        if self.read_usage {
            crate::answered_model::from_json(self.body()?)
        } else {
            None
        }
    }
}

/// One stage of a [`Chain`]: the built-in filters inline (no allocation per request on the
/// hot path), any other behind a box.
pub enum Stage {
    /// An OpenAI event stream passed through (usage scan, injected usage stripped).
    Scan(SseScanner),
    /// Another dialect's event stream, translated.
    Translate(Box<StreamTranslator>),
    /// A bounded copy of the body.
    Capture(Capture),
    /// The answer built in the pivot shape for the response cache (placed first: it sees the
    /// upstream's bytes).
    Pivot(Box<crate::cache::capture::PivotCapture>),
    /// Any other filter.
    Other(Box<dyn BodyFilter>),
}

impl Stage {
    fn filter(&mut self) -> &mut dyn BodyFilter {
        match self {
            Stage::Scan(f) => f,
            Stage::Translate(f) => f.as_mut(),
            Stage::Capture(f) => f,
            Stage::Pivot(f) => f.as_mut(),
            Stage::Other(f) => f.as_mut(),
        }
    }

    fn peek(&self) -> &dyn BodyFilter {
        match self {
            Stage::Scan(f) => f,
            Stage::Translate(f) => f.as_ref(),
            Stage::Capture(f) => f,
            Stage::Pivot(f) => f.as_ref(),
            Stage::Other(f) => f.as_ref(),
        }
    }
}

/// Filters applied in order: the first stage sees the upstream's bytes, the last one's output
/// goes to the client.
#[derive(Default)]
pub struct Chain {
    stages: SmallVec<[Stage; 2]>,
    /// Scratch space between stages, reused for every piece.
    scratch: [Vec<u8>; 2],
}

impl Chain {
    /// An empty chain: bytes pass through.
    pub fn new() -> Self {
        Chain::default()
    }

    /// Appends a stage.
    pub fn push(&mut self, stage: Stage) {
        self.stages.push(stage);
    }

    /// Whether the chain has no stage.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Runs `input` through every stage, appending the result to `out`.
    pub fn handle_bytes(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.run(out, |stage, inp, o| stage.handle_bytes(inp, o), input);
    }

    /// Ends the body: each stage's remainder runs through the stages after it.
    pub fn finish(&mut self, end: BodyEnd<'_>, out: &mut Vec<u8>) {
        let n = self.stages.len();
        for k in 0..n {
            let [held, next] = &mut self.scratch;
            held.clear();
            if let Some(stage) = self.stages.get_mut(k) {
                stage.filter().finish(end, held);
            }
            // What stage k had left goes through the stages after it.
            for stage in self.stages.iter_mut().skip(k + 1) {
                next.clear();
                stage.filter().handle_bytes(held, next);
                std::mem::swap(held, next);
            }
            out.extend_from_slice(held);
        }
    }

    fn run(
        &mut self,
        out: &mut Vec<u8>,
        mut f: impl FnMut(&mut dyn BodyFilter, &[u8], &mut Vec<u8>),
        input: &[u8],
    ) {
        match self.stages.as_mut_slice() {
            [] => out.extend_from_slice(input),
            [only] => f(only.filter(), input, out),
            stages => {
                let [a, b] = &mut self.scratch;
                a.clear();
                a.extend_from_slice(input);
                let last = stages.len() - 1;
                for (k, stage) in stages.iter_mut().enumerate() {
                    if k == last {
                        f(stage.filter(), a, out);
                    } else {
                        b.clear();
                        f(stage.filter(), a, b);
                        std::mem::swap(a, b);
                    }
                }
            }
        }
    }

    /// Usage read by the first stage that reads any.
    pub fn usage(&self) -> Option<Usage> {
        self.stages.iter().find_map(|s| s.peek().usage())
    }

    /// The answered model read by the first stage that reads one.
    pub fn answered_model(&self) -> Option<String> {
        self.stages.iter().find_map(|s| s.peek().answered_model())
    }

    /// [`answered_model`](Self::answered_model) once the body is over: a passed-through
    /// stream's is moved out of its scanner, not copied.
    pub fn take_answered_model(&mut self) -> Option<String> {
        self.stages.iter_mut().find_map(|s| match s {
            Stage::Scan(scanner) => scanner.take_answered_model(),
            other => other.peek().answered_model(),
        })
    }

    /// The complete answer a [`Stage::Pivot`] built, if any (after [`Chain::finish`]).
    pub fn take_pivot(&mut self) -> Option<crate::cache::StoredAnswer> {
        self.stages.iter_mut().find_map(|s| match s {
            Stage::Pivot(p) => p.take(),
            _ => None,
        })
    }

    /// Data events counted by the first stage that counts them.
    pub fn data_events(&self) -> u64 {
        self.stages
            .iter()
            .map(|s| s.peek().data_events())
            .find(|n| *n > 0)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use proptest::prelude::*;

    const STREAM: &[u8] = b"data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n\
data: [DONE]\n\n";

    fn run(chain: &mut Chain, parts: &[&[u8]], end: BodyEnd<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            chain.handle_bytes(p, &mut out);
        }
        chain.finish(end, &mut out);
        out
    }

    #[test]
    fn scan_then_capture_composes() {
        let mut chain = Chain::new();
        chain.push(Stage::Scan(SseScanner::new(true)));
        chain.push(Stage::Capture(Capture::new(1 << 20, false)));
        let out = run(&mut chain, &[STREAM], BodyEnd::Complete);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            !text.contains("prompt_tokens"),
            "the injected usage chunk is stripped"
        );
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert_eq!(chain.usage().unwrap().total_tokens(), 4);
        assert_eq!(chain.data_events(), 1);
    }

    #[test]
    fn a_cut_stream_ends_with_an_error_event() {
        let mut chain = Chain::new();
        chain.push(Stage::Scan(SseScanner::new(false)));
        chain.push(Stage::Capture(Capture::new(1 << 20, false)));
        let err = GatewayError::new(ErrorKind::UpstreamTimeout, "upstream error: p stalled");
        let out = run(&mut chain, &[&STREAM[..30]], BodyEnd::Failed(&err));
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("stream interrupted: upstream error: p stalled"),
            "{text}"
        );
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    }

    #[test]
    fn capture_reads_usage_of_a_complete_body_only() {
        let body =
            br#"{"id":"x","usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
        let mut chain = Chain::new();
        chain.push(Stage::Capture(Capture::new(1 << 20, true)));
        let out = run(&mut chain, &[&body[..10], &body[10..]], BodyEnd::Complete);
        assert_eq!(out, body);
        assert_eq!(chain.usage().unwrap().total_tokens(), 7);
        let mut cut = Chain::new();
        cut.push(Stage::Capture(Capture::new(1 << 20, true)));
        run(&mut cut, &[&body[..10]], BodyEnd::Cancelled);
        assert!(cut.usage().is_none());
        let mut small = Capture::new(8, true);
        let mut out = Vec::new();
        small.handle_bytes(body, &mut out);
        small.finish(BodyEnd::Complete, &mut out);
        assert!(small.body().is_none(), "over its bound, nothing is kept");
    }

    proptest! {
        /// However the body is split, the chain's output is the same.
        #[test]
        fn any_split_gives_the_same_output(cuts in prop::collection::vec(0usize..STREAM.len(), 0..6)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut parts = Vec::new();
            let mut at = 0;
            for c in cuts {
                parts.push(&STREAM[at..c]);
                at = c;
            }
            parts.push(&STREAM[at..]);
            let make = || {
                let mut c = Chain::new();
                c.push(Stage::Scan(SseScanner::new(true)));
                c.push(Stage::Capture(Capture::new(1 << 20, false)));
                c
            };
            let whole = run(&mut make(), &[STREAM], BodyEnd::Complete);
            let split = run(&mut make(), &parts, BodyEnd::Complete);
            prop_assert_eq!(whole, split);
        }
    }
}
