//! Where a request sits in its trace (W3C trace context): random trace and span ids, the
//! request's own server span, and the `traceparent` each attempt sends upstream.

use sluice_core::traceparent::TraceParent;

/// Random non-zero ids.
pub fn new_trace_id() -> [u8; 16] {
    let v = fastrand::u128(1..);
    v.to_be_bytes()
}

/// A random non-zero span id.
pub fn new_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

/// Where a request sits in its trace: our server span, its parent, and the trace.
#[derive(Clone, Copy, Debug)]
pub struct RequestTrace {
    /// The trace.
    pub trace_id: [u8; 16],
    /// This request's server span.
    pub span_id: [u8; 8],
    /// The client's span, when it sent a `traceparent`.
    pub parent: Option<[u8; 8]>,
}

impl RequestTrace {
    /// Continues the client's trace when it sent a sampled `traceparent`, else starts one
    /// with probability `ratio`. `None` when not traced.
    pub fn start(incoming: Option<&[u8]>, ratio: f64) -> Option<RequestTrace> {
        match incoming.and_then(TraceParent::parse) {
            Some(tp) if tp.sampled => Some(RequestTrace {
                trace_id: tp.trace_id,
                span_id: new_span_id(),
                parent: Some(tp.span_id),
            }),
            Some(_) => None,
            None if ratio >= 1.0 || fastrand::f64() < ratio => Some(RequestTrace {
                trace_id: new_trace_id(),
                span_id: new_span_id(),
                parent: None,
            }),
            None => None,
        }
    }

    /// The `traceparent` to send upstream for an attempt span.
    pub fn traceparent_for(&self, attempt_span: [u8; 8]) -> String {
        TraceParent {
            trace_id: self.trace_id,
            span_id: attempt_span,
            sampled: true,
        }
        .format()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_incoming_parent_is_continued() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = RequestTrace::start(Some(tp), 0.0).unwrap();
        assert_eq!(
            t.parent,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(t.trace_id[0], 0x4b);
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(RequestTrace::start(Some(unsampled), 1.0).is_none());
        assert!(RequestTrace::start(None, 0.0).is_none());
        let fresh = RequestTrace::start(None, 1.0).unwrap();
        assert!(fresh.parent.is_none());
        let header = fresh.traceparent_for([1; 8]);
        assert!(header.ends_with("-0101010101010101-01"));
    }
}
