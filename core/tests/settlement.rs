//! Settlement property: for any sequence of requests and upstream outcomes (success, upstream
//! error, client cancel, hedge loser, refusal by a limit), every permit of the caller's limits
//! and every take of a deployment's provider limit is settled or released exactly once, and
//! nothing stays in flight — driven through the request stages and the attempt loop as the
//! proxy drives them, with fake time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sluice_core::attempt::{AttemptId, Command, Env, Event, Relayed, TransportFailure};
use sluice_core::cache::NoStore;
use sluice_core::config::Config;
use sluice_core::error::{ErrorKind, GatewayError};
use sluice_core::limiter::{Ask, DeploymentLimits, Limiter, LocalLimiter};
use sluice_core::limits::{BudgetPeriod, LimitSet};
use sluice_core::request::{Authenticated, Lookup, Settled};
use sluice_core::retry::Failure;
use sluice_core::route::{RouteTable, SharedRoutes};

const CONFIG: &str = "auth = \"none\"\n[[providers]]\nname = \"p\"\nbase_url = \"http://127.0.0.1:1/v1\"\n\
[[models]]\nname = \"m\"\nretry = { max_attempts = 3, base_backoff_ms = 0, max_backoff_ms = 0 }\n\
hedge = { delay_ms = 20, max_percent = 100 }\nfallbacks = [\"f\"]\n\
deployments = [{ provider = \"p\", model = \"a\", rpm = 50, tpm = 20000 }, { provider = \"p\", model = \"b\" }]\n\
[[models]]\nname = \"f\"\ndeployments = [{ provider = \"p\", model = \"c\", tpm = 5000 }]\n";

/// What the upstream (or the client) does next to a request in flight.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    Ok,
    Status(u16),
    Connect,
    HedgeTimer,
    ClientGone,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => Just(Outcome::Ok),
        2 => prop::sample::select(vec![429u16, 500, 503]).prop_map(Outcome::Status),
        2 => Just(Outcome::Connect),
        2 => Just(Outcome::HedgeTimer),
        1 => Just(Outcome::ClientGone),
    ]
}

#[derive(Clone, Debug)]
struct Req {
    max_tokens: u64,
    outcomes: Vec<Outcome>,
    relay: u8,
}

fn req() -> impl Strategy<Value = Req> {
    (0u64..3000, prop::collection::vec(outcome(), 1..8), 0u8..3).prop_map(
        |(max_tokens, outcomes, relay)| Req {
            max_tokens,
            outcomes,
            relay,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn every_permit_and_take_ends_once(reqs in prop::collection::vec(req(), 1..12)) {
        let config = Config::from_toml(CONFIG, &HashMap::new()).unwrap();
        let limiter: Arc<dyn Limiter> = Arc::new(LocalLimiter);
        let deployments = DeploymentLimits::build(&config, limiter.clone(), None);
        #[allow(clippy::disallowed_methods)] // a fixed origin for fake time
        let t0 = Instant::now();
        let mut routes = RouteTable::new(&config, &SharedRoutes::build(&config, None, t0));
        let key = LimitSet::new(Some(100), Some(10_000), Some(2), Some((5_000_000, BudgetPeriod::Monthly)), 0, 1_700_000_000);
        let team = LimitSet::new(None, Some(8_000), Some(3), None, 0, 1_700_000_000);
        let sets = [&key, &team];
        let mut ms = 0u64;
        let mut open: Vec<Settled<&str>> = Vec::new();
        for r in reqs {
            ms += 7;
            let now = t0 + Duration::from_millis(ms);
            let body = format!(r#"{{"model":"m","max_tokens":{},"messages":[]}}"#, r.max_tokens);
            let refuse = |_: &_| GatewayError::new(ErrorKind::RateLimited, "limited");
            let stage = Authenticated::new(Some("key")).inspect(&config, body.as_bytes()).unwrap();
            let admitted = match stage.admit(&*limiter, &sets, ms, refuse) {
                Ok(a) => a,
                Err(refused) => { prop_assert!(refused.permit.is_none()); continue; }
            };
            let Lookup::Miss(admitted) = admitted.lookup(&NoStore, None, ms) else { unreachable!() };
            let ask = Ask { tokens: r.max_tokens + 10, cost_micros: r.max_tokens * 3, now_ms: ms, unix_s: 1_700_000_000 };
            let reserved = match admitted.reserve(&*limiter, &sets, &ask, refuse) {
                Ok(x) => x,
                Err(refused) => {
                    // Refused for tokens or budget: the permit comes back, to be settled.
                    let (settled, _) = Settled::refused(*refused);
                    open.push(settled);
                    continue;
                }
            };
            let mut rng = || 0u64;
            let mut env = Env { config: &config, routes: &mut routes, limits: &deployments, now, now_ms: ms, rng: &mut rng };
            let (dispatch, settled) = reserved.dispatch();
            let mut lp = dispatch.attempt(&mut env, now, Some(Duration::from_secs(30)), None);
            let mut live: Vec<AttemptId> = Vec::new();
            let mut outcomes = r.outcomes.iter().copied();
            let mut t = now;
            loop {
                match lp.poll(&mut env) {
                    Command::Send { attempt, .. } => live.push(attempt),
                    Command::Cancel { attempt } => live.retain(|a| *a != attempt),
                    Command::ReadErrorBody { attempt } => {
                        lp.handle(&mut env, Event::ErrorBody { attempt, context_window: false });
                    }
                    Command::Deliver { .. } => {
                        let relayed = [Relayed::Complete, Relayed::ClientGone, Relayed::UpstreamFailed("idle_timeout")][usize::from(r.relay)];
                        lp.settle_delivered(&mut env, relayed, Duration::from_millis(3), r.max_tokens / 2);
                        break;
                    }
                    Command::PassThrough { .. } | Command::Fail(_) | Command::Abandon => break,
                    Command::Wait { .. } => {
                        t += Duration::from_millis(25);
                        env.now = t;
                        let o = outcomes.next().unwrap_or(Outcome::ClientGone);
                        let event = match (o, live.first().copied()) {
                            (Outcome::ClientGone, _) => Event::ClientGone,
                            (Outcome::HedgeTimer, _) | (_, None) => Event::Timer,
                            (Outcome::Ok, Some(a)) => Event::Head { attempt: a, status: 200, retry_after: None },
                            (Outcome::Status(s), Some(a)) => Event::Head { attempt: a, status: s, retry_after: None },
                            (Outcome::Connect, Some(a)) => Event::Failed { attempt: a, failure: TransportFailure {
                                failure: Failure::Connect,
                                error: GatewayError::new(ErrorKind::UpstreamUnreachable, "refused"),
                                label: "connect",
                            } },
                        };
                        if let Event::Head { attempt, .. } | Event::Failed { attempt, .. } = &event {
                            let a = *attempt;
                            live.retain(|x| *x != a);
                        }
                        lp.handle(&mut env, event);
                    }
                }
            }
            open.push(settled);
            // Every deployment's takes ended with the request: nothing in flight.
            for g in 0..2 {
                let group = routes.group(g).unwrap();
                for i in 0..group.breakers.len() {
                    prop_assert_eq!(group.balancer.inflight(i), 0);
                }
            }
            // Settle the oldest open permits now and then, as requests end in any order.
            if open.len() > 1 {
                let s = open.remove(0);
                if let Some(p) = s.permit { limiter.settle(&sets, p, 5, 5, ms); }
            }
        }
        for s in open {
            if let Some(p) = s.permit { limiter.settle(&sets, p, 0, 0, ms); }
        }
        prop_assert_eq!(key.concurrency.as_ref().unwrap().in_flight(), 0);
        prop_assert_eq!(team.concurrency.as_ref().unwrap().in_flight(), 0);
        prop_assert_eq!(key.budget.used(), key.budget.spend(), "no budget reservation outstanding");
    }
}
