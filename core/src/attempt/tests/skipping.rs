//! Deployments skipped before sending: open circuit breakers, the providers' own limits.

use super::*;

#[test]
fn open_breakers_fail_fast_and_are_skipped() {
    let mut h = Harness::new(&two(
        "breaker = { consecutive_failures = 1, cooldown_ms = 2000 }\nretry = { max_attempts = 1 }",
    ));
    // Trip deployment 0 through a request of its own.
    let mut lp = h.start(0, Duration::from_secs(10));
    assert_eq!(h.poll(&mut lp), [send(0, 0, 0), WAIT]);
    assert!(matches!(
        h.handle(&mut lp, connect_failed(0))[..],
        [Command::Fail(_)]
    ));
    // The next request skips it.
    let mut lp = h.start(0, Duration::from_secs(10));
    assert_eq!(h.poll(&mut lp), [send(0, 0, 1), WAIT]);
    assert!(matches!(
        h.handle(&mut lp, connect_failed(0))[..],
        [Command::Fail(_)]
    ));
    // Both open: 503 at once, with the time until the first cool-down ends.
    h.at(500);
    let mut lp = h.start(0, Duration::from_secs(10));
    let out = h.poll(&mut lp);
    let [Command::Fail(err)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(err.kind, ErrorKind::UpstreamUnavailable);
    assert_eq!(err.retry_after_s, Some(2));
    assert!(err.message.contains("circuit breakers open"));
    assert_eq!(lp.into_report().route, Some((0, None)));
    // After the cool-down, a probe goes out.
    h.at(2100);
    let mut lp = h.start(0, Duration::from_secs(10));
    assert_eq!(h.poll(&mut lp), [send(0, 0, 0), WAIT]);
    assert!(h.limits.balanced() || *h.limits.takes.borrow() > 0);
}

#[test]
fn provider_limits_skip_a_deployment_then_answer_429() {
    let mut h = Harness::new(&two("retry = { base_backoff_ms = 0 }"));
    let a = Target {
        group: 0,
        deployment: 0,
    };
    let b = Target {
        group: 0,
        deployment: 1,
    };
    h.limits
        .refuse
        .borrow_mut()
        .insert(a, Some(Duration::from_secs(7)));
    let mut lp = h.start(0, Duration::from_secs(10));
    // Deployment 0 is at its provider's limit: 1 goes instead.
    assert_eq!(h.poll(&mut lp), [send(0, 0, 1), WAIT]);
    h.with(|env| lp.handle(env, Event::ClientGone));
    h.limits
        .refuse
        .borrow_mut()
        .insert(b, Some(Duration::from_secs(3)));
    let mut lp = h.start(0, Duration::from_secs(10));
    let out = h.poll(&mut lp);
    let [Command::Fail(err)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(err.kind, ErrorKind::RateLimited);
    assert_eq!(err.retry_after_s, Some(3), "the shortest wait");
    assert!(h.limits.balanced());
}
