//! Hedging: a second deployment raced after the delay, winner kept, loser cancelled; never
//! for a streamed body, which is also not retried once spent.

use super::*;

fn hedged() -> String {
    two("hedge = { delay_ms = 100, max_percent = 100 }\nretry = { base_backoff_ms = 0, max_backoff_ms = 0 }")
}

#[test]
fn hedge_wins() {
    let mut h = Harness::new(&hedged());
    let mut lp = h.start(0, Duration::from_secs(10));
    let at = h.t0 + Duration::from_millis(100);
    assert_eq!(
        h.poll(&mut lp),
        [send(0, 0, 0), Command::Wait { until: Some(at) }]
    );
    h.at(100);
    assert_eq!(h.handle(&mut lp, Event::Timer), [hedge(1, 0, 1), WAIT]);
    h.at(130);
    assert_eq!(
        h.handle(&mut lp, head(1, 200)),
        [
            Command::Cancel {
                attempt: AttemptId(0)
            },
            Command::Deliver {
                attempt: AttemptId(1)
            }
        ]
    );
    // A late head from the loser is ignored.
    assert_eq!(h.handle(&mut lp, head(0, 200)), [WAIT]);
    h.with(|env| lp.settle_delivered(env, Relayed::Complete, Duration::from_millis(30), 9));
    assert!(h.limits.balanced());
    let r = lp.report();
    assert_eq!(r.hedges, 1);
    assert_eq!(r.attempts[0].error, Some("hedge_cancelled"));
    assert_eq!(r.route, Some((0, Some(1))));
}

#[test]
fn hedge_loses() {
    let mut h = Harness::new(&hedged());
    let mut lp = h.start(0, Duration::from_secs(10));
    h.poll(&mut lp);
    h.at(100);
    assert_eq!(h.handle(&mut lp, Event::Timer), [hedge(1, 0, 1), WAIT]);
    h.at(120);
    assert_eq!(
        h.handle(&mut lp, head(0, 200)),
        [
            Command::Cancel {
                attempt: AttemptId(1)
            },
            Command::Deliver {
                attempt: AttemptId(0)
            }
        ]
    );
    h.with(|env| lp.settle_delivered(env, Relayed::Complete, Duration::from_millis(120), 9));
    assert!(h.limits.balanced());
    assert_eq!(lp.into_report().attempts[1].error, Some("hedge_cancelled"));
}

#[test]
fn a_failed_hedge_partner_leaves_the_other_to_answer() {
    let mut h = Harness::new(&hedged());
    let mut lp = h.start(0, Duration::from_secs(10));
    h.poll(&mut lp);
    h.at(100);
    h.handle(&mut lp, Event::Timer);
    assert_eq!(h.handle(&mut lp, connect_failed(0)), [WAIT]);
    assert_eq!(
        h.handle(&mut lp, head(1, 200)),
        [Command::Deliver {
            attempt: AttemptId(1)
        }]
    );
    h.with(|env| lp.settle_delivered(env, Relayed::Complete, Duration::ZERO, 0));
    assert!(h.limits.balanced());
}

#[test]
fn no_hedge_when_the_first_answers_in_time() {
    let mut h = Harness::new(&hedged());
    let mut lp = h.start(0, Duration::from_secs(10));
    h.poll(&mut lp);
    h.at(50);
    assert_eq!(
        h.handle(&mut lp, head(0, 200)),
        [Command::Deliver {
            attempt: AttemptId(0)
        }]
    );
}

#[test]
fn a_streamed_body_is_never_hedged_and_not_retried_once_spent() {
    let mut h = Harness::new(&hedged());
    let mut lp = h.start(0, Duration::from_secs(10));
    lp.streamed_body();
    // No hedge timer: the body cannot go to two deployments at once.
    assert_eq!(h.poll(&mut lp), [send(0, 0, 0), WAIT]);
    // Nothing past the held prefix went out yet: a connect failure is retried elsewhere.
    assert_eq!(h.handle(&mut lp, connect_failed(0)), [send(1, 0, 1), WAIT]);
    lp.body_spent();
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
    // The body is spent: the upstream's error is the answer, with no third attempt.
    assert_eq!(
        h.handle(&mut lp, body),
        [Command::PassThrough {
            attempt: AttemptId(1)
        }]
    );
    assert!(h.limits.balanced());
    let r = lp.into_report();
    assert_eq!((r.retries, r.hedges), (1, 0));
}
