//! The attempt loop driven with fake time and scripted upstream outcomes: every test asserts
//! the exact command sequence, with no socket and no sleep.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::config::Config;

mod guards;

/// A deployment limiter that counts what is outstanding per deployment, and refuses the
/// deployments it is told to.
#[derive(Default)]
struct Ledger {
    outstanding: RefCell<HashMap<Target, i64>>,
    takes: RefCell<u32>,
    refuse: RefCell<HashMap<Target, Option<Duration>>>,
}

impl DeploymentLimiter for Ledger {
    fn take(&self, t: Target, _: u64, _: u64) -> Result<(), Option<Duration>> {
        if let Some(wait) = self.refuse.borrow().get(&t) {
            return Err(*wait);
        }
        *self.takes.borrow_mut() += 1;
        *self.outstanding.borrow_mut().entry(t).or_default() += 1;
        Ok(())
    }
    fn release(&self, t: Target, _: u64, _: u64) {
        *self.outstanding.borrow_mut().entry(t).or_default() -= 1;
    }
    fn settle(&self, t: Target, _: u64, _: u64, _: u64) {
        *self.outstanding.borrow_mut().entry(t).or_default() -= 1;
    }
}

impl Ledger {
    fn balanced(&self) -> bool {
        self.outstanding.borrow().values().all(|n| *n == 0)
    }
}

struct Harness {
    config: Config,
    routes: RouteTable,
    limits: Ledger,
    t0: Instant,
    now: Instant,
    rolls: u64,
    /// What every roll returns (0: no backoff jitter; "priority" groups pick in order anyway).
    roll: u64,
    /// The caller of the next loop started.
    caller: Option<u64>,
}

impl Harness {
    fn new(text: &str) -> Self {
        let config = Config::from_toml(text, &HashMap::new()).unwrap();
        let t0 = crate::balance::tests::t0();
        let routes = RouteTable::new(
            &config,
            &crate::route::SharedRoutes::build(&config, None, t0),
        );
        Harness {
            config,
            routes,
            limits: Ledger::default(),
            t0,
            now: t0,
            rolls: 0,
            roll: 0,
            caller: None,
        }
    }

    fn with<R>(&mut self, f: impl FnOnce(&mut Env<'_>) -> R) -> R {
        let now_ms = self.now.duration_since(self.t0).as_millis() as u64;
        let (rolls, roll) = (&mut self.rolls, self.roll);
        let mut rng = move || {
            *rolls += 1;
            roll
        };
        let mut env = Env {
            config: &self.config,
            routes: &mut self.routes,
            limits: &self.limits,
            now: self.now,
            now_ms,
            rng: &mut rng,
        };
        f(&mut env)
    }

    fn start(&mut self, group: usize, deadline: Duration) -> AttemptLoop {
        let deadline = self.t0 + deadline;
        let caller = self.caller;
        self.with(|env| AttemptLoop::new(env, group, deadline, 100, caller))
    }

    /// Polls until the loop waits or ends; every command in order.
    fn poll(&mut self, lp: &mut AttemptLoop) -> Vec<Command> {
        let mut out = Vec::new();
        loop {
            let c = self.with(|env| lp.poll(env));
            let stop = matches!(
                c,
                Command::Wait { .. }
                    | Command::Deliver { .. }
                    | Command::PassThrough { .. }
                    | Command::Fail(_)
                    | Command::Abandon
            );
            out.push(c);
            if stop {
                return out;
            }
        }
    }

    fn handle(&mut self, lp: &mut AttemptLoop, e: Event) -> Vec<Command> {
        self.with(|env| lp.handle(env, e));
        self.poll(lp)
    }

    fn at(&mut self, ms: u64) {
        self.now = self.t0 + Duration::from_millis(ms);
    }
}

fn send(a: usize, group: usize, deployment: usize) -> Command {
    Command::Send {
        attempt: AttemptId(a),
        target: Target { group, deployment },
        hedge: false,
    }
}

fn hedge(a: usize, group: usize, deployment: usize) -> Command {
    Command::Send {
        attempt: AttemptId(a),
        target: Target { group, deployment },
        hedge: true,
    }
}

fn head(a: usize, status: u16) -> Event {
    Event::Head {
        attempt: AttemptId(a),
        status,
        retry_after: None,
    }
}

fn connect_failed(a: usize) -> Event {
    Event::Failed {
        attempt: AttemptId(a),
        failure: TransportFailure {
            failure: Failure::Connect,
            error: GatewayError::new(
                ErrorKind::UpstreamUnreachable,
                "upstream error: cannot connect to p: refused",
            ),
            label: "connect",
        },
    }
}

const WAIT: Command = Command::Wait { until: None };

fn provider() -> &'static str {
    "auth = \"none\"\n[[providers]]\nname = \"p\"\nbase_url = \"http://127.0.0.1:1/v1\"\n"
}

/// Group `m` with two deployments in priority order, plus `text` appended to it.
fn two(text: &str) -> String {
    format!(
        "{}[[models]]\nname = \"m\"\nstrategy = \"priority\"\n{text}\ndeployments = [{{ provider = \"p\", model = \"a\" }}, {{ provider = \"p\", model = \"b\" }}]\n",
        provider()
    )
}

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
    let r = lp.into_report();
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

// -- settlement property: whatever happens, nothing stays reserved or in flight --------------

#[derive(Clone, Debug)]
enum Step {
    Head(u8, u16),
    Body(u8, bool),
    Fail(u8),
    Refuse(u8),
    Timer(u16),
    ClientGone,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (
            0u8..6,
            prop::sample::select(vec![200u16, 400, 429, 500, 503])
        )
            .prop_map(|(a, s)| Step::Head(a, s)),
        (0u8..6, any::<bool>()).prop_map(|(a, c)| Step::Body(a, c)),
        (0u8..6).prop_map(Step::Fail),
        (0u8..6).prop_map(Step::Refuse),
        (0u16..2000).prop_map(Step::Timer),
        Just(Step::ClientGone),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn every_reservation_is_settled_once(steps in prop::collection::vec(step(), 1..40), relay in 0u8..3) {
        let text = format!(
            "{}[[models]]\nname = \"m\"\nretry = {{ max_attempts = 3, base_backoff_ms = 50, max_backoff_ms = 200 }}\nhedge = {{ delay_ms = 20, max_percent = 100 }}\nfallbacks = [\"f\"]\ncontext_window_fallback = \"f\"\ndeployments = [{{ provider = \"p\", model = \"a\" }}, {{ provider = \"p\", model = \"b\" }}]\n[[models]]\nname = \"f\"\ndeployments = [{{ provider = \"p\", model = \"c\" }}]\n",
            provider()
        );
        let mut h = Harness::new(&text);
        let mut lp = h.start(0, Duration::from_secs(5));
        let mut out = h.poll(&mut lp);
        let mut t = 0u64;
        let terminal = |c: &Command| !matches!(c, Command::Wait { .. } | Command::Send { .. } | Command::ReadErrorBody { .. } | Command::Cancel { .. });
        for s in steps {
            if out.iter().any(terminal) {
                break;
            }
            let e = match s {
                Step::Head(a, st) => head(a as usize, st),
                Step::Body(a, c) => Event::ErrorBody { attempt: AttemptId(a as usize), context_window: c },
                Step::Fail(a) => connect_failed(a as usize),
                Step::Refuse(a) => Event::Refused { attempt: AttemptId(a as usize), error: GatewayError::new(ErrorKind::InvalidRequest, "no") },
                Step::Timer(ms) => { t += u64::from(ms); h.at(t); Event::Timer }
                Step::ClientGone => Event::ClientGone,
            };
            out = h.handle(&mut lp, e);
        }
        if !out.iter().any(terminal) {
            out = h.handle(&mut lp, Event::ClientGone);
        }
        if out.iter().any(|c| matches!(c, Command::Deliver { .. })) {
            let r = match relay { 0 => Relayed::Complete, 1 => Relayed::ClientGone, _ => Relayed::UpstreamFailed("idle_timeout") };
            h.with(|env| lp.settle_delivered(env, r, Duration::ZERO, 5));
        }
        prop_assert!(h.limits.balanced(), "outstanding: {:?}", h.limits.outstanding.borrow());
        for g in 0..2 {
            let routes = h.routes.group(g).unwrap();
            for i in 0..routes.breakers.len() {
                prop_assert_eq!(routes.balancer.inflight(i), 0, "group {} deployment {} still in flight", g, i);
            }
        }
        let r = lp.into_report();
        prop_assert!(r.attempts.iter().all(|a| a.ended.is_some()));
    }
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
