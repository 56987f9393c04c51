//! The splitter and the scanner: any split of the reads, odd events, and the one-pass event
//! reading against the searches it replaced.

use super::*;
use proptest::prelude::*;

const STREAM: &str = concat!(
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
    "data: [DONE]\n\n",
);

fn run(strip: bool, input: &[u8], cuts: &[usize]) -> (Vec<u8>, SseScanner) {
    let mut s = SseScanner::new(strip);
    let mut out = Vec::new();
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&input.len())) {
        let c = c.clamp(start, input.len());
        s.handle_bytes(&input[start..c], &mut out);
        start = c;
    }
    s.finish(&mut out);
    (out, s)
}

#[test]
fn passthrough_forwards_everything_and_reads_usage() {
    let (out, s) = run(false, STREAM.as_bytes(), &[]);
    assert_eq!(out, STREAM.as_bytes());
    let u = s.usage().unwrap();
    assert_eq!((u.input_tokens, u.output_tokens), (5, 2));
    assert!(s.saw_done());
    assert_eq!(s.data_events(), 4);
}

#[test]
fn reads_the_answered_model_from_the_first_chunk() {
    let input = b"data: {\"id\":\"c\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[]}\n\ndata: {\"id\":\"c\",\"model\":\"other\",\"choices\":[]}\n\ndata: [DONE]\n\n";
    for strip in [false, true] {
        let (_, s) = run(strip, input, &[7, 30]);
        assert_eq!(s.answered_model(), Some("gpt-4o-2024-08-06"));
    }
    let (_, none) = run(false, STREAM.as_bytes(), &[]);
    assert_eq!(none.answered_model(), None);
    // Not wanted: not read, and nothing else changes (bytes out, usage, events).
    for strip in [false, true] {
        let mut with = SseScanner::new(strip);
        let mut without = SseScanner::new(strip).without_model();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        with.handle_bytes(input, &mut a);
        without.handle_bytes(input, &mut b);
        with.finish(&mut a);
        without.finish(&mut b);
        assert_eq!(a, b);
        assert_eq!(without.answered_model(), None);
        assert_eq!(with.data_events(), without.data_events());
        assert_eq!(with.saw_done(), without.saw_done());
    }
}

#[test]
fn strip_removes_usage_chunk_and_nulls() {
    let (out, s) = run(true, STREAM.as_bytes(), &[]);
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains("usage"), "{text}");
    assert!(text.contains("\"content\":\"Hi\""));
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(text.matches("data: ").count(), 4);
    assert_eq!(s.usage().unwrap().total_tokens(), 7);
    assert_eq!(s.data_events(), 3);
}

#[test]
fn crlf_events_and_unterminated_tail() {
    let input = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\r\n\r\ndata: [DONE]";
    let (out, s) = run(true, input, &[10]);
    assert_eq!(out, b"data: [DONE]");
    assert!(s.saw_done());
    assert_eq!(s.usage().unwrap().total_tokens(), 2);
}

#[test]
fn oversized_event_passes_unscanned() {
    let big = format!(
        "data: {}\n\ndata: [DONE]\n\n",
        "x".repeat(MAX_EVENT_BYTES + 10)
    );
    let (out, _) = run(
        true,
        big.as_bytes(),
        &[100, MAX_EVENT_BYTES / 2, MAX_EVENT_BYTES + 5],
    );
    assert_eq!(out, big.as_bytes());
}

/// Pieces of `input` cut at `cuts`, consecutive oversized pieces joined (how an oversized
/// event is chunked depends on the reads; its bounds do not).
fn pieces(max: usize, input: &[u8], cuts: &[usize]) -> Vec<(bool, Vec<u8>)> {
    let mut s = EventSplitter::new(max);
    let mut got: Vec<(bool, Vec<u8>)> = Vec::new();
    let mut push = |piece: Piece<'_>| match piece {
        Piece::Event(raw) => got.push((false, raw.to_vec())),
        Piece::Oversized(raw) => match got.last_mut() {
            Some((true, prev)) => prev.extend_from_slice(raw),
            _ => got.push((true, raw.to_vec())),
        },
    };
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&input.len())) {
        let c = c.clamp(start, input.len());
        s.handle_bytes(&input[start..c], &mut push);
        start = c;
    }
    s.finish(&mut push);
    got
}

fn events(chunks: &[&[u8]]) -> Vec<(String, String)> {
    let mut s = EventSplitter::new(1 << 22);
    let mut got = Vec::new();
    let mut push = |ev: &Event<'_>| {
        got.push((
            String::from_utf8_lossy(ev.name).into_owned(),
            String::from_utf8_lossy(&ev.data).into_owned(),
        ))
    };
    for c in chunks {
        s.handle_events(c, &mut push);
    }
    s.finish_events(&mut push);
    got
}

#[test]
fn splits_across_reads_and_line_endings() {
    let want = vec![
        ("a".to_owned(), "{\"x\":1}".to_owned()),
        (String::new(), "l1\nl2".to_owned()),
        (String::new(), "tail".to_owned()),
    ];
    let input = b"event: a\ndata: {\"x\":1}\r\n\r\n: comment\n\ndata: l1\ndata:l2\n\ndata: tail";
    assert_eq!(events(&[input]), want);
    let parts: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(events(&parts), want);
}

#[test]
fn oversized_event_is_skipped_by_readers() {
    let big = vec![b'x'; (1 << 22) + 10];
    let got = events(&[b"data: ", &big, b"\n", b"\ndata: after\n\n"]);
    assert_eq!(got, vec![(String::new(), "after".to_owned())]);
}

#[test]
fn oversized_whatever_the_reads() {
    let input = b"data: 0123456789\n\ndata: ok\n\n";
    let want = vec![
        (true, b"data: 0123456789\n\n".to_vec()),
        (false, b"data: ok\n\n".to_vec()),
    ];
    assert_eq!(pieces(12, input, &[]), want);
    assert_eq!(pieces(12, input, &[3, 16, 17]), want);
    // The blank line ending the oversized event straddles two reads.
    assert_eq!(pieces(12, input, &[17]), want);
}

#[test]
fn mid_event_tracks_held_bytes() {
    let mut s = EventSplitter::new(8);
    s.handle_bytes(b"data: a\n\nda", |_| {});
    assert!(s.mid_event() && !s.in_oversized());
    s.handle_bytes(b"ta: long event\n", |_| {});
    assert!(s.mid_event() && s.in_oversized());
    s.handle_bytes(b"\n", |_| {});
    assert!(!s.mid_event());
}

#[test]
fn passthrough_ending_mid_event_stays_mid_event_after_finish() {
    let mut s = SseScanner::new(false);
    let mut out = Vec::new();
    s.handle_bytes(b"data: {\"choices\":[]}\n\ndata: {\"cho", &mut out);
    assert!(s.client_mid_event());
    s.finish(&mut out);
    assert!(s.client_mid_event());
}

/// SSE-shaped bytes: fields, line endings, blank lines, usage chunks, stray bytes.
fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop::sample::select(vec![
        &b"data: "[..],
        b"data:",
        b"event: e",
        b": c",
        b"\n",
        b"\r\n",
        b"\r",
        b"\n\n",
        b"{\"choices\":[{\"delta\":{}}],\"usage\":null}",
        b"{\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}",
        b"[DONE]",
        b"x",
        b"0123456789abcdef",
    ]);
    prop::collection::vec(token, 0..48).prop_map(|t| t.concat())
}

/// The event reading as it was before the one-search pass: the usage-object test on the
/// data, a serde probe, and the two searches of `write_without_null_usage`.
fn old_on_event(raw: &[u8], strip: bool, out: &mut Vec<u8>) -> (Option<Usage>, bool, u64) {
    let forward = |out: &mut Vec<u8>| {
        write_without_null_usage(raw, out);
    };
    let Some(ev) = Event::parse_general(raw) else {
        forward(out);
        return (None, false, 0);
    };
    if ev.is_done() {
        forward(out);
        return (None, true, 0);
    }
    if !crate::usage::mentions_usage_object(&ev.data) {
        forward(out);
        return (None, false, 1);
    }
    let Some(probe) = crate::usage::UsageProbe::parse(&ev.data) else {
        forward(out);
        return (None, false, 1);
    };
    let usage_only = probe.choices.as_ref().is_some_and(Vec::is_empty);
    let Some(u) = probe.usage() else {
        forward(out);
        return (None, false, 1);
    };
    if usage_only && strip {
        return (Some(u), false, 0);
    }
    forward(out);
    (Some(u), false, 1)
}

/// Events as providers and odd upstreams write them: `"usage"` members of every kind,
/// several data lines, other fields, CRLF, no blank line at the end.
fn one_event() -> impl Strategy<Value = Vec<u8>> {
    let field = prop::sample::select(vec![
        &b"data: "[..],
        b"data:",
        b"data:  ",
        b"event: e",
        b"id: \"usage\":null,",
        b": c",
    ]);
    let body = prop::sample::select(vec![
        &b"{\"choices\":[{\"delta\":{}}],\"usage\":null}"[..],
        b"{\"usage\":null,\"choices\":[]}",
        b"{\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}",
        b"{\"choices\":[ ],\"usage\" : {\"input_tokens\":1}}",
        b"{\"choices\":[1],\"usage\":{\"prompt_tokens\":4}}",
        b"{\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":1},\"usage\":null}",
        b"\"usage\"usage\":{",
        b",\"usage\":null,\"usage\":null,",
        b"{\"response\":{\"usage\":{\"input_tokens\":2}},\"usage\":null}",
        b"[DONE]",
        b"x",
        b"",
    ]);
    let end = prop::sample::select(vec![&b"\n"[..], b"\r\n"]);
    prop::collection::vec((field, body, end.clone()), 1..4).prop_flat_map(move |lines| {
        (
            Just(lines),
            prop::sample::select(vec![&b"\n"[..], b"\r\n", b""]),
        )
            .prop_map(|(lines, blank)| {
                let mut ev = Vec::new();
                for (f, b, e) in lines {
                    ev.extend_from_slice(f);
                    ev.extend_from_slice(b);
                    ev.extend_from_slice(e);
                }
                ev.extend_from_slice(blank);
                ev
            })
    })
}

proptest! {
    /// One search of `"usage"` per event reads and cuts what the three searches and the
    /// serde probe did, and the one-line parse reads what the general one does.
    #[test]
    fn one_pass_event_reading_matches_the_old(raw in one_event(), strip in any::<bool>()) {
        prop_assert_eq!(Event::parse(&raw), Event::parse_general(&raw));
        let mut facts = Facts::default();
        let mut out = Vec::new();
        let wrote = facts.on_event(&raw, strip).write(&raw, &mut out);
        let mut old_out = Vec::new();
        let (usage, done, events) = old_on_event(&raw, strip, &mut old_out);
        prop_assert_eq!((facts.usage, facts.done, facts.data_events), (usage, done, events));
        if strip {
            prop_assert_eq!(&out, &old_out);
            prop_assert_eq!(wrote, !old_out.is_empty() || raw.is_empty());
        }
    }

    /// However the stream is split across reads, the client receives the same bytes and the
    /// gateway the same usage.
    #[test]
    fn any_split_gives_same_result(cuts in prop::collection::vec(0usize..STREAM.len(), 0..8), strip in any::<bool>()) {
        let mut cuts = cuts;
        cuts.sort_unstable();
        let (whole, s1) = run(strip, STREAM.as_bytes(), &[]);
        let (split, s2) = run(strip, STREAM.as_bytes(), &cuts);
        prop_assert_eq!(whole, split);
        prop_assert_eq!(s1.usage(), s2.usage());
        prop_assert_eq!(s1.data_events(), s2.data_events());
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..512), strip in any::<bool>()) {
        let (out, _) = run(strip, &input, &[7, 100]);
        if !strip { prop_assert_eq!(out, input); }
    }

    /// For any input and any split of it into reads, the splitter hands out the same events
    /// (and the same oversized runs) as for the whole input, and every byte exactly once.
    #[test]
    fn splitter_events_do_not_depend_on_reads(
        input in prop_oneof![sse_bytes(), prop::collection::vec(any::<u8>(), 0..256)],
        cuts in prop::collection::vec(0usize..400, 0..12),
        max in 3usize..64,
    ) {
        let mut cuts = cuts;
        cuts.sort_unstable();
        let whole = pieces(max, &input, &[]);
        let split = pieces(max, &input, &cuts);
        prop_assert_eq!(&whole, &split);
        let joined: Vec<u8> = whole.into_iter().flat_map(|(_, b)| b).collect();
        prop_assert_eq!(joined, input);
    }

    /// The scanner's output and facts do not depend on the reads either.
    #[test]
    fn scanner_does_not_depend_on_reads(
        input in sse_bytes(),
        cuts in prop::collection::vec(0usize..400, 0..12),
        strip in any::<bool>(),
    ) {
        let mut cuts = cuts;
        cuts.sort_unstable();
        let (whole, s1) = run(strip, &input, &[]);
        let (split, s2) = run(strip, &input, &cuts);
        prop_assert_eq!(whole, split);
        prop_assert_eq!(s1.usage(), s2.usage());
        prop_assert_eq!(s1.data_events(), s2.data_events());
        prop_assert_eq!(s1.saw_done(), s2.saw_done());
    }
}
