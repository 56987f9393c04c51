//! The breaker's state machine driven with fake time, its counters, and threads racing it.

use super::*;
use crate::balance::tests::t0;
use proptest::prelude::*;

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn config() -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: 3,
        error_rate: 0.5,
        window: 10 * S,
        min_requests: 10,
        cooldown: 5 * S,
        max_cooldown: 30 * S,
        half_open_probes: 1,
        enabled: true,
        panic_percent: 50,
        min_distinct_callers: 2,
    }
}

#[test]
fn raw_breaker_defaults_and_errors_name_the_field() {
    assert_eq!(
        RawBreaker::default().validate().unwrap(),
        BreakerConfig::default()
    );
    let raw: RawBreaker = toml::from_str(
        "consecutive_failures = 0\nerror_rate = 0.25\nwindow_ms = 30000\nmin_requests = 5\n\
         cooldown_ms = 1000\nmax_cooldown_ms = 8000\nhalf_open_probes = 2\nenabled = false",
    )
    .unwrap();
    let c = raw.validate().unwrap();
    assert_eq!(c.consecutive_failures, 0);
    assert_eq!(c.window, 30 * S);
    assert_eq!(c.max_cooldown, 8 * S);
    assert!(!c.enabled);
    // A long cool-down alone raises the default maximum with it.
    let c = RawBreaker {
        cooldown_ms: Some(120_000),
        ..Default::default()
    }
    .validate()
    .unwrap();
    assert_eq!(c.max_cooldown, 120 * S);
    let cases: [(RawBreaker, &str); 6] = [
        (
            RawBreaker {
                error_rate: Some(1.5),
                ..Default::default()
            },
            "`breaker.error_rate` must be in 0..=1",
        ),
        (
            RawBreaker {
                error_rate: Some(f64::NAN),
                ..Default::default()
            },
            "`breaker.error_rate`",
        ),
        (
            RawBreaker {
                window_ms: Some(10),
                ..Default::default()
            },
            "`breaker.window_ms`",
        ),
        (
            RawBreaker {
                cooldown_ms: Some(10_000),
                max_cooldown_ms: Some(5_000),
                ..Default::default()
            },
            "`breaker.max_cooldown_ms` must be at least `breaker.cooldown_ms`",
        ),
        (
            RawBreaker {
                half_open_probes: Some(0),
                ..Default::default()
            },
            "`breaker.half_open_probes`",
        ),
        (
            RawBreaker {
                min_requests: Some(0),
                ..Default::default()
            },
            "`breaker.min_requests`",
        ),
    ];
    for (raw, want) in cases {
        let e = raw.validate().unwrap_err();
        assert!(e.starts_with(want), "{e}");
    }
    assert!(toml::from_str::<RawBreaker>("cooldown = 3").is_err());
}

#[test]
fn trips_on_consecutive_failures_and_rejects_until_cooldown() {
    let t = t0();
    let b = Breaker::new(config(), t);
    assert_eq!(b.admit(t), Admission::Allow);
    assert_eq!(b.on_failure(t, Blame::Answer(None)), None);
    assert_eq!(b.on_failure(t, Blame::Answer(None)), None);
    b.on_success(t, None); // resets the run
    assert_eq!(b.on_failure(t, Blame::Answer(None)), None);
    assert_eq!(b.on_failure(t, Blame::Answer(None)), None);
    let tr = b.on_failure(t, Blame::Answer(None)).unwrap();
    assert_eq!(
        tr,
        Transition::Tripped {
            reason: TripReason::ConsecutiveFailures { count: 3 },
            cooldown: 5 * S,
            until: t + 5 * S
        }
    );
    assert_eq!(tr.to_state(), BreakerState::Open { until: t + 5 * S });
    assert!(tr.to_string().contains("3 consecutive failures"));
    assert_eq!(b.trips(), 1);
    assert_eq!(b.state(t + S), BreakerState::Open { until: t + 5 * S });
    assert_eq!(b.admit(t + S), Admission::Reject { retry_after: 4 * S });
    assert!(!b.would_admit(t + S));
    assert_eq!(b.retry_after(t + S), Some(4 * S));
    // Late outcomes of requests sent before the trip change nothing.
    assert_eq!(b.on_success(t + S, None), None);
    assert_eq!(b.on_failure(t + S, Blame::Answer(None)), None);
    assert_eq!(b.state(t + 5 * S), BreakerState::HalfOpen);
}

#[test]
fn trips_on_error_rate_once_min_requests_seen() {
    let t = t0();
    let b = Breaker::new(
        BreakerConfig {
            consecutive_failures: 0,
            ..config()
        },
        t,
    );
    // 5 failures interleaved with 4 successes: 9 requests, below min_requests.
    for _ in 0..4 {
        assert_eq!(b.on_failure(t, Blame::Answer(None)), None);
        b.on_success(t, None);
    }
    assert_eq!(b.on_failure(t, Blame::Answer(None)), None);
    // The tenth request is a failure: 6/10 ≥ 0.5.
    let tr = b.on_failure(t, Blame::Answer(None)).unwrap();
    assert!(matches!(
        tr,
        Transition::Tripped {
            reason: TripReason::ErrorRate {
                failures: 6,
                requests: 10
            },
            ..
        }
    ));
}

#[test]
fn window_forgets_old_buckets() {
    let t = t0();
    let b = Breaker::new(
        BreakerConfig {
            consecutive_failures: 0,
            ..config()
        },
        t,
    );
    // 4 failures in 9 requests: below min_requests.
    for _ in 0..4 {
        assert_eq!(b.on_failure(t, Blame::Answer(None)), None);
    }
    for _ in 0..5 {
        b.on_success(t, None);
    }
    // Had the window (10 s) kept them, a tenth request failing would trip (5/10); eleven
    // seconds later it holds only the new one.
    assert_eq!(b.on_failure(t + 11 * S, Blame::Answer(None)), None);
    for _ in 0..8 {
        b.on_success(t + 12 * S, None);
    }
    // 10 requests, 2 failures.
    assert_eq!(b.on_failure(t + 12 * S, Blame::Answer(None)), None);
    // Buckets age one by one: at t + 21.5 s the bucket of t + 11 s has left the window but
    // the one of t + 12 s has not: 9 requests, 1 failure; 7 more failures make 8/16.
    for _ in 0..6 {
        assert_eq!(
            b.on_failure(t + 21 * S + 500 * MS, Blame::Answer(None)),
            None
        );
    }
    assert!(matches!(
        b.on_failure(t + 21 * S + 500 * MS, Blame::Answer(None)),
        Some(Transition::Tripped {
            reason: TripReason::ErrorRate {
                failures: 8,
                requests: 16
            },
            ..
        })
    ));
}

#[test]
fn half_open_probes_then_close_or_reopen_with_doubling_cooldown() {
    let t = t0();
    let b = Breaker::new(config(), t);
    for _ in 0..3 {
        b.on_failure(t, Blame::Answer(None));
    }
    let mut now = t + 5 * S;
    assert_eq!(b.state(now), BreakerState::HalfOpen);
    assert!(b.would_admit(now));
    assert_eq!(b.admit(now), Admission::Probe);
    assert_eq!(b.probes_in_flight(now), 1);
    assert_eq!(b.admit(now), Admission::Reject { retry_after: 5 * S });
    // Probe fails: open again for 10 s, then 20 s, then 30 s (the maximum).
    for (k, cd) in [10, 20, 30, 30].into_iter().enumerate() {
        let tr = b.on_failure(now, Blame::Answer(None)).unwrap();
        assert_eq!(
            tr,
            Transition::Reopened {
                cooldown: cd * S,
                until: now + cd * S
            }
        );
        assert_eq!(b.trips(), 2 + k as u64);
        now += cd * S;
        assert_eq!(b.admit(now), Admission::Probe);
    }
    // Probe succeeds: closed, cool-down back to the base.
    assert_eq!(b.on_success(now, None), Some(Transition::Closed));
    assert_eq!(b.state(now), BreakerState::Closed);
    assert_eq!(b.admit(now), Admission::Allow);
    for _ in 0..2 {
        assert_eq!(b.on_failure(now, Blame::Answer(None)), None);
    }
    assert!(matches!(
        b.on_failure(now, Blame::Answer(None)),
        Some(Transition::Tripped { cooldown, .. }) if cooldown == 5 * S
    ));
}

#[test]
fn lost_probe_is_released_after_the_cooldown() {
    let t = t0();
    let b = Breaker::new(
        BreakerConfig {
            half_open_probes: 2,
            ..config()
        },
        t,
    );
    for _ in 0..3 {
        b.on_failure(t, Blame::Answer(None));
    }
    let now = t + 5 * S;
    assert_eq!(b.admit(now), Admission::Probe);
    assert_eq!(b.admit(now + MS), Admission::Probe);
    assert_eq!(
        b.admit(now + 2 * MS),
        Admission::Reject {
            retry_after: 5 * S - MS
        }
    );
    // Neither probe reports (cancelled): the slots free after one cool-down.
    assert_eq!(b.probes_in_flight(now + 5 * S + MS), 0);
    assert_eq!(b.admit(now + 5 * S + MS), Admission::Probe);
    assert_eq!(b.probes_in_flight(now + 5 * S + MS), 1);
}

#[test]
fn disabled_breaker_always_allows() {
    let t = t0();
    let b = Breaker::new(
        BreakerConfig {
            enabled: false,
            ..config()
        },
        t,
    );
    for _ in 0..100 {
        assert_eq!(b.on_failure(t, Blame::Answer(None)), None);
    }
    assert_eq!(b.admit(t), Admission::Allow);
    assert_eq!(b.state(t), BreakerState::Closed);
}

#[test]
fn one_failing_caller_does_not_trip_it_for_everyone() {
    let t = t0();
    let b = Breaker::new(config(), t);
    let (bad, good) = (Some(1u64 << 50), Some(2u64 << 50));
    // Key `bad` fails 20 times in a row: no trip (one distinct caller), but it is
    // short-circuited alone once its run reaches `consecutive_failures`.
    for k in 0..20 {
        assert_eq!(b.on_failure(t + k * MS, Blame::Answer(bad)), None);
    }
    assert_eq!(b.state(t + 20 * MS), BreakerState::Closed);
    let wait = b.isolated(t + 20 * MS, bad).unwrap();
    assert!(wait <= 5 * S && wait > 4 * S, "{wait:?}");
    assert_eq!(b.isolated(t + 20 * MS, good), None);
    assert_eq!(b.isolated(t + 20 * MS, None), None);
    // …until a cool-down after its last failure.
    assert_eq!(b.isolated(t + 6 * S, bad), None);
    // A second failing caller meets `min_distinct_callers`: the next failure trips.
    assert!(matches!(
        b.on_failure(t + 6 * S, Blame::Answer(good)),
        Some(Transition::Tripped {
            reason: TripReason::ConsecutiveFailures { .. },
            ..
        })
    ));
}

#[test]
fn a_caller_with_recent_successes_is_not_isolated() {
    let t = t0();
    let b = Breaker::new(config(), t);
    let shared_key = Some(7u64 << 50 | 3 << 16);
    b.on_success(t, shared_key);
    for k in 1..=10 {
        b.on_failure(t + k * MS, Blame::Answer(shared_key));
    }
    assert_eq!(b.isolated(t + 11 * MS, shared_key), None);
    // Twenty seconds later with no success in two windows, its failures isolate it.
    let later = t + 21 * S;
    for k in 0..3 {
        b.on_failure(later + k * MS, Blame::Answer(shared_key));
    }
    assert!(b.isolated(later + 3 * MS, shared_key).is_some());
}

#[test]
fn unreachable_trips_hard_and_answers_do_not() {
    let t = t0();
    let b = Breaker::new(config(), t);
    for _ in 0..2 {
        assert_eq!(b.on_failure(t, Blame::Unreachable), None);
    }
    assert!(!b.is_down(t));
    let tr = b.on_failure(t, Blame::Unreachable).unwrap();
    assert!(tr.to_string().contains("3 failures to reach"), "{tr}");
    assert!(b.is_down(t + S));
    // After the cool-down a probe may go: no longer refusing, so not down.
    assert!(!b.is_down(t + 5 * S));
    assert_eq!(b.admit(t + 5 * S), Admission::Probe);
    assert!(b.is_down(t + 5 * S), "probe slot taken");
    assert_eq!(b.on_success(t + 5 * S, None), Some(Transition::Closed));
    // Error answers trip it soft: open but not known down.
    for _ in 0..3 {
        b.on_failure(t + 6 * S, Blame::Answer(None));
    }
    assert!(matches!(b.state(t + 6 * S), BreakerState::Open { .. }));
    assert!(!b.is_down(t + 6 * S));
    // An unreachable report while open makes it hard.
    b.on_failure(t + 6 * S, Blame::Unreachable);
    assert!(b.is_down(t + 6 * S));
}

#[test]
fn threads_hammering_one_breaker_trip_it_once() {
    let t = t0();
    let b = std::sync::Arc::new(Breaker::new(config(), t));
    let threads: Vec<_> = (0..8)
        .map(|k| {
            let b = b.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                for n in 0..2_000u64 {
                    let now = t + Duration::from_micros(n);
                    b.admit(now);
                    let caller = Some((k as u64 + 1) << 50);
                    if let Some(tr) = b.on_failure(now, Blame::Answer(caller)) {
                        seen.push(tr);
                    }
                }
                seen
            })
        })
        .collect();
    let transitions: Vec<_> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(transitions.len(), 1, "{transitions:?}");
    assert!(matches!(transitions[0], Transition::Tripped { .. }));
    assert_eq!(b.trips(), 1);
}

#[derive(Clone, Debug)]
enum Op {
    Admit,
    Success,
    Failure,
}

fn op() -> impl Strategy<Value = (Op, u64)> {
    (
        prop_oneof![Just(Op::Admit), Just(Op::Success), Just(Op::Failure)],
        prop_oneof![Just(0u64), 0u64..100, 0u64..20_000],
    )
}

proptest! {
    #[test]
    fn any_sequence_keeps_the_state_machine_valid(
        ops in prop::collection::vec(op(), 1..300),
        probes in 1u32..4,
        consecutive in 0u32..6,
        min_requests in 1u32..10,
    ) {
        let cfg = BreakerConfig {
            consecutive_failures: consecutive,
            min_requests,
            half_open_probes: probes,
            cooldown: Duration::from_millis(500),
            max_cooldown: Duration::from_millis(4_000),
            window: Duration::from_secs(2),
            ..config()
        };
        let mut now = t0();
        let b = Breaker::new(cfg.clone(), now);
        let mut trips = 0;
        for (op, advance_ms) in ops {
            now += Duration::from_millis(advance_ms);
            let before = b.state(now);
            let transition = match op {
                Op::Admit => {
                    let a = b.admit(now);
                    match a {
                        Admission::Allow => prop_assert_eq!(before, BreakerState::Closed),
                        Admission::Probe => prop_assert_eq!(before, BreakerState::HalfOpen),
                        Admission::Reject { retry_after } => {
                            prop_assert!(before != BreakerState::Closed);
                            prop_assert!(retry_after > Duration::ZERO);
                            prop_assert!(retry_after <= cfg.max_cooldown);
                        }
                    }
                    // Never open with `until` in the past after admit.
                    if let BreakerState::Open { until } = b.state(now) {
                        prop_assert!(until > now);
                    }
                    None
                }
                Op::Success => b.on_success(now, None),
                Op::Failure => b.on_failure(now, Blame::Answer(None)),
            };
            let after = b.state(now);
            prop_assert!(b.probes_in_flight(now) <= probes);
            // Closes only via a success while half-open.
            if after == BreakerState::Closed && before != BreakerState::Closed {
                prop_assert!(matches!(op, Op::Success));
                prop_assert_eq!(before, BreakerState::HalfOpen);
            }
            // Transitions say exactly what happened.
            match transition {
                Some(t) => {
                    prop_assert_eq!(t.to_state(), after);
                    if let Transition::Tripped { cooldown, until, .. }
                    | Transition::Reopened { cooldown, until } = t
                    {
                        trips += 1;
                        prop_assert!(cooldown >= cfg.cooldown && cooldown <= cfg.max_cooldown);
                        prop_assert_eq!(until, now + cooldown);
                    }
                    if matches!(t, Transition::Tripped { .. }) {
                        prop_assert_eq!(before, BreakerState::Closed);
                    }
                    if matches!(t, Transition::Reopened { .. } | Transition::Closed) {
                        prop_assert_eq!(before, BreakerState::HalfOpen);
                    }
                }
                // No transition, no change of state.
                None => prop_assert_eq!(before.as_str(), after.as_str()),
            }
            prop_assert_eq!(b.trips(), trips);
        }
    }
}
