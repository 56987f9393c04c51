//! The attempt loop driven with fake time and scripted upstream outcomes: every test asserts
//! the exact command sequence, with no socket and no sleep. This file holds the harness; the
//! tests are in one file per topic.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::*;
use crate::config::Config;
use crate::error::{ErrorKind, GatewayError};
use crate::retry::Failure;
use crate::route::RouteTable;

mod ending;
mod fallbacks;
mod guards;
mod hedging;
mod retries;
mod settlement;
mod skipping;

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
