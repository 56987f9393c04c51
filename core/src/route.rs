//! The `Routed` stage's state: per model group a balancer (with its own peak-EWMA view), one
//! circuit breaker per deployment, a retry budget and a hedger, and the decisions made on them
//! — which deployment next, may it be sent to, how did it go, may it be retried.
//!
//! Sans-IO like the rest of core: time and randomness come in as arguments. What must be one
//! for the process — the breakers and the retry budgets — lives in [`SharedRoutes`], built once
//! per config generation and shared by every worker (lock-free atomics); each worker keeps a
//! [`RouteTable`] holding `Arc`s to them plus its own balancers and hedgers, and publishes
//! [`RouteTable::drain_changes`] and [`RouteTable::drain_counts`] to its gauges, counters and
//! log. The attempt loop (`attempt`) is the only caller on the request path.
//!
//! Rules that live here:
//! - **Panic threshold** ([`RouteTable::pick`]): when fewer than `panic_percent` of a group's
//!   deployments admit requests, the pick ignores the breakers and balances over every
//!   deployment that is not known down (unreachable, see [`Blame::Unreachable`]); counted as
//!   [`GroupCounts::panics`]. A group of one is therefore never refused only for its breaker.
//! - **Per-caller short-circuit**: a deployment whose breaker isolates the request's caller is
//!   not picked for it; when that leaves nothing, [`Pick::Isolated`].
//! - **Retry budget** ([`RouteTable::try_retry`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::balance::{Balancer, Outcome};
use crate::breaker::{Admission, Blame, Breaker, BreakerState, Transition};
use crate::config::{Config, ModelGroup};
use crate::hedge::Hedger;
use crate::retry::RetryBudget;

/// One deployment of one model group: indices into [`Config::models`] and the group's
/// `deployments`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// Model group index.
    pub group: usize,
    /// Deployment index within the group.
    pub deployment: usize,
}

/// What every worker shares for one group.
#[derive(Debug)]
struct SharedGroup {
    name: String,
    /// Deployment labels, by index.
    labels: Vec<String>,
    breakers: Vec<Arc<Breaker>>,
    budget: Arc<RetryBudget>,
}

/// The routing state every worker shares, for one config generation: per group one breaker
/// per deployment and a retry budget.
#[derive(Debug)]
pub struct SharedRoutes {
    base: Instant,
    groups: Vec<SharedGroup>,
}

impl SharedRoutes {
    /// The shared state of `config`. From `previous` (the last generation's) it keeps the time
    /// base, each breaker whose group name, deployment label and settings are unchanged, and
    /// each retry budget whose group name and budget settings are unchanged; `now` is the time
    /// base of a first build.
    pub fn build(config: &Config, previous: Option<&SharedRoutes>, now: Instant) -> Self {
        let base = previous.map_or(now, |p| p.base);
        let groups = config
            .models
            .iter()
            .map(|m| {
                let old = previous.and_then(|p| p.groups.iter().find(|g| g.name == m.name));
                let breakers = m
                    .deployments
                    .iter()
                    .map(|d| {
                        old.and_then(|o| {
                            let i = o.labels.iter().position(|l| *l == d.label)?;
                            let b = o.breakers.get(i)?;
                            (*b.config() == m.breaker).then(|| Arc::clone(b))
                        })
                        .unwrap_or_else(|| Arc::new(Breaker::new(m.breaker.clone(), base)))
                    })
                    .collect();
                let budget = old
                    .map(|o| &o.budget)
                    .filter(|b| b.fits(&m.retry))
                    .map_or_else(|| Arc::new(RetryBudget::new(&m.retry, base)), Arc::clone);
                SharedGroup {
                    name: m.name.clone(),
                    labels: m.deployments.iter().map(|d| d.label.clone()).collect(),
                    breakers,
                    budget,
                }
            })
            .collect();
        SharedRoutes { base, groups }
    }

    /// The breaker of deployment `i` of group `g`.
    pub fn breaker(&self, g: usize, i: usize) -> Option<&Arc<Breaker>> {
        self.groups.get(g)?.breakers.get(i)
    }
}

/// One group's routing state, as one worker sees it.
#[derive(Clone, Debug)]
pub struct GroupRoutes {
    /// Chooses deployments (this worker's view).
    pub balancer: Balancer,
    /// One per deployment, shared by every worker.
    pub breakers: Vec<Arc<Breaker>>,
    /// The group's retry budget, shared by every worker.
    pub budget: Arc<RetryBudget>,
    /// When the group hedges.
    pub hedger: Option<Hedger>,
    /// The panic threshold, percent.
    panic_percent: u32,
    /// Whether this worker's last pick was made in panic mode (to log entering and leaving).
    panicking: bool,
    /// The gauge value this worker last published per deployment.
    shown: Vec<u8>,
}

/// What a pick found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// Use this deployment.
    Deployment(usize),
    /// Every deployment refuses requests (known down, or open outside panic mode); the
    /// earliest takes one again after this.
    AllOpen(Duration),
    /// The deployments that would take a request have short-circuited this caller alone; the
    /// earliest takes its requests again after this.
    Isolated(Duration),
}

/// Something that changed a deployment's breaker, for the proxy to log and publish.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Change {
    /// The deployment.
    pub target: Target,
    /// Its breaker's state after the change.
    pub state: BreakerState,
    /// The transition, when the breaker changed state (`None`: published for freshness).
    pub transition: Option<Transition>,
}

/// What a group counted since the last [`RouteTable::drain_counts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCounts {
    /// Picks made in panic mode.
    pub panics: u64,
    /// Retries and hedges the retry budget refused.
    pub budget_exhausted: u64,
    /// Requests short-circuited for their caller alone.
    pub isolated: u64,
    /// Panic mode entered (`Some(true)`) or left (`Some(false)`) by this worker.
    pub panic_mode: Option<bool>,
}

/// Every group's routing state, as one worker sees it.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    groups: Vec<GroupRoutes>,
    changes: Vec<Change>,
    counts: Vec<GroupCounts>,
    /// Some group's counts moved since the last [`RouteTable::drain_counts`].
    counted: bool,
}

impl RouteTable {
    /// This worker's state for `config`, over the breakers and budgets of `shared` (built for
    /// the same config).
    pub fn new(config: &Config, shared: &SharedRoutes) -> Self {
        let groups: Vec<GroupRoutes> = config
            .models
            .iter()
            .zip(&shared.groups)
            .map(|(m, s)| GroupRoutes::new(m, s))
            .collect();
        RouteTable {
            counts: vec![GroupCounts::default(); groups.len()],
            groups,
            changes: Vec::new(),
            counted: false,
        }
    }

    /// Takes over `old`'s balancers (built for `old_config`) for groups whose deployment list
    /// and strategy are unchanged (the breakers are carried by [`SharedRoutes::build`]). Every
    /// deployment is queued as a change so gauges show the carried state.
    pub fn carry_over(
        &mut self,
        old_config: &Config,
        old: &RouteTable,
        config: &Config,
        now: Instant,
    ) {
        for (g, (group, model)) in self.groups.iter_mut().zip(&config.models).enumerate() {
            let found = old_config
                .models
                .iter()
                .enumerate()
                .find(|(_, m)| m.name == model.name);
            if let Some((og, old_model)) = found {
                if let Some(old_group) = old.groups.get(og) {
                    group.carry_over(old_model, old_group, model);
                }
            }
            for (i, b) in group.breakers.iter().enumerate() {
                let state = b.state(now);
                if let Some(s) = group.shown.get_mut(i) {
                    *s = state.gauge();
                }
                self.changes.push(Change {
                    target: Target {
                        group: g,
                        deployment: i,
                    },
                    state,
                    transition: None,
                });
            }
        }
    }

    /// The state of group `g`.
    pub fn group(&self, g: usize) -> Option<&GroupRoutes> {
        self.groups.get(g)
    }

    /// The state of group `g`, to change.
    pub fn group_mut(&mut self, g: usize) -> Option<&mut GroupRoutes> {
        self.groups.get_mut(g)
    }

    /// A request entered group `g` (its first attempt there): the hedger and the retry budget
    /// count it.
    pub fn on_request(&mut self, g: usize, now: Instant) {
        if let Some(group) = self.groups.get_mut(g) {
            if let Some(h) = group.hedger.as_mut() {
                h.on_request();
            }
            group.budget.on_request(now);
        }
    }

    /// Spends one retry or hedge of group `g`'s budget; `false` (and counted) when it is spent.
    pub fn try_retry(&mut self, g: usize, now: Instant) -> bool {
        let Some(group) = self.groups.get(g) else {
            return false;
        };
        if group.budget.try_spend(now) {
            return true;
        }
        if let Some(c) = self.counts.get_mut(g) {
            c.budget_exhausted += 1;
            self.counted = true;
        }
        false
    }

    /// Chooses a deployment of group `g` for `caller`, preferring those not in `tried`: among
    /// those whose breaker admits a request, or — in panic mode — among all not known down;
    /// never one that isolates `caller`. `None` when the group is unknown or empty.
    pub fn pick(
        &mut self,
        g: usize,
        now: Instant,
        roll: u64,
        tried: &[usize],
        caller: Option<u64>,
    ) -> Option<Pick> {
        self.refresh(g, now);
        let group = self.groups.get_mut(g)?;
        if group.breakers.is_empty() {
            return None;
        }
        let panic = group.panic(now);
        let breakers = &group.breakers;
        let usable = |i: usize| {
            breakers.get(i).is_some_and(|b| {
                (b.would_admit(now) || (panic && !b.is_down(now)))
                    && b.isolated(now, caller).is_none()
            })
        };
        let fresh = group
            .balancer
            .pick(now, roll, |i| !tried.contains(&i) && usable(i));
        let found = fresh.or_else(|| group.balancer.pick(now, roll, usable));
        let counts = self.counts.get_mut(g);
        if group.panicking != panic {
            group.panicking = panic;
            if let Some(c) = counts {
                c.panic_mode = Some(panic);
                self.counted = true;
            }
        }
        let counts = self.counts.get_mut(g);
        if let Some(i) = found {
            if panic {
                if let Some(c) = counts {
                    c.panics += 1;
                    self.counted = true;
                }
            }
            return Some(Pick::Deployment(i));
        }
        let breakers = &group.breakers;
        let isolated = breakers
            .iter()
            .filter(|b| b.would_admit(now) || (panic && !b.is_down(now)))
            .filter_map(|b| b.isolated(now, caller))
            .min();
        if let Some(wait) = isolated {
            if let Some(c) = counts {
                c.isolated += 1;
                self.counted = true;
            }
            return Some(Pick::Isolated(wait));
        }
        let wait = breakers
            .iter()
            .filter_map(|b| b.retry_after(now))
            .min()
            .unwrap_or(Duration::from_secs(1));
        Some(Pick::AllOpen(wait))
    }

    /// Whether group `g` has a deployment not in `tried` that would take `caller`'s request.
    pub fn has_untried(
        &self,
        g: usize,
        now: Instant,
        tried: &[usize],
        caller: Option<u64>,
    ) -> bool {
        self.groups.get(g).is_some_and(|group| {
            let panic = group.panic(now);
            group.breakers.iter().enumerate().any(|(i, b)| {
                !tried.contains(&i)
                    && (b.would_admit(now) || (panic && !b.is_down(now)))
                    && b.isolated(now, caller).is_none()
            })
        })
    }

    /// How long until group `g` takes `caller`'s request again, when no deployment would take
    /// it now (`None`: one would).
    pub fn blocked(&self, g: usize, now: Instant, caller: Option<u64>) -> Option<Duration> {
        let group = self.groups.get(g)?;
        if self.has_untried(g, now, &[], caller) {
            return None;
        }
        group
            .breakers
            .iter()
            .filter_map(|b| match (b.retry_after(now), b.isolated(now, caller)) {
                (None, None) => None,
                (a, b) => a.max(b),
            })
            .min()
            .or(Some(Duration::from_secs(1)))
    }

    /// Starts a request to `t`; `false` when its breaker refuses (a probe slot was taken
    /// meanwhile) and the group is not in panic mode.
    pub fn start(&mut self, t: Target, now: Instant) -> bool {
        let Some(group) = self.groups.get_mut(t.group) else {
            return false;
        };
        let Some(breaker) = group.breakers.get(t.deployment) else {
            return false;
        };
        if let Admission::Reject { .. } = breaker.admit(now) {
            if breaker.is_down(now) || !group.panic(now) {
                return false;
            }
        }
        let state = breaker.state(now);
        group.balancer.on_start(t.deployment, now);
        self.show(t, state, None);
        true
    }

    /// Records how `caller`'s request to `t` went (a failure here is an error answer or a
    /// timeout; see [`RouteTable::unreachable`]).
    pub fn finish(&mut self, t: Target, now: Instant, outcome: Outcome, caller: Option<u64>) {
        let Some(group) = self.groups.get_mut(t.group) else {
            return;
        };
        group.balancer.on_end(t.deployment, now, outcome);
        if let Some(b) = group.breakers.get(t.deployment).cloned() {
            let transition = if outcome.success {
                b.on_success(now, caller)
            } else {
                b.on_failure(now, Blame::Answer(caller))
            };
            self.show(t, b.state(now), transition);
        }
    }

    /// The request to `t` could not reach the deployment (connect, DNS, TLS): the provider's
    /// failure whoever asked.
    pub fn unreachable(&mut self, t: Target, now: Instant, latency: Duration) {
        let Some(group) = self.groups.get_mut(t.group) else {
            return;
        };
        group
            .balancer
            .on_end(t.deployment, now, Outcome::failure(latency));
        if let Some(b) = group.breakers.get(t.deployment).cloned() {
            let transition = b.on_failure(now, Blame::Unreachable);
            self.show(t, b.state(now), transition);
        }
    }

    /// A request to `t` was abandoned (hedge loser, client gone): it no longer counts as in
    /// flight, and says nothing about the deployment's health.
    pub fn cancel(&mut self, t: Target) {
        if let Some(group) = self.groups.get_mut(t.group) {
            group.balancer.on_cancel(t.deployment);
        }
    }

    /// Feeds an active health-check result for provider `p` to the breakers of every
    /// deployment on it: a failed check is a failure to reach them.
    pub fn health(&mut self, config: &Config, p: usize, ok: bool, now: Instant) {
        for (g, model) in config.models.iter().enumerate() {
            for (i, d) in model.deployments.iter().enumerate() {
                if d.provider != p {
                    continue;
                }
                let Some(b) = self.groups.get(g).and_then(|s| s.breakers.get(i)).cloned() else {
                    continue;
                };
                let transition = if ok {
                    b.on_success(now, None)
                } else {
                    b.on_failure(now, Blame::Unreachable)
                };
                let t = Target {
                    group: g,
                    deployment: i,
                };
                self.show(t, b.state(now), transition);
            }
        }
    }

    /// Queues a change for `t` when it made a transition or its gauge value moved since this
    /// worker last published it.
    fn show(&mut self, t: Target, state: BreakerState, transition: Option<Transition>) {
        let Some(shown) = self
            .groups
            .get_mut(t.group)
            .and_then(|g| g.shown.get_mut(t.deployment))
        else {
            return;
        };
        if transition.is_none() && *shown == state.gauge() {
            return;
        }
        *shown = state.gauge();
        self.changes.push(Change {
            target: t,
            state,
            transition,
        });
    }

    /// Brings this worker's view of group `g`'s breakers up to date: breakers are shared, so
    /// another worker may have changed them.
    fn refresh(&mut self, g: usize, now: Instant) {
        let n = self.groups.get(g).map_or(0, |s| s.breakers.len());
        for i in 0..n {
            let Some(state) = self
                .groups
                .get(g)
                .and_then(|s| s.breakers.get(i))
                .map(|b| b.state(now))
            else {
                continue;
            };
            let t = Target {
                group: g,
                deployment: i,
            };
            self.show(t, state, None);
        }
    }

    /// The breaker changes since the last call, oldest first.
    pub fn drain_changes(&mut self) -> std::vec::Drain<'_, Change> {
        self.changes.drain(..)
    }

    /// What each group counted since the last call, by group index (zero counts skipped).
    pub fn drain_counts(&mut self) -> impl Iterator<Item = (usize, GroupCounts)> + '_ {
        let upto = if std::mem::take(&mut self.counted) {
            self.counts.len()
        } else {
            0
        };
        self.counts[..upto]
            .iter_mut()
            .enumerate()
            .filter(|(_, c)| **c != GroupCounts::default())
            .map(|(g, c)| (g, std::mem::take(c)))
    }
}

impl GroupRoutes {
    fn new(g: &ModelGroup, shared: &SharedGroup) -> Self {
        let weights: Vec<u32> = g.deployments.iter().map(|d| d.weight).collect();
        GroupRoutes {
            balancer: Balancer::with_config(g.strategy, &weights, &g.balance),
            breakers: shared.breakers.clone(),
            budget: Arc::clone(&shared.budget),
            hedger: g.hedge.clone().map(Hedger::new),
            panic_percent: if g.breaker.enabled {
                g.breaker.panic_percent
            } else {
                0
            },
            panicking: false,
            shown: vec![0; g.deployments.len()],
        }
    }

    /// Whether the group is in panic mode at `now`: fewer than `panic_percent` of its
    /// deployments admit a request.
    pub fn panic(&self, now: Instant) -> bool {
        let n = self.breakers.len() as u64;
        let admitting = self.breakers.iter().filter(|b| b.would_admit(now)).count() as u64;
        n > 0 && admitting * 100 < u64::from(self.panic_percent) * n
    }

    fn carry_over(&mut self, old_model: &ModelGroup, old: &GroupRoutes, model: &ModelGroup) {
        let labels = |m: &ModelGroup| {
            m.deployments
                .iter()
                .map(|d| (d.label.clone(), d.weight))
                .collect::<Vec<_>>()
        };
        if labels(model) == labels(old_model) && model.strategy == old_model.strategy {
            self.balancer = old.balancer.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(text: &str) -> Config {
        Config::from_toml(text, &HashMap::new()).unwrap()
    }

    fn table(cfg: &Config, now: Instant) -> RouteTable {
        RouteTable::new(cfg, &SharedRoutes::build(cfg, None, now))
    }

    const TWO: &str = "auth = \"none\"\n[[providers]]\nname = \"p\"\nbase_url = \"http://127.0.0.1:1/v1\"\n[[models]]\nname = \"m\"\nbreaker = { consecutive_failures = 2, cooldown_ms = 1000 }\ndeployments = [{ provider = \"p\", model = \"a\" }, { provider = \"p\", model = \"b\" }]\n";

    const A: Target = Target {
        group: 0,
        deployment: 0,
    };
    const B: Target = Target {
        group: 0,
        deployment: 1,
    };

    #[test]
    fn breakers_trip_and_picks_avoid_them() {
        let cfg = config(TWO);
        let now = crate::balance::tests::t0();
        let mut t = table(&cfg, now);
        for _ in 0..2 {
            assert!(t.start(A, now));
            t.finish(A, now, Outcome::failure(Duration::from_millis(1)), None);
        }
        let tripped: Vec<_> = t.drain_changes().filter_map(|c| c.transition).collect();
        assert!(matches!(tripped.as_slice(), [Transition::Tripped { .. }]));
        for roll in 0..50 {
            assert_eq!(t.pick(0, now, roll, &[], None), Some(Pick::Deployment(1)));
        }
        assert!(!t.start(A, now), "an open breaker refuses");
        assert!(t.has_untried(0, now, &[0], None));
        assert!(!t.has_untried(0, now, &[1], None));
        // Known down as well: nothing is left.
        for _ in 0..2 {
            assert!(t.start(B, now));
            t.unreachable(B, now, Duration::from_millis(1));
        }
        // A is open (error answers) and B down: panic mode sends to A, never to B.
        for roll in 0..20 {
            assert_eq!(t.pick(0, now, roll, &[], None), Some(Pick::Deployment(0)));
        }
        assert!(
            t.start(A, now),
            "panic mode lets a request through an open breaker"
        );
        assert!(!t.start(B, now), "never to a deployment known down");
        let counts: Vec<_> = t.drain_counts().collect();
        assert_eq!(counts.len(), 1);
        assert_eq!(counts[0].1.panics, 20);
        assert_eq!(counts[0].1.panic_mode, Some(true));
        // Both half-open after the cool-down; their probes fail to connect: nothing is left.
        let later = now + Duration::from_millis(1500);
        for d in [A, B] {
            assert!(t.start(d, later));
            t.unreachable(d, later, Duration::ZERO);
        }
        assert!(matches!(
            t.pick(0, later, 7, &[], None),
            Some(Pick::AllOpen(w)) if w <= Duration::from_secs(2)
        ));
        assert!(t.blocked(0, later, None).is_some());
        assert_eq!(t.pick(3, now, 7, &[], None), None, "unknown group");
    }

    #[test]
    fn a_group_of_one_panics_instead_of_refusing_and_isolates_a_failing_caller() {
        let one = TWO.replace(", { provider = \"p\", model = \"b\" }", "");
        let cfg = config(&one);
        let now = crate::balance::tests::t0();
        let mut t = table(&cfg, now);
        for _ in 0..2 {
            t.start(A, now);
            t.finish(A, now, Outcome::failure(Duration::ZERO), None);
        }
        assert!(matches!(
            t.group(0).unwrap().breakers[0].state(now),
            BreakerState::Open { .. }
        ));
        assert_eq!(t.pick(0, now, 0, &[], None), Some(Pick::Deployment(0)));
        assert!(t.start(A, now));
        // A caller whose own requests keep failing is short-circuited alone.
        let later = now + Duration::from_secs(30);
        let (bad, good) = (Some(3u64 << 50), Some(4u64 << 50));
        t.on_request(0, later);
        t.finish(A, later, Outcome::success(Duration::ZERO), None);
        for _ in 0..2 {
            t.finish(A, later, Outcome::failure(Duration::ZERO), bad);
        }
        assert!(matches!(
            t.pick(0, later, 0, &[], bad),
            Some(Pick::Isolated(w)) if w <= Duration::from_secs(1)
        ));
        assert_eq!(t.pick(0, later, 0, &[], good), Some(Pick::Deployment(0)));
        assert!(t.blocked(0, later, bad).is_some());
        assert_eq!(t.blocked(0, later, good), None);
    }

    #[test]
    fn workers_share_breakers_and_budgets() {
        let cfg = config(TWO);
        let now = crate::balance::tests::t0();
        let shared = SharedRoutes::build(&cfg, None, now);
        let mut w0 = RouteTable::new(&cfg, &shared);
        let mut w1 = RouteTable::new(&cfg, &shared);
        // One failure through each worker: two in a row for the one breaker.
        w0.start(A, now);
        w0.finish(A, now, Outcome::failure(Duration::ZERO), None);
        w1.start(A, now);
        w1.finish(A, now, Outcome::failure(Duration::ZERO), None);
        let trips =
            |t: &mut RouteTable| t.drain_changes().filter(|c| c.transition.is_some()).count();
        assert_eq!((trips(&mut w0), trips(&mut w1)), (0, 1));
        // Worker 0 sees it open on its next pick, and publishes the gauge.
        assert_eq!(w0.pick(0, now, 0, &[], None), Some(Pick::Deployment(1)));
        assert!(w0
            .drain_changes()
            .any(|c| c.target == A && matches!(c.state, BreakerState::Open { .. })));
        // The default budget's floor is 100 retries per 10 s, for both workers together.
        let spent = (0..80).filter(|_| w0.try_retry(0, now)).count()
            + (0..80).filter(|_| w1.try_retry(0, now)).count();
        assert_eq!(spent, 100);
        assert_eq!(
            w0.drain_counts()
                .chain(w1.drain_counts())
                .map(|(_, c)| c.budget_exhausted)
                .sum::<u64>(),
            60
        );
    }

    #[test]
    fn carry_over_keeps_breakers_by_label() {
        let cfg = config(TWO);
        let now = crate::balance::tests::t0();
        let old_shared = SharedRoutes::build(&cfg, None, now);
        let mut old = RouteTable::new(&cfg, &old_shared);
        for _ in 0..2 {
            old.start(B, now);
            old.finish(B, now, Outcome::failure(Duration::ZERO), None);
        }
        // The new config lists the deployments the other way round.
        let swapped = TWO.replace(
            "[{ provider = \"p\", model = \"a\" }, { provider = \"p\", model = \"b\" }]",
            "[{ provider = \"p\", model = \"b\" }, { provider = \"p\", model = \"a\" }]",
        );
        let new_cfg = config(&swapped);
        let shared = SharedRoutes::build(&new_cfg, Some(&old_shared), now);
        assert!(Arc::ptr_eq(
            shared.breaker(0, 0).unwrap(),
            old_shared.breaker(0, 1).unwrap()
        ));
        let mut new = RouteTable::new(&new_cfg, &shared);
        new.carry_over(&cfg, &old, &new_cfg, now);
        let states: Vec<_> = new
            .drain_changes()
            .map(|c| (c.target.deployment, c.state))
            .collect();
        assert!(matches!(states[0], (0, BreakerState::Open { .. })));
        assert_eq!(states[1], (1, BreakerState::Closed));
        // Changed breaker settings make a fresh breaker.
        let tuned = config(&swapped.replace("cooldown_ms = 1000", "cooldown_ms = 2000"));
        let fresh = SharedRoutes::build(&tuned, Some(&shared), now);
        assert_eq!(
            fresh.breaker(0, 0).unwrap().state(now),
            BreakerState::Closed
        );
    }
}
