//! Requests that end early: a refused dialect, the client leaving.

use super::*;

#[test]
fn a_refused_dialect_is_answered_at_once() {
    let mut h = Harness::new(&two(""));
    let mut lp = h.start(0, Duration::from_secs(10));
    h.poll(&mut lp);
    let err = GatewayError::new(ErrorKind::InvalidRequest, "`n` is not supported");
    let out = h.handle(
        &mut lp,
        Event::Refused {
            attempt: AttemptId(0),
            error: err.clone(),
        },
    );
    assert_eq!(out, [Command::Fail(err)]);
    assert!(h.limits.balanced());
}

#[test]
fn client_gone_during_backoff_and_during_an_attempt() {
    let mut h = Harness::new(&two(
        "retry = { base_backoff_ms = 500, max_backoff_ms = 500 }",
    ));
    let mut lp = h.start(0, Duration::from_secs(10));
    h.poll(&mut lp);
    assert_eq!(h.handle(&mut lp, Event::ClientGone), [Command::Abandon]);
    assert!(h.limits.balanced());
    let r = lp.into_report();
    assert!(r.client_gone);
    assert_eq!(r.attempts[0].error, Some("client_gone"));
}
