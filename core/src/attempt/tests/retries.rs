//! Retries: on another deployment, backoff and `Retry-After`, the deadline that ends them.

use super::*;

#[test]
fn success_on_the_first_attempt() {
    let mut h = Harness::new(&two("retry = { base_backoff_ms = 0 }"));
    let mut lp = h.start(0, Duration::from_secs(10));
    assert_eq!(h.poll(&mut lp), [send(0, 0, 0), WAIT]);
    assert_eq!(
        h.handle(&mut lp, head(0, 200)),
        [Command::Deliver {
            attempt: AttemptId(0)
        }]
    );
    h.with(|env| lp.settle_delivered(env, Relayed::Complete, Duration::from_millis(5), 42));
    assert!(h.limits.balanced());
    let r = lp.into_report();
    assert_eq!(r.route, Some((0, Some(0))));
    assert_eq!(r.attempts.len(), 1);
    assert_eq!(r.attempts[0].status, 200);
    assert_eq!((r.retries, r.fallbacks, r.hedges), (0, 0, 0));
}

#[test]
fn a_failed_deployment_is_retried_on_the_other_one() {
    let mut h = Harness::new(&two("retry = { base_backoff_ms = 0, max_backoff_ms = 0 }"));
    let mut lp = h.start(0, Duration::from_secs(10));
    assert_eq!(h.poll(&mut lp), [send(0, 0, 0), WAIT]);
    assert_eq!(
        h.handle(&mut lp, head(0, 500)),
        [
            Command::ReadErrorBody {
                attempt: AttemptId(0)
            },
            WAIT
        ]
    );
    let body = Event::ErrorBody {
        attempt: AttemptId(0),
        context_window: false,
    };
    assert_eq!(h.handle(&mut lp, body), [send(1, 0, 1), WAIT]);
    assert_eq!(
        h.handle(&mut lp, head(1, 200)),
        [Command::Deliver {
            attempt: AttemptId(1)
        }]
    );
    h.with(|env| lp.settle_delivered(env, Relayed::Complete, Duration::ZERO, 1));
    assert!(h.limits.balanced());
    let r = lp.into_report();
    assert_eq!(r.retries, 1);
    assert_eq!(r.attempts[0].error, Some("status"));
    assert_eq!(r.attempts[0].status, 500);
    assert_eq!(r.route, Some((0, Some(1))));
}

#[test]
fn backoff_waits_and_retry_after_is_honoured() {
    // One deployment: a 429 with Retry-After 1 s waits a second, then tries again.
    let text = format!(
        "{}[[models]]\nname = \"m\"\nretry = {{ max_attempts = 3, base_backoff_ms = 100, max_backoff_ms = 100 }}\ndeployments = [{{ provider = \"p\", model = \"a\" }}]\n",
        provider()
    );
    let mut h = Harness::new(&text);
    let mut lp = h.start(0, Duration::from_secs(10));
    assert_eq!(h.poll(&mut lp), [send(0, 0, 0), WAIT]);
    let limited = Event::Head {
        attempt: AttemptId(0),
        status: 429,
        retry_after: Some(Duration::from_secs(1)),
    };
    assert_eq!(
        h.handle(&mut lp, limited),
        [
            Command::ReadErrorBody {
                attempt: AttemptId(0)
            },
            WAIT
        ]
    );
    h.at(3);
    let body = Event::ErrorBody {
        attempt: AttemptId(0),
        context_window: false,
    };
    let until = h.t0 + Duration::from_millis(1003);
    assert_eq!(
        h.handle(&mut lp, body),
        [Command::Wait { until: Some(until) }]
    );
    // A timer that fires early changes nothing.
    h.at(500);
    assert_eq!(
        h.handle(&mut lp, Event::Timer),
        [Command::Wait { until: Some(until) }]
    );
    h.at(1003);
    assert_eq!(h.handle(&mut lp, Event::Timer), [send(1, 0, 0), WAIT]);
    // A plain 500 next: backoff with full jitter (roll 0: no wait), then a third attempt.
    assert_eq!(
        h.handle(&mut lp, head(1, 500)),
        [
            Command::ReadErrorBody {
                attempt: AttemptId(1)
            },
            WAIT
        ]
    );
    let body = Event::ErrorBody {
        attempt: AttemptId(1),
        context_window: false,
    };
    assert_eq!(h.handle(&mut lp, body), [send(2, 0, 0), WAIT]);
    assert_eq!(
        h.handle(&mut lp, head(2, 500)),
        [
            Command::ReadErrorBody {
                attempt: AttemptId(2)
            },
            WAIT
        ]
    );
    let body = Event::ErrorBody {
        attempt: AttemptId(2),
        context_window: false,
    };
    // max_attempts reached, no fallback: the last upstream answer is passed through.
    assert_eq!(
        h.handle(&mut lp, body),
        [Command::PassThrough {
            attempt: AttemptId(2)
        }]
    );
    assert!(h.limits.balanced());
    assert_eq!(lp.into_report().retries, 2);
}

#[test]
fn retry_after_beyond_the_deadline_is_not_waited_on() {
    let mut h = Harness::new(&two("retry = { base_backoff_ms = 0, max_backoff_ms = 0 }"));
    let mut lp = h.start(0, Duration::from_secs(5));
    h.poll(&mut lp);
    let limited = Event::Head {
        attempt: AttemptId(0),
        status: 429,
        retry_after: Some(Duration::from_secs(30)),
    };
    h.handle(&mut lp, limited);
    let body = Event::ErrorBody {
        attempt: AttemptId(0),
        context_window: false,
    };
    // The other deployment, at once.
    assert_eq!(h.handle(&mut lp, body), [send(1, 0, 1), WAIT]);
}

#[test]
fn the_deadline_ends_the_retries() {
    let text = format!(
        "{}[[models]]\nname = \"m\"\nretry = {{ max_attempts = 10, base_backoff_ms = 400, max_backoff_ms = 400 }}\ndeployments = [{{ provider = \"p\", model = \"a\" }}]\n",
        provider()
    );
    let mut h = Harness::new(&text);
    let mut lp = h.start(0, Duration::from_secs(1));
    h.poll(&mut lp);
    // A 503 with Retry-After 0.6 s: waited on (it fits the deadline).
    h.at(100);
    let e = Event::Head {
        attempt: AttemptId(0),
        status: 503,
        retry_after: Some(Duration::from_millis(600)),
    };
    h.handle(&mut lp, e);
    let body = Event::ErrorBody {
        attempt: AttemptId(0),
        context_window: false,
    };
    let until = h.t0 + Duration::from_millis(700);
    assert_eq!(
        h.handle(&mut lp, body),
        [Command::Wait { until: Some(until) }]
    );
    h.at(700);
    assert_eq!(h.handle(&mut lp, Event::Timer), [send(1, 0, 0), WAIT]);
    // The upstream itself times out at the deadline: no time is left for another attempt.
    h.at(1000);
    let timeout = Event::Failed {
        attempt: AttemptId(1),
        failure: TransportFailure {
            failure: Failure::Timeout,
            error: GatewayError::new(
                ErrorKind::UpstreamTimeout,
                "upstream error: p exceeded the total timeout",
            ),
            label: "total_timeout",
        },
    };
    let out = h.handle(&mut lp, timeout);
    let [Command::Fail(err)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(err.kind, ErrorKind::UpstreamTimeout);
    // A request whose deadline passed during a backoff ends with a 504 too.
    let mut h = Harness::new(&text);
    h.roll = 100_000_000; // a 100 ms backoff
    let mut lp = h.start(0, Duration::from_millis(300));
    h.poll(&mut lp);
    let until = h.t0 + Duration::from_millis(100);
    assert_eq!(
        h.handle(&mut lp, connect_failed(0)),
        [Command::Wait { until: Some(until) }]
    );
    h.at(301);
    let out = h.handle(&mut lp, Event::Timer);
    assert!(
        matches!(out.as_slice(), [Command::Fail(e)] if e.kind == ErrorKind::UpstreamUnreachable),
        "{out:?}"
    );
}
