//! The guards that keep resilience from making things worse: the retry budget, a group of
//! one that keeps sending, a deployment known down, a caller paused alone.

use super::*;

fn one(text: &str) -> String {
    format!(
        "{}[[models]]\nname = \"m\"\n{text}\ndeployments = [{{ provider = \"p\", model = \"a\" }}]\n",
        provider()
    )
}

/// Runs one request whose every attempt the upstream answers with `status`; the attempts sent.
fn failing_request(h: &mut Harness, status: u16) -> (usize, Vec<Command>) {
    let mut lp = h.start(0, Duration::from_secs(60));
    let mut out = h.poll(&mut lp);
    let mut sent = 0;
    loop {
        let Some(Command::Send { attempt, .. }) =
            out.iter().find(|c| matches!(c, Command::Send { .. }))
        else {
            return (sent, out);
        };
        let a = attempt.0;
        sent += 1;
        h.handle(&mut lp, head(a, status));
        out = h.handle(
            &mut lp,
            Event::ErrorBody {
                attempt: AttemptId(a),
                context_window: false,
            },
        );
    }
}

#[test]
fn the_retry_budget_caps_attempts_at_full_failure() {
    let mut h = Harness::new(&two(
        "retry = { max_attempts = 3, base_backoff_ms = 0, max_backoff_ms = 0, budget_percent = 20, budget_min_per_s = 1 }\nbreaker = { enabled = false }",
    ));
    let mut attempts = 0;
    for _ in 0..200 {
        let (sent, out) = failing_request(&mut h, 500);
        assert!(matches!(out[..], [Command::PassThrough { .. }]), "{out:?}");
        attempts += sent;
    }
    // 200 first attempts, and retries within max(20 % of 200, 1/s × 10 s) = 40.
    assert_eq!(attempts, 240);
    let exhausted: u64 = h
        .routes
        .drain_counts()
        .map(|(_, c)| c.budget_exhausted)
        .sum();
    // One refusal per request that wanted another attempt and got none.
    assert!((160..=200).contains(&exhausted), "{exhausted}");
    assert!(h.limits.balanced());
}

#[test]
fn a_group_of_one_keeps_sending_when_its_breaker_opens() {
    let mut h = Harness::new(&one(
        "retry = { max_attempts = 1 }\nbreaker = { consecutive_failures = 2, cooldown_ms = 5000 }",
    ));
    for _ in 0..5 {
        let (sent, out) = failing_request(&mut h, 500);
        assert_eq!(sent, 1);
        assert!(matches!(out[..], [Command::PassThrough { .. }]), "{out:?}");
    }
    assert!(matches!(
        h.routes.group(0).unwrap().breakers[0].state(h.now),
        crate::breaker::BreakerState::Open { .. }
    ));
    let panics: u64 = h.routes.drain_counts().map(|(_, c)| c.panics).sum();
    assert_eq!(
        panics, 3,
        "the picks after the trip were made in panic mode"
    );
}

#[test]
fn a_deployment_known_down_is_answered_503_at_once() {
    let mut h = Harness::new(&one(
        "retry = { max_attempts = 3, base_backoff_ms = 0, max_backoff_ms = 0 }\nbreaker = { consecutive_failures = 2, cooldown_ms = 5000 }",
    ));
    // Two connects refused trip it hard: no third attempt, 503 with the cool-down.
    let mut lp = h.start(0, Duration::from_secs(10));
    assert_eq!(h.poll(&mut lp), [send(0, 0, 0), WAIT]);
    assert_eq!(h.handle(&mut lp, connect_failed(0)), [send(1, 0, 0), WAIT]);
    let out = h.handle(&mut lp, connect_failed(1));
    let [Command::Fail(err)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(err.kind, ErrorKind::UpstreamUnavailable);
    assert_eq!(err.retry_after_s, Some(5));
    // The next request never connects.
    let mut lp = h.start(0, Duration::from_secs(10));
    let out = h.poll(&mut lp);
    assert!(matches!(&out[..], [Command::Fail(e)] if e.kind == ErrorKind::UpstreamUnavailable));
    assert!(h.limits.balanced());
}

#[test]
fn a_caller_whose_requests_keep_failing_is_paused_alone() {
    let mut h = Harness::new(&two(
        "retry = { max_attempts = 1 }\nbreaker = { consecutive_failures = 3, cooldown_ms = 5000 }",
    ));
    h.caller = Some(1 << 50);
    for _ in 0..6 {
        failing_request(&mut h, 500);
    }
    // Both deployments saw three of its failures: it is paused there, alone.
    let mut lp = h.start(0, Duration::from_secs(10));
    let out = h.poll(&mut lp);
    let [Command::Fail(err)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(err.kind, ErrorKind::UpstreamUnavailable);
    assert!(err.retry_after_s.is_some());
    assert!(err.message.contains("this key alone"), "{}", err.message);
    h.caller = Some(2 << 50);
    let mut lp = h.start(0, Duration::from_secs(10));
    assert_eq!(h.poll(&mut lp), [send(0, 0, 0), WAIT]);
    h.caller = None;
    let mut lp = h.start(0, Duration::from_secs(10));
    assert_eq!(h.poll(&mut lp), [send(0, 0, 0), WAIT]);
    // No breaker tripped for everyone.
    for b in &h.routes.group(0).unwrap().breakers {
        assert_eq!(b.trips(), 0);
    }
}
