//! Fallback groups in order, the context-window fallback first for prompts that do not fit,
//! and which failure is the answer when none of them succeeds.

use super::*;

fn fallbacks() -> String {
    format!(
        "{p}[[models]]\nname = \"m\"\nstrategy = \"priority\"\nretry = {{ max_attempts = 2, base_backoff_ms = 0, max_backoff_ms = 0 }}\nfallbacks = [\"f1\", \"f2\"]\ncontext_window_fallback = \"big\"\ndeployments = [{{ provider = \"p\", model = \"a\" }}, {{ provider = \"p\", model = \"b\" }}]\n\
         [[models]]\nname = \"f1\"\nretry = {{ max_attempts = 1 }}\ndeployments = [{{ provider = \"p\", model = \"c\" }}]\n\
         [[models]]\nname = \"f2\"\nretry = {{ max_attempts = 1 }}\ndeployments = [{{ provider = \"p\", model = \"d\" }}]\n\
         [[models]]\nname = \"big\"\ndeployments = [{{ provider = \"p\", model = \"e\" }}]\n",
        p = provider()
    )
}

#[test]
fn fallback_groups_in_order_then_503() {
    let mut h = Harness::new(&fallbacks());
    let mut lp = h.start(0, Duration::from_secs(10));
    assert_eq!(h.poll(&mut lp), [send(0, 0, 0), WAIT]);
    assert_eq!(h.handle(&mut lp, connect_failed(0)), [send(1, 0, 1), WAIT]);
    // Group m exhausted (max_attempts 2): f1, then f2 — never `big`, the context fallback.
    assert_eq!(h.handle(&mut lp, connect_failed(1)), [send(2, 1, 0), WAIT]);
    assert_eq!(h.handle(&mut lp, connect_failed(2)), [send(3, 2, 0), WAIT]);
    let out = h.handle(&mut lp, connect_failed(3));
    let [Command::Fail(err)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(err.kind, ErrorKind::UpstreamUnavailable);
    assert_eq!(err.retry_after_s, Some(1));
    assert!(err
        .message
        .contains("every deployment tried failed; last: cannot connect"));
    assert!(h.limits.balanced());
    let r = lp.into_report();
    assert_eq!(r.fallbacks, 2);
    assert_eq!(r.error, Some("connect"));
    assert_eq!(r.route, Some((2, Some(0))));
}

#[test]
fn a_single_failed_deployment_keeps_its_own_error() {
    let text = format!(
        "{}[[models]]\nname = \"m\"\nretry = {{ max_attempts = 1 }}\ndeployments = [{{ provider = \"p\", model = \"a\" }}]\n",
        provider()
    );
    let mut h = Harness::new(&text);
    let mut lp = h.start(0, Duration::from_secs(10));
    h.poll(&mut lp);
    let out = h.handle(&mut lp, connect_failed(0));
    let [Command::Fail(err)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(err.kind, ErrorKind::UpstreamUnreachable);
}

#[test]
fn context_window_errors_go_to_the_context_fallback_first() {
    let mut h = Harness::new(&fallbacks());
    let mut lp = h.start(0, Duration::from_secs(10));
    h.poll(&mut lp);
    // A 400 is read whole when the group has a context-window fallback.
    assert_eq!(
        h.handle(&mut lp, head(0, 400)),
        [
            Command::ReadErrorBody {
                attempt: AttemptId(0)
            },
            WAIT
        ]
    );
    let body = Event::ErrorBody {
        attempt: AttemptId(0),
        context_window: true,
    };
    assert_eq!(h.handle(&mut lp, body), [send(1, 3, 0), WAIT]);
    assert_eq!(
        h.handle(&mut lp, head(1, 200)),
        [Command::Deliver {
            attempt: AttemptId(1)
        }]
    );
    h.with(|env| lp.settle_delivered(env, Relayed::Complete, Duration::ZERO, 10));
    let r = lp.into_report();
    assert_eq!(r.attempts[0].error, Some("context_window"));
    assert_eq!(r.fallbacks, 1);
}

#[test]
fn a_plain_400_is_the_answer() {
    let mut h = Harness::new(&fallbacks());
    let mut lp = h.start(0, Duration::from_secs(10));
    h.poll(&mut lp);
    h.handle(&mut lp, head(0, 400));
    let body = Event::ErrorBody {
        attempt: AttemptId(0),
        context_window: false,
    };
    assert_eq!(
        h.handle(&mut lp, body),
        [Command::PassThrough {
            attempt: AttemptId(0)
        }]
    );
    // Without a context fallback, a 400 is not even read: it is delivered as it comes.
    let mut h = Harness::new(&two(""));
    let mut lp = h.start(0, Duration::from_secs(10));
    h.poll(&mut lp);
    assert_eq!(
        h.handle(&mut lp, head(0, 400)),
        [Command::Deliver {
            attempt: AttemptId(0)
        }]
    );
}
