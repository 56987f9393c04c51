//! The limiter backend: one seam for every admission — a key's, a team's and a deployment's
//! limits; requests, concurrency, tokens and budget — in two parts around the response store:
//!
//! ```text
//! Inspected ─► admit (requests, concurrency) ─► Admitted ─► response store ─► hit: settle(0, 0)
//!                                                                  └─ miss ─► reserve (tokens,
//!               budget) ─► Reserved ─► attempts ─► settle(used tokens, cost)  — exactly once
//! ```
//! A request refused by a limit, or answered from the cache, counts as a request and costs no
//! tokens; a permit is consumed by [`Limiter::settle`] or [`Limiter::release`], so it cannot be
//! settled twice.
//!
//! [`LocalLimiter`] is the embedded backend: lock-free atomics ([`LimitSet`]) shared by every
//! worker. The fleet backend (`lease::LeasedLimiter`) implements the same trait over leases
//! from a shared store, naming each set's buckets by its [`LimitSet::subject`], so the request
//! path does not change.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::lease::pool::Subject;
use crate::limits::{
    next_period_start, Concurrency, LimitSet, RequestWindow, RetryAfter, TokenBucket,
};
use crate::route::Target;

/// What a request asks of its limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask {
    /// Tokens to reserve: the prompt estimate plus `max_tokens` (or a default).
    pub tokens: u64,
    /// Cost to reserve, in micro-USD, priced from `tokens`.
    pub cost_micros: u64,
    /// Monotonic milliseconds.
    pub now_ms: u64,
    /// Wall-clock unix seconds, for budget periods.
    pub unix_s: u64,
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Requests per minute.
    Requests(RetryAfter),
    /// Tokens per minute.
    Tokens(RetryAfter),
    /// Requests in flight (retry soon: a slot frees when any request ends).
    Concurrency,
    /// The budget: its reset is `retry_after` away (`RetryAfter::NEVER` for a lifetime budget).
    Budget(RetryAfter),
    /// The shared store of a fleet is unavailable and `[shared] on_unavailable = "closed"`.
    Unavailable,
}

impl Refusal {
    /// The `code` of the OpenAI-style error body.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Requests(_) | Refusal::Tokens(_) | Refusal::Concurrency => {
                "rate_limit_exceeded"
            }
            Refusal::Budget(_) => "budget_exceeded",
            Refusal::Unavailable => "overloaded",
        }
    }

    /// Seconds for `Retry-After` (1 for a concurrency refusal); `None` when waiting cannot
    /// help (a request larger than a bucket, a spent lifetime budget): leave the header out.
    pub fn retry_after_s(self) -> Option<u64> {
        match self {
            Refusal::Requests(r) | Refusal::Tokens(r) | Refusal::Budget(r) => {
                (!r.is_never()).then(|| r.seconds())
            }
            Refusal::Concurrency | Refusal::Unavailable => Some(1),
        }
    }
}

/// A refused admission: which set (index into the slice given to the limiter) and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denied {
    /// Index of the refusing set.
    pub set: usize,
    /// The limit that refused.
    pub refusal: Refusal,
}

/// What a request holds of its limits between admission and settlement. Hand it back to the
/// same limiter with the same sets, in the same order.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a permit must be settled or released"]
pub struct Permit {
    /// Tokens reserved in every tokens bucket (0 until [`Limiter::reserve`]).
    pub tokens: u64,
    /// Micro-USD reserved in every budget with a limit (0 until [`Limiter::reserve`]).
    pub cost_micros: u64,
    /// Bit `i` set: set `i` was admitted from its local share while a fleet's shared store
    /// was unavailable (`lease::LeasedLimiter`), and settles there. 0 for the local backend.
    pub fallback: u8,
}

/// A limiter backend. Every method takes the limits of the request's subjects (its key and
/// team, or one deployment) in a fixed order.
pub trait Limiter: Send + Sync {
    /// The request part: a concurrency slot and one request from every set, all or none.
    fn admit(&self, sets: &[&LimitSet], now_ms: u64) -> Result<Permit, Denied>;
    /// The token and budget part (after the response store missed), all or none. On refusal
    /// the permit is unchanged: settle or release it as usual.
    fn reserve(&self, sets: &[&LimitSet], permit: &mut Permit, ask: &Ask) -> Result<(), Denied>;
    /// The request ended having used `tokens` and cost `cost_micros`: refund or charge the
    /// difference, turn the reserved cost into spend, free the concurrency slot. The request
    /// itself stays counted.
    fn settle(
        &self,
        sets: &[&LimitSet],
        permit: Permit,
        tokens: u64,
        cost_micros: u64,
        now_ms: u64,
    );
    /// The request was never sent: give everything back, the request too.
    fn release(&self, sets: &[&LimitSet], permit: Permit, now_ms: u64);
    /// `set` will be admitted through this limiter: a backend that must prepare (a fleet's
    /// leases) starts now rather than on the first admission. Nothing by default.
    fn prepare(&self, set: &LimitSet) {
        let _ = set;
    }
}

/// The embedded backend: the sets' own atomics.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalLimiter;

impl Limiter for LocalLimiter {
    fn admit(&self, sets: &[&LimitSet], now_ms: u64) -> Result<Permit, Denied> {
        for (i, set) in sets.iter().enumerate() {
            if let Err(refusal) = admit_requests(set, now_ms) {
                for done in &sets[..i] {
                    undo_requests(done, now_ms);
                }
                return Err(Denied { set: i, refusal });
            }
        }
        Ok(Permit {
            tokens: 0,
            cost_micros: 0,
            fallback: 0,
        })
    }

    fn reserve(&self, sets: &[&LimitSet], permit: &mut Permit, ask: &Ask) -> Result<(), Denied> {
        for (i, set) in sets.iter().enumerate() {
            if let Err(refusal) = reserve_one(set, ask) {
                for done in &sets[..i] {
                    undo_reserve(done, ask.tokens, ask.cost_micros, ask.now_ms);
                }
                return Err(Denied { set: i, refusal });
            }
        }
        permit.tokens += ask.tokens;
        permit.cost_micros += ask.cost_micros;
        Ok(())
    }

    fn settle(
        &self,
        sets: &[&LimitSet],
        permit: Permit,
        tokens: u64,
        cost_micros: u64,
        now_ms: u64,
    ) {
        for set in sets {
            if let Some(b) = &set.tokens {
                b.settle(permit.tokens, tokens, now_ms);
            }
            let reserved = if set.budget_limit_micros.is_some() {
                permit.cost_micros
            } else {
                0
            };
            set.budget.settle(reserved, cost_micros);
            if let Some(c) = &set.concurrency {
                c.release();
            }
        }
    }

    fn release(&self, sets: &[&LimitSet], permit: Permit, now_ms: u64) {
        for set in sets {
            undo_reserve(set, permit.tokens, permit.cost_micros, now_ms);
            undo_requests(set, now_ms);
        }
    }
}

pub(crate) fn admit_requests(set: &LimitSet, now_ms: u64) -> Result<(), Refusal> {
    if let Some(c) = &set.concurrency {
        if !c.acquire() {
            return Err(Refusal::Concurrency);
        }
    }
    if let Some(b) = &set.requests {
        if let Err(r) = b.try_take(now_ms) {
            if let Some(c) = &set.concurrency {
                c.release();
            }
            return Err(Refusal::Requests(r));
        }
    }
    Ok(())
}

pub(crate) fn undo_requests(set: &LimitSet, now_ms: u64) {
    if let Some(c) = &set.concurrency {
        c.release();
    }
    if let Some(b) = &set.requests {
        b.refund(now_ms);
    }
}

pub(crate) fn reserve_one(set: &LimitSet, ask: &Ask) -> Result<(), Refusal> {
    if let Some(b) = &set.tokens {
        b.try_take(ask.tokens, ask.now_ms)
            .map_err(Refusal::Tokens)?;
    }
    if let Some(limit) = set.budget_limit_micros {
        set.budget.roll_to_period(set.budget_period, ask.unix_s);
        if !set.budget.try_reserve(ask.cost_micros, limit) {
            if let Some(b) = &set.tokens {
                b.refund(ask.tokens, ask.now_ms);
            }
            let next = next_period_start(set.budget_period, ask.unix_s);
            let wait = if next == u64::MAX {
                RetryAfter::NEVER
            } else {
                RetryAfter(next.saturating_sub(ask.unix_s).saturating_mul(1000))
            };
            return Err(Refusal::Budget(wait));
        }
    }
    Ok(())
}

pub(crate) fn undo_reserve(set: &LimitSet, tokens: u64, cost_micros: u64, now_ms: u64) {
    if let Some(b) = &set.tokens {
        b.refund(tokens, now_ms);
    }
    if set.budget_limit_micros.is_some() {
        set.budget.cancel(cost_micros);
    }
}

/// The providers' own limits per deployment (`rpm`, `tpm` on a deployment), admitted through
/// a [`Limiter`] like a key's: Sluice sends a deployment no more than its provider allows, so
/// clients never see the provider's 429 for traffic Sluice could have spread or held back.
/// Kept across config reloads while a deployment's label and limits are unchanged.
pub struct DeploymentLimits {
    limiter: Arc<dyn Limiter>,
    by_group: Vec<Vec<Option<Arc<DeploymentLimit>>>>,
}

/// One deployment's limits.
pub struct DeploymentLimit {
    label: String,
    rpm: Option<u32>,
    tpm: Option<u64>,
    set: LimitSet,
    /// Takes admitted from a fleet's local share (`Permit::fallback`) not yet settled or
    /// released: the attempt loop hands back only token counts, so that many of the next
    /// settlements go back to the share they came from.
    fallback_takes: AtomicU64,
}

impl DeploymentLimits {
    /// The limits of `config`'s deployments through `limiter`, reusing `previous` ones whose
    /// label and numbers are unchanged (so a reload keeps what was already spent).
    pub fn build(
        config: &Config,
        limiter: Arc<dyn Limiter>,
        previous: Option<&DeploymentLimits>,
    ) -> Self {
        let old: Vec<&Arc<DeploymentLimit>> = previous
            .into_iter()
            .flat_map(|p| p.by_group.iter().flatten().flatten())
            .collect();
        let by_group: Vec<Vec<Option<Arc<DeploymentLimit>>>> = config
            .models
            .iter()
            .map(|g| {
                g.deployments
                    .iter()
                    .map(|d| {
                        if d.rpm.is_none() && d.tpm.is_none() {
                            return None;
                        }
                        let same = old
                            .iter()
                            .find(|l| l.label == d.label && l.rpm == d.rpm && l.tpm == d.tpm);
                        Some(same.map_or_else(
                            || {
                                Arc::new(DeploymentLimit {
                                    label: d.label.clone(),
                                    rpm: d.rpm,
                                    tpm: d.tpm,
                                    set: LimitSet {
                                        subject: Some(Subject::Deployment(Arc::from(
                                            d.label.as_str(),
                                        ))),
                                        requests: d
                                            .rpm
                                            .map(|n| RequestWindow::per_minute(u64::from(n))),
                                        tokens: d.tpm.map(TokenBucket::per_minute),
                                        concurrency: None::<Concurrency>,
                                        ..LimitSet::default()
                                    },
                                    fallback_takes: AtomicU64::new(0),
                                })
                            },
                            |l| Arc::clone(l),
                        ))
                    })
                    .collect()
            })
            .collect();
        for l in by_group.iter().flatten().flatten() {
            limiter.prepare(&l.set);
        }
        DeploymentLimits { limiter, by_group }
    }

    /// Whether a request to model group `group` draws tokens from a deployment's `tpm`
    /// (so its admission needs the prompt estimate).
    pub fn counts_tokens(&self, group: usize) -> bool {
        self.by_group
            .get(group)
            .is_some_and(|g| g.iter().flatten().any(|l| l.tpm.is_some()))
    }

    /// The limits of `t`, if it has any.
    pub fn get(&self, t: Target) -> Option<&Arc<DeploymentLimit>> {
        self.by_group.get(t.group)?.get(t.deployment)?.as_ref()
    }

    fn ask(tokens: u64, now_ms: u64) -> Ask {
        Ask {
            tokens,
            cost_micros: 0,
            now_ms,
            unix_s: 0,
        }
    }
}

impl crate::attempt::DeploymentLimiter for DeploymentLimits {
    fn take(&self, t: Target, tokens: u64, now_ms: u64) -> Result<(), Option<Duration>> {
        let Some(l) = self.get(t) else { return Ok(()) };
        let sets = [&l.set];
        let wait = |d: Denied| match d.refusal {
            Refusal::Requests(r) | Refusal::Tokens(r) | Refusal::Budget(r) => {
                (!r.is_never()).then(|| Duration::from_millis(r.0))
            }
            Refusal::Concurrency | Refusal::Unavailable => Some(Duration::from_secs(1)),
        };
        let mut permit = self.limiter.admit(&sets, now_ms).map_err(wait)?;
        if let Err(d) = self
            .limiter
            .reserve(&sets, &mut permit, &Self::ask(tokens, now_ms))
        {
            self.limiter.release(&sets, permit, now_ms);
            return Err(wait(d));
        }
        if permit.fallback != 0 {
            l.fallback_takes.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    fn release(&self, t: Target, tokens: u64, now_ms: u64) {
        if let Some(l) = self.get(t) {
            let permit = Permit {
                tokens,
                cost_micros: 0,
                fallback: l.settle_where(),
            };
            self.limiter.release(&[&l.set], permit, now_ms);
        }
    }

    fn settle(&self, t: Target, reserved: u64, used: u64, now_ms: u64) {
        if let Some(l) = self.get(t) {
            let permit = Permit {
                tokens: reserved,
                cost_micros: 0,
                fallback: l.settle_where(),
            };
            self.limiter.settle(&[&l.set], permit, used, 0, now_ms);
        }
    }
}

impl DeploymentLimit {
    /// The `Permit::fallback` bits of the next settlement: 1 while takes from a local
    /// share are outstanding (counted down), else 0.
    fn settle_where(&self) -> u8 {
        let from_share = self
            .fallback_takes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        u8::from(from_share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::DeploymentLimiter;
    use crate::limits::{BudgetPeriod, RetryAfter};
    const DAY_S: u64 = 86_400;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn ask(tokens: u64, cost: u64) -> Ask {
        Ask {
            tokens,
            cost_micros: cost,
            now_ms: 0,
            unix_s: 1_700_000_000,
        }
    }

    /// Both parts at once, as a request that misses the cache goes through them.
    fn admit_all(sets: &[&LimitSet], ask: &Ask) -> Result<Permit, Denied> {
        let l = LocalLimiter;
        let mut p = l.admit(sets, ask.now_ms)?;
        match l.reserve(sets, &mut p, ask) {
            Ok(()) => Ok(p),
            Err(d) => {
                l.release(sets, p, ask.now_ms);
                Err(d)
            }
        }
    }

    #[test]
    fn refusals_roll_back_and_say_why() {
        let key = LimitSet::new(
            Some(10),
            Some(1000),
            Some(5),
            Some((10_000, BudgetPeriod::Daily)),
            0,
            0,
        );
        let team = LimitSet::new(Some(10), Some(100), None, None, 0, 0);
        let ask = Ask {
            tokens: 200,
            cost_micros: 50,
            now_ms: 0,
            unix_s: 10,
        };
        let denied = admit_all(&[&key, &team], &ask).unwrap_err();
        assert_eq!(denied.set, 1);
        assert!(matches!(denied.refusal, Refusal::Tokens(r) if r.is_never()));
        assert_eq!(denied.refusal.retry_after_s(), None);
        assert_eq!(denied.refusal.code(), "rate_limit_exceeded");
        // Nothing of the key's limits stays taken.
        assert_eq!(key.requests.as_ref().unwrap().remaining(0), 10);
        assert_eq!(key.tokens.as_ref().unwrap().remaining(0), 1000);
        assert_eq!(key.concurrency.as_ref().unwrap().in_flight(), 0);
        assert_eq!(key.budget.used(), 0);

        let ask = Ask { tokens: 80, ..ask };
        let r = admit_all(&[&key, &team], &ask).unwrap();
        assert_eq!(key.concurrency.as_ref().unwrap().in_flight(), 1);
        assert_eq!(key.budget.used(), 50);
        LocalLimiter.settle(&[&key, &team], r, 30, 20, 0);
        assert_eq!(key.tokens.as_ref().unwrap().remaining(0), 970);
        assert_eq!(team.tokens.as_ref().unwrap().remaining(0), 70);
        assert_eq!(key.budget.spend(), 20);
        assert_eq!(team.budget.spend(), 20);
        assert_eq!(key.concurrency.as_ref().unwrap().in_flight(), 0);
        let h = key.headers(0);
        assert_eq!(h.len(), 6);
        assert_eq!(h[1], ("x-ratelimit-remaining-requests", "9".to_string()));

        // Budget refusal: the next day is 86 390 s away.
        let poor = LimitSet::new(None, None, None, Some((10, BudgetPeriod::Daily)), 0, 10);
        let d = admit_all(&[&poor], &ask).unwrap_err();
        assert_eq!(d.refusal, Refusal::Budget(RetryAfter(86_390_000)));
        assert_eq!(d.refusal.code(), "budget_exceeded");
        assert_eq!(d.refusal.retry_after_s(), Some(86_390));
        // A new day resets spend.
        let spent = LimitSet::new(None, None, None, Some((100, BudgetPeriod::Daily)), 100, 10);
        assert!(admit_all(&[&spent], &ask).is_err());
        let tomorrow = Ask {
            unix_s: DAY_S + 1,
            ..ask
        };
        assert!(admit_all(&[&spent], &tomorrow).is_ok());
        let c = LimitSet::new(None, None, Some(0), None, 0, 0);
        assert_eq!(
            admit_all(&[&c], &ask).unwrap_err().refusal,
            Refusal::Concurrency
        );
    }

    #[test]
    fn admission_in_two_parts_rolls_back_partial_takes() {
        let l = LocalLimiter;
        let key = LimitSet::new(Some(10), Some(100), Some(5), None, 0, 0);
        let team = LimitSet::new(Some(1), Some(40), None, None, 0, 0);
        let sets = [&key, &team];
        let mut p = l.admit(&sets, 0).unwrap();
        assert_eq!(key.concurrency.as_ref().unwrap().in_flight(), 1);
        // The team's tokens refuse: the key's tokens come back, the permit stays as it was.
        let d = l.reserve(&sets, &mut p, &ask(50, 0)).unwrap_err();
        assert_eq!(d.set, 1);
        assert!(matches!(d.refusal, Refusal::Tokens(_)));
        assert_eq!(key.tokens.as_ref().unwrap().remaining(0), 100);
        assert_eq!(p.tokens, 0);
        l.settle(&sets, p, 0, 0, 0);
        assert_eq!(key.concurrency.as_ref().unwrap().in_flight(), 0);
        // The team's one request per minute is spent, and the key's request given back.
        let d = l.admit(&sets, 0).unwrap_err();
        assert_eq!(d.set, 1);
        assert_eq!(key.requests.as_ref().unwrap().remaining(0), 9);
        assert_eq!(key.concurrency.as_ref().unwrap().in_flight(), 0);
    }

    #[test]
    fn settle_charges_use_and_spend_and_release_gives_all_back() {
        let l = LocalLimiter;
        let key = LimitSet::new(
            Some(10),
            Some(1000),
            None,
            Some((1_000_000, BudgetPeriod::Monthly)),
            0,
            1_700_000_000,
        );
        let sets = [&key];
        let mut p = l.admit(&sets, 0).unwrap();
        l.reserve(&sets, &mut p, &ask(300, 5000)).unwrap();
        l.settle(&sets, p, 120, 2000, 0);
        assert_eq!(key.tokens.as_ref().unwrap().remaining(0), 880);
        assert_eq!(key.budget.spend(), 2000);
        assert_eq!(key.budget.used(), 2000);
        let mut p = l.admit(&sets, 0).unwrap();
        l.reserve(&sets, &mut p, &ask(300, 5000)).unwrap();
        l.release(&sets, p, 0);
        assert_eq!(key.tokens.as_ref().unwrap().remaining(0), 880);
        assert_eq!(key.requests.as_ref().unwrap().remaining(0), 9);
        assert_eq!(key.budget.used(), 2000);
    }

    #[test]
    fn deployment_limits_hold_and_survive_a_rebuild() {
        let text = "[[providers]]\nname = \"p\"\nbase_url = \"http://127.0.0.1:1/v1\"\n[[models]]\nname = \"m\"\ndeployments = [{ provider = \"p\", model = \"m\", rpm = 2, tpm = 100 }, { provider = \"p\", model = \"n\" }]\n";
        let cfg = Config::from_toml(text, &HashMap::new()).unwrap();
        let a = DeploymentLimits::build(&cfg, Arc::new(LocalLimiter), None);
        let t = Target {
            group: 0,
            deployment: 0,
        };
        assert!(a.take(t, 60, 0).is_ok());
        // Tokens refuse: the request slot comes back.
        assert_eq!(a.take(t, 60, 0), Err(Some(Duration::from_millis(12_000))));
        assert!(a.take(t, 40, 0).is_ok());
        assert!(a.take(t, 1, 0).is_err(), "two requests per minute");
        let b = DeploymentLimits::build(&cfg, Arc::new(LocalLimiter), Some(&a));
        assert!(Arc::ptr_eq(a.get(t).unwrap(), b.get(t).unwrap()));
        let free = Target {
            group: 0,
            deployment: 1,
        };
        assert!(b.get(free).is_none());
        assert!(b.take(free, 1 << 40, 0).is_ok(), "no limits, no refusal");
        let fresh = DeploymentLimits::build(&cfg, Arc::new(LocalLimiter), None);
        assert_eq!(
            fresh.take(t, 1000, 0),
            Err(None),
            "larger than the bucket: never"
        );
        assert!(fresh.take(t, 100, 0).is_ok());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Admit,
        Reserve(u64, u64),
        Settle(u64, u64),
        Release,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Admit),
            (0u64..400, 0u64..3000).prop_map(|(t, c)| Op::Reserve(t, c)),
            (0u64..400, 0u64..3000).prop_map(|(t, c)| Op::Settle(t, c)),
            Just(Op::Release),
        ]
    }

    proptest! {
        /// For any sequence of admissions, reservations and ends, once every permit is
        /// settled or released nothing stays in flight or reserved, and the spend is exactly
        /// what was settled.
        #[test]
        fn every_permit_ends_once(ops in prop::collection::vec(op(), 1..60)) {
            let l = LocalLimiter;
            let key = LimitSet::new(Some(30), Some(2000), Some(3), Some((10_000, BudgetPeriod::Daily)), 0, 1_700_000_000);
            let team = LimitSet::new(None, Some(1500), Some(2), Some((8_000, BudgetPeriod::Daily)), 0, 1_700_000_000);
            let sets = [&key, &team];
            let mut open: Vec<Permit> = Vec::new();
            let mut spent = 0u64;
            for o in ops {
                match o {
                    Op::Admit => if let Ok(p) = l.admit(&sets, 0) { open.push(p) },
                    Op::Reserve(t, c) => if let Some(p) = open.last_mut() {
                        let _ = l.reserve(&sets, p, &ask(t, c));
                    },
                    Op::Settle(t, c) => if let Some(p) = open.pop() {
                        spent += c;
                        l.settle(&sets, p, t, c, 0);
                    },
                    Op::Release => if let Some(p) = open.pop() { l.release(&sets, p, 0) },
                }
                prop_assert!(key.concurrency.as_ref().unwrap().in_flight() <= 3);
                prop_assert!(team.concurrency.as_ref().unwrap().in_flight() <= 2);
            }
            for p in open.drain(..) {
                l.settle(&sets, p, 0, 0, 0);
            }
            prop_assert_eq!(key.concurrency.as_ref().unwrap().in_flight(), 0);
            prop_assert_eq!(team.concurrency.as_ref().unwrap().in_flight(), 0);
            prop_assert_eq!(key.budget.used(), spent);
            prop_assert_eq!(team.budget.used(), spent);
        }
    }
}
