//! Tests of the access line (`access_line.rs`), in a file of their own to keep that one
//! readable whole.

use super::*;
use crate::telemetry::log::Attempt;
use sluice_core::usage::Usage;

fn line(rec: &AccessRecord) -> serde_json::Value {
    let mut text = Vec::new();
    with_line(rec, 1_765_024_496_123_456, |l| text.extend_from_slice(l));
    assert_eq!(text.last(), Some(&b'\n'));
    assert_eq!(text.iter().filter(|&&b| b == b'\n').count(), 1);
    serde_json::from_slice(&text).unwrap()
}

#[test]
fn a_full_record_reads_back_field_for_field() {
    let rec = AccessRecord {
        request_id: "req_\"1\"\\\n\u{1}é".into(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        key_id: Some("key_1".into()),
        team: Some("t".into()),
        model: Some("m".into()),
        deployment: Some("p/m".into()),
        status: 200,
        stream: true,
        usage: Some(Usage {
            input_tokens: 11,
            output_tokens: 3,
            cached_tokens: 1,
            reasoning_tokens: 2,
            estimated: false,
            ..Usage::default()
        }),
        cost_micros: Some(125),
        ttfb_us: Some(1500),
        total_us: 2250,
        upstream_us: Some(2000),
        bytes_in: 10,
        bytes_out: 20,
        upstream_reused: Some(true),
        error: Some("timeout".into()),
        attempts: vec![Attempt {
            deployment: "p/m".into(),
            provider: 0,
            span_id: None,
            start_us: 1,
            end_us: 2,
            status: 200,
            error: None,
            response_model: None,
        }],
        client_cancelled: false,
        cache: Some("hit"),
        saved_micros: Some(250),
        trace: Some(crate::telemetry::context::RequestTrace {
            trace_id: [0x4b, 0xf9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x47, 0x36],
            span_id: [0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
            parent: None,
        }),
        ..AccessRecord::default()
    };
    let v = line(&rec);
    assert_eq!(v["timestamp"], "2025-12-06T12:34:56.123456Z");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["message"], "request");
    assert_eq!(v["target"], "sluice::access");
    assert_eq!(v["request_id"], "req_\"1\"\\\n\u{1}é");
    assert_eq!(v["trace_id"], "4bf90000000000000000000000004736");
    assert_eq!(v["span_id"], "00f067aa0ba902b7");
    assert_eq!(v["status"], 200);
    assert_eq!(v["stream"], true);
    assert_eq!(v["input_tokens"], 11);
    assert_eq!(v["reasoning_tokens"], 2);
    assert_eq!(v["tokens_estimated"], false);
    assert_eq!(v["cost_usd"].as_f64(), Some(0.000125));
    assert_eq!(v["ttfb_ms"].as_f64(), Some(1.5));
    assert_eq!(v["total_ms"].as_f64(), Some(2.25));
    assert_eq!(v["overhead_ms"].as_f64(), Some(0.25));
    assert_eq!(v["upstream_reused"], true);
    assert_eq!(v["error"], "timeout");
    assert_eq!(v["attempts"][0]["deployment"], "p/m");
    assert_eq!(v["attempts"][0]["end_us"], 2);
    assert_eq!(v["client_cancelled"], false);
    assert_eq!(v["cache"], "hit");
    assert_eq!(v["saved_usd"].as_f64(), Some(0.00025));
    assert!(v.get("response_model").is_none(), "{v}");
}

#[test]
fn scaled_numbers_are_the_text_of_the_float_they_stand_for() {
    let mut rng = fastrand::Rng::with_seed(15);
    let random = (0..50_000).map(|_| {
        let digits = rng.u32(1..=15);
        rng.u64(..10u64.pow(digits))
    });
    let edges = [
        EXACT_BELOW - 1,
        EXACT_BELOW,
        EXACT_BELOW + 7,
        u64::MAX,
        1 << 53,
    ];
    for v in (0..30_000).chain(random).chain(edges) {
        for scale in [3, 6] {
            let (mut ours, mut float) = (Vec::new(), Vec::new());
            if scale == 3 {
                scaled_field::<3>(&mut ours, k!("x"), v);
            } else {
                scaled_field::<6>(&mut ours, k!("x"), v);
            }
            float_field(&mut float, k!("x"), v as f64 / 10u64.pow(scale) as f64);
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&float),
                "{v} / 10^{scale}"
            );
        }
    }
}

#[test]
fn attempts_read_as_serde_json_writes_them() {
    let attempt = |deployment: &str, status, error| Attempt {
        deployment: deployment.into(),
        provider: 0,
        span_id: None,
        start_us: 12,
        end_us: 3_456_789,
        status,
        error,
        response_model: None,
    };
    let lists = [
        vec![attempt("openai/gpt-4o", 200, None)],
        vec![
            attempt("a/b", 0, Some("connect")),
            attempt("we\"ird\\na\nme\u{1}\u{7f}é", 503, Some("status")),
            attempt("", u16::MAX, Some("odd \"label\"\n")),
        ],
    ];
    for list in lists {
        let mut got = Vec::new();
        attempts(&mut got, &list);
        let text = String::from_utf8(got).unwrap();
        // The same value; the same text but for DEL, which `json_str` escapes too.
        let want = serde_json::to_string(&list).unwrap();
        assert_eq!(text.replace("\\u007f", "\u{7f}"), want);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            serde_json::to_value(&list).unwrap()
        );
    }
}

#[test]
fn strings_escape_as_serde_json_escapes_them_wherever_the_byte_is() {
    let mut out = Vec::new();
    for c in (0u32..0x100).filter_map(char::from_u32).chain(['€', '😀']) {
        for at in 0..20 {
            let value: String = (0..at)
                .map(|_| 'a')
                .chain([c])
                .chain("bcdefghij".chars())
                .collect();
            out.clear();
            json_str(&mut out, &value);
            let text = String::from_utf8(out.clone()).unwrap();
            // The text serde_json writes, except DEL, which this escapes as well.
            if c != '\u{7f}' {
                assert_eq!(text, serde_json::to_string(&value).unwrap(), "{value:?}");
            }
            assert_eq!(serde_json::from_str::<String>(&text).unwrap(), value);
        }
    }
}

/// Short strings, part words and a byte to escape at every place, after other text.
#[test]
fn strings_of_any_length_escape_after_what_is_written() {
    let mut out = Vec::new();
    for len in 0..26 {
        for at in 0..=len {
            for c in ['"', '\\', '\n', '\u{1}', '\u{7f}', 'é', 'a'] {
                let value: String = (0..len).map(|i| if i == at { c } else { 'x' }).collect();
                out.clear();
                out.extend_from_slice(b"{\"k\":");
                json_str(&mut out, &value);
                let text = String::from_utf8(out.clone()).unwrap();
                let want = serde_json::to_string(&value)
                    .unwrap()
                    .replace('\u{7f}', "\\u007f");
                assert_eq!(text, format!("{{\"k\":{want}"), "{value:?}");
            }
        }
    }
}

#[test]
fn timestamps_as_tracing_writes_them() {
    for (us, text) in [
        (1_765_024_496_999_999, "2025-12-06T12:34:56.999999Z"),
        (1_765_024_497_000_000, "2025-12-06T12:34:57.000000Z"),
        (1_765_024_497_000_001, "2025-12-06T12:34:57.000001Z"),
        (1_765_024_496_000_001, "2025-12-06T12:34:56.000001Z"),
        (0, "1970-01-01T00:00:00.000000Z"),
        (1_765_024_496_123_456, "2025-12-06T12:34:56.123456Z"),
        (951_782_400_000_001, "2000-02-29T00:00:00.000001Z"),
        (4_102_444_799_999_999, "2099-12-31T23:59:59.999999Z"),
    ] {
        let mut out = Vec::new();
        timestamp(us, &mut out);
        assert_eq!(String::from_utf8_lossy(&out), text);
    }
}

/// The memo of the method, path, key, team, model and deployment fields writes what the
/// fields would, whatever changes from one line to the next.
#[test]
fn who_fields_follow_every_change() {
    let key: Arc<str> = Arc::from("key_1");
    let same_text: Arc<str> = Arc::from("key_1");
    let odd: Arc<str> = Arc::from("k\"2\n");
    let long = "long".repeat(2_000);
    let chat = "/v1/chat/completions";
    let records = [
        (Some(key.clone()), Some("t"), Some("m"), Some("p/m")),
        (Some(key.clone()), Some("t"), Some("m"), Some("p/m")),
        (Some(same_text), Some("t"), Some("m"), Some("p/m")),
        (Some(key.clone()), Some("t"), Some("m2"), Some("p/m")),
        (Some(key.clone()), Some("t"), Some("m2"), None),
        (Some(odd), None, Some("m\u{1}é"), Some("q/\"x\"")),
        (None, None, None, None),
        (Some(key.clone()), Some("t"), Some("m"), Some("p/m")),
        (Some(key), Some("t"), Some(long.as_str()), Some("p/m")),
        (None, Some("t"), Some("m"), Some("p/m")),
    ];
    // Each record under a borrowed and an owned method and path, the same text or another.
    let ends: [(Cow<'static, str>, Cow<'static, str>); 6] = [
        ("POST".into(), chat.into()),
        ("POST".into(), Cow::Owned(chat.to_owned())),
        (Cow::Owned("POST".to_owned()), chat.into()),
        ("GET".into(), chat.into()),
        ("POST".into(), "/v1/embeddings".into()),
        (
            Cow::Owned("PO\"ST".to_owned()),
            Cow::Owned("/a\u{7f}b".repeat(900)),
        ),
    ];
    for (i, (key_id, team, model, deployment)) in records.into_iter().enumerate() {
        for (method, path) in [&ends[i % ends.len()], &ends[(i + 1) % ends.len()]] {
            let rec = AccessRecord {
                request_id: "r".into(),
                method: method.clone(),
                path: path.clone(),
                key_id: key_id.clone(),
                team: team.map(Arc::from),
                model: model.map(str::to_owned),
                deployment: deployment.map(str::to_owned),
                ..AccessRecord::default()
            };
            let v = line(&rec);
            assert_eq!(v["method"], **method);
            assert_eq!(v["path"], **path);
            assert_eq!(v.get("key_id").and_then(|v| v.as_str()), key_id.as_deref());
            assert_eq!(v.get("team").and_then(|v| v.as_str()), team);
            assert_eq!(v.get("model").and_then(|v| v.as_str()), model);
            assert_eq!(v.get("deployment").and_then(|v| v.as_str()), deployment);
        }
    }
}

#[test]
fn response_model_only_when_it_differs_from_the_deployment() {
    let rec = |answered: &str| AccessRecord {
        deployment: Some("p/gpt-4o".into()),
        response_model: Some(answered.into()),
        ..AccessRecord::default()
    };
    assert!(line(&rec("gpt-4o")).get("response_model").is_none());
    assert_eq!(
        line(&rec("gpt-4o-2024-08-06"))["response_model"],
        "gpt-4o-2024-08-06"
    );
}

#[test]
fn fields_without_a_value_are_left_out() {
    let v = line(&AccessRecord {
        request_id: "r".into(),
        method: "GET".into(),
        path: "/".into(),
        status: 404,
        ..AccessRecord::default()
    });
    for absent in [
        "key_id",
        "team",
        "model",
        "deployment",
        "input_tokens",
        "cost_usd",
        "ttfb_ms",
        "overhead_ms",
        "upstream_reused",
        "error",
        "attempts",
        "cache",
        "saved_usd",
        "trace_id",
        "span_id",
    ] {
        assert!(v.get(absent).is_none(), "{absent} in {v}");
    }
    assert_eq!(v["total_ms"].as_f64(), Some(0.0));
}

/// A line far longer than the buffer's first capacity (a request id to escape, a long
/// attempt list, a long error, numbers past 10^8) is written whole.
#[test]
fn long_lines_are_written_whole() {
    let attempts: Vec<Attempt> = (0..300)
        .map(|i| Attempt {
            deployment: format!("p{i}/m\"{i}"),
            provider: 0,
            span_id: None,
            start_us: i,
            end_us: u64::MAX - i,
            status: 503,
            error: Some("status"),
            response_model: None,
        })
        .collect();
    let rec = AccessRecord {
        request_id: "\"\n\u{1}x".repeat(2_000),
        error: Some("e".repeat(5_000)),
        attempts,
        bytes_out: u64::MAX,
        ..AccessRecord::default()
    };
    let v = line(&rec);
    assert_eq!(v["request_id"], *rec.request_id);
    assert_eq!(v["error"].as_str(), rec.error.as_deref());
    assert_eq!(v["attempts"], serde_json::to_value(&rec.attempts).unwrap());
    assert_eq!(v["bytes_out"].as_u64(), Some(u64::MAX));
}
