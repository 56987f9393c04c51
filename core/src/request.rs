//! The request as stages that consume themselves, the way rustls hands its handshake states
//! along: a spent stage cannot be reused, and the order is checked by the compiler.
//!
//! ```text
//! Authenticated ─inspect─► Inspected ─admit─► Admitted ─lookup─► Hit (replay) ──────────┐
//!   (principal)  (400, 404)  (403)     (429: requests,   └─ Miss ─reserve─► Reserved      │
//!                                       concurrency)       (429: tokens, budget)  │       │
//!                                                dispatch, attempt ◄──────────────┘       │
//!                                                          (AttemptLoop: Routed, Attempting)
//!                                                          ─► Relaying ─► Settled ◄────────┘
//! ```
//! Each stage carries the principal (`P`: whatever the proxy knows a caller by) and the
//! [`Permit`] its limits gave it; a refusal hands both back in [`Refused`], so whoever answers
//! it can still settle the permit and write the ledger. Settlement (in the proxy, one place)
//! consumes the permit: every admission is settled exactly once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::attempt::{AttemptLoop, Env};
use crate::cache::{CacheKey, ResponseStore, StoredAnswer};
use crate::config::Config;
use crate::error::{bounded, ErrorKind, GatewayError};
use crate::inspect::{self, Inspected as Fields};
use crate::limiter::{Ask, Denied, Limiter, Permit};
use crate::limits::LimitSet;

/// A stage refused the request: the answer, and what the request held so far.
#[derive(Debug)]
pub struct Refused<P> {
    /// What to answer.
    pub error: GatewayError,
    /// The caller.
    pub principal: Option<P>,
    /// What the caller's limits gave the request (settle it: the request counts).
    pub permit: Option<Permit>,
    /// The limit that refused, when one did.
    pub denied: Option<Denied>,
    /// The model the client asked for, when the body said.
    pub model: Option<String>,
}

/// Stage 1: the caller is known — a virtual key, or nobody when keys are off.
#[derive(Debug)]
pub struct Authenticated<P> {
    principal: Option<P>,
}

impl<P> Authenticated<P> {
    /// The request of `principal`.
    pub fn new(principal: Option<P>) -> Self {
        Authenticated { principal }
    }

    /// The caller.
    pub fn principal(&self) -> Option<&P> {
        self.principal.as_ref()
    }

    /// Reads the routing fields of `body` (borrowed, no full parse) and resolves the model
    /// group: 400 for a body that is not a request, 404 for a model nobody serves.
    pub fn inspect(self, config: &Config, body: &[u8]) -> Result<Inspected<P>, Box<Refused<P>>> {
        let fields = match inspect::inspect(body) {
            Ok(f) => f,
            Err(error) => {
                return Err(Box::new(Refused {
                    error,
                    principal: self.principal,
                    permit: None,
                    denied: None,
                    model: None,
                }))
            }
        };
        let Some(group) = config.model_index(&fields.model) else {
            let err = GatewayError::new(
                ErrorKind::ModelNotFound,
                format!("The model `{}` does not exist", bounded(&fields.model)),
            )
            .with_param("model");
            return Err(Box::new(Refused {
                error: err,
                principal: self.principal,
                permit: None,
                denied: None,
                model: Some(fields.model),
            }));
        };
        Ok(Inspected {
            principal: self.principal,
            fields,
            group,
        })
    }
}

/// Stage 2: the request's routing fields and model group are known.
#[derive(Debug)]
pub struct Inspected<P> {
    principal: Option<P>,
    /// The routing fields of the body.
    pub fields: Fields,
    /// The model group (index into [`Config::models`]).
    pub group: usize,
}

impl<P> Inspected<P> {
    /// The caller.
    pub fn principal(&self) -> Option<&P> {
        self.principal.as_ref()
    }

    /// 403 unless `allowed` says the caller may use the model.
    pub fn authorize(self, allowed: impl FnOnce(&str) -> bool) -> Result<Self, Box<Refused<P>>> {
        if allowed(&self.fields.model) {
            return Ok(self);
        }
        let err = GatewayError::new(
            ErrorKind::Forbidden,
            format!(
                "This API key may not use the model `{}`.",
                bounded(&self.fields.model)
            ),
        )
        .with_param("model");
        Err(Box::new(Refused {
            error: err,
            principal: self.principal,
            permit: None,
            denied: None,
            model: Some(self.fields.model),
        }))
    }

    /// Admission's request part: one request and a concurrency slot from each of `sets` (the
    /// caller's key and team; none when keys are off). `refusal` words the 429.
    pub fn admit(
        self,
        limiter: &dyn Limiter,
        sets: &[&LimitSet],
        now_ms: u64,
        refusal: impl FnOnce(&Denied) -> GatewayError,
    ) -> Result<Admitted<P>, Box<Refused<P>>> {
        let permit = if sets.is_empty() {
            None
        } else {
            match limiter.admit(sets, now_ms) {
                Ok(p) => Some(p),
                Err(d) => {
                    return Err(Box::new(Refused {
                        error: refusal(&d),
                        principal: self.principal,
                        permit: None,
                        denied: Some(d),
                        model: Some(self.fields.model),
                    }))
                }
            }
        };
        Ok(Admitted {
            principal: self.principal,
            fields: self.fields,
            group: self.group,
            permit,
        })
    }
}

/// Stage 3: admitted for its request rate and concurrency; the response store is asked next.
#[derive(Debug)]
pub struct Admitted<P> {
    principal: Option<P>,
    /// The routing fields of the body.
    pub fields: Fields,
    /// The model group.
    pub group: usize,
    permit: Option<Permit>,
}

/// What the response store said.
#[derive(Debug)]
pub enum Lookup<P> {
    /// A stored answer: replay it; the request reserves and spends no tokens.
    Hit(Settled<P>, Arc<StoredAnswer>),
    /// Go upstream.
    Miss(Admitted<P>),
}

impl<P> Admitted<P> {
    /// The caller.
    pub fn principal(&self) -> Option<&P> {
        self.principal.as_ref()
    }

    /// Asks `store` for the answer stored under `key` (`None`: the group has no cache, or the
    /// request may not read it — no work at all).
    pub fn lookup(
        self,
        store: &dyn ResponseStore,
        key: Option<&CacheKey>,
        now_ms: u64,
    ) -> Lookup<P> {
        match key.and_then(|k| store.lookup(k, now_ms)) {
            Some(answer) => self.hit(answer),
            None => Lookup::Miss(self),
        }
    }

    /// Answered by the gateway itself without going upstream (e.g. a local token-count
    /// estimate): nothing is reserved or spent beyond the request rate.
    pub fn answer_locally(self) -> Settled<P> {
        Settled {
            principal: self.principal,
            permit: self.permit,
            group: Some(self.group),
        }
    }

    /// An answer found another way (the semantic index): the request is answered with it and
    /// reserves nothing.
    pub fn hit(self, answer: Arc<StoredAnswer>) -> Lookup<P> {
        Lookup::Hit(
            Settled {
                principal: self.principal,
                permit: self.permit,
                group: Some(self.group),
            },
            answer,
        )
    }

    /// Admission's token and budget part: the prompt estimate plus `max_tokens`, and their
    /// cost, from each of `sets` (the same sets as [`Inspected::admit`]).
    pub fn reserve(
        mut self,
        limiter: &dyn Limiter,
        sets: &[&LimitSet],
        ask: &Ask,
        refusal: impl FnOnce(&Denied) -> GatewayError,
    ) -> Result<Reserved<P>, Box<Refused<P>>> {
        if let Some(permit) = self.permit.as_mut() {
            if let Err(d) = limiter.reserve(sets, permit, ask) {
                return Err(Box::new(Refused {
                    error: refusal(&d),
                    principal: self.principal,
                    permit: self.permit,
                    denied: Some(d),
                    model: Some(self.fields.model),
                }));
            }
        }
        Ok(Reserved {
            principal: self.principal,
            fields: self.fields,
            group: self.group,
            permit: self.permit,
            reserve_tokens: ask.tokens,
        })
    }
}

/// Stage 4: tokens and budget are reserved; the request may go upstream.
#[derive(Debug)]
pub struct Reserved<P> {
    principal: Option<P>,
    /// The routing fields of the body.
    pub fields: Fields,
    /// The model group.
    pub group: usize,
    permit: Option<Permit>,
    reserve_tokens: u64,
}

impl<P> Reserved<P> {
    /// The caller.
    pub fn principal(&self) -> Option<&P> {
        self.principal.as_ref()
    }

    /// Leaves the stage for the upstream: what settlement needs, and the [`Dispatch`] the
    /// attempt loop is built from. Two steps, so the loop (some 1 KiB) is built where its
    /// caller keeps it: returned in a pair with the settled part, it was copied on the way
    /// out of each frame (three times per request).
    pub fn dispatch(self) -> (Dispatch, Settled<P>) {
        (
            Dispatch {
                group: self.group,
                reserve_tokens: self.reserve_tokens,
            },
            Settled {
                principal: self.principal,
                permit: self.permit,
                group: Some(self.group),
            },
        )
    }
}

/// What the attempt loop of a [`Reserved`] request is built from (only a reserved request
/// gives one): its model group and the tokens it reserved.
#[derive(Debug)]
pub struct Dispatch {
    group: usize,
    reserve_tokens: u64,
}

impl Dispatch {
    /// Routes the request: the attempt loop over its group's deployments, answered by the
    /// client's deadline (`x-sluice-deadline-ms`) or the group's. The loop holds the tokens
    /// the request reserved against each deployment's provider limit. `caller` is a stable
    /// hash of the caller's key id (`None` without keys), for the breakers' blast-radius
    /// guard. The loop is returned alone, built in the caller's slot: assign it straight to
    /// where it is kept.
    pub fn attempt(
        self,
        env: &mut Env<'_>,
        started: Instant,
        client_deadline: Option<Duration>,
        caller: Option<u64>,
    ) -> AttemptLoop {
        let deadline = AttemptLoop::deadline_for(env.config, self.group, started, client_deadline);
        AttemptLoop::new(env, self.group, deadline, self.reserve_tokens, caller)
    }
}

/// The last stage: what settlement consumes once the answer went out (or the request was
/// refused) — the caller and the permit to settle with the request's real usage and cost.
#[derive(Debug)]
pub struct Settled<P> {
    /// The caller.
    pub principal: Option<P>,
    /// What the caller's limits hold for this request; settled exactly once.
    pub permit: Option<Permit>,
    /// The model group, once known.
    pub group: Option<usize>,
}

impl<P> Settled<P> {
    /// A request that ended before a model group was known (401, 400, 404, 403).
    pub fn refused(refused: Refused<P>) -> (Self, GatewayError) {
        (
            Settled {
                principal: refused.principal,
                permit: refused.permit,
                group: None,
            },
            refused.error,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::NoStore;
    use crate::error::MAX_ECHO;
    use crate::limiter::LocalLimiter;
    use std::collections::HashMap;

    fn config() -> Config {
        let text = "auth = \"none\"\n[[providers]]\nname = \"p\"\nbase_url = \"http://127.0.0.1:1/v1\"\n[[models]]\nname = \"m\"\ndeployments = [{ provider = \"p\", model = \"a\" }]\n";
        Config::from_toml(text, &HashMap::new()).unwrap()
    }

    fn no_words(_: &Denied) -> GatewayError {
        GatewayError::new(ErrorKind::RateLimited, "limited")
    }

    /// `admitted` after a lookup in a store that never hits, and an ask of `tokens` (no
    /// cost) at time 0.
    fn missed<P>(admitted: Admitted<P>, tokens: u64) -> (Admitted<P>, Ask) {
        let Lookup::Miss(admitted) = admitted.lookup(&NoStore, None, 0) else {
            panic!("NoStore never hits")
        };
        let ask = Ask {
            tokens,
            cost_micros: 0,
            now_ms: 0,
            unix_s: 0,
        };
        (admitted, ask)
    }

    #[test]
    fn stages_in_order_and_refusals_hand_back_the_permit() {
        let cfg = config();
        let key = LimitSet::new(Some(1), Some(100), Some(1), None, 0, 0);
        let sets = [&key];
        let body = br#"{"model":"m","max_tokens":10,"messages":[]}"#;
        let inspected = Authenticated::new(Some("k1")).inspect(&cfg, body).unwrap();
        assert_eq!(inspected.group, 0);
        let admitted = inspected
            .authorize(|m| m == "m")
            .unwrap()
            .admit(&LocalLimiter, &sets, 0, no_words)
            .unwrap();
        let (admitted, ask) = missed(admitted, 500);
        // More tokens than the key's minute allows: refused, the permit handed back.
        let refused = admitted
            .reserve(&LocalLimiter, &sets, &ask, no_words)
            .unwrap_err();
        assert_eq!(refused.principal, Some("k1"));
        let (settled, err) = Settled::refused(*refused);
        assert_eq!(err.kind, ErrorKind::RateLimited);
        let permit = settled.permit.unwrap();
        assert_eq!(key.concurrency.as_ref().unwrap().in_flight(), 1);
        LocalLimiter.settle(&sets, permit, 0, 0, 0);
        assert_eq!(key.concurrency.as_ref().unwrap().in_flight(), 0);
        // The one request of this minute was used.
        let again = Authenticated::new(Some("k1")).inspect(&cfg, body).unwrap();
        assert!(again.admit(&LocalLimiter, &sets, 0, no_words).is_err());
    }

    #[test]
    fn dispatch_hands_the_permit_to_settle_and_builds_the_loop_of_the_group() {
        use crate::attempt::Command;
        use crate::limiter::DeploymentLimits;
        use crate::route::{RouteTable, SharedRoutes};

        let cfg = config();
        let key = LimitSet::new(Some(10), Some(10_000), Some(1), None, 0, 0);
        let sets = [&key];
        let body = br#"{"model":"m","max_tokens":10,"messages":[]}"#;
        let admitted = Authenticated::new(Some("k1"))
            .inspect(&cfg, body)
            .unwrap()
            .admit(&LocalLimiter, &sets, 0, no_words)
            .unwrap();
        let (admitted, ask) = missed(admitted, 50);
        let reserved = admitted
            .reserve(&LocalLimiter, &sets, &ask, no_words)
            .unwrap();
        let (dispatch, settled) = reserved.dispatch();
        assert_eq!(settled.principal, Some("k1"));
        assert_eq!(settled.group, Some(0));
        assert!(settled.permit.is_some());

        let limiter: Arc<dyn Limiter> = Arc::new(LocalLimiter);
        let limits = DeploymentLimits::build(&cfg, limiter, None);
        #[allow(clippy::disallowed_methods)] // a fixed origin for fake time
        let t0 = Instant::now();
        let mut routes = RouteTable::new(&cfg, &SharedRoutes::build(&cfg, None, t0));
        let mut rng = || 0u64;
        let mut env = Env {
            config: &cfg,
            routes: &mut routes,
            limits: &limits,
            now: t0,
            now_ms: 0,
            rng: &mut rng,
        };
        let mut lp = dispatch.attempt(&mut env, t0, Some(Duration::from_secs(7)), None);
        assert_eq!(lp.first_group(), 0);
        assert_eq!(lp.deadline(), t0 + Duration::from_secs(7));
        assert!(matches!(lp.poll(&mut env), Command::Send { .. }));
        LocalLimiter.settle(&sets, settled.permit.unwrap(), 0, 0, 0);
        assert_eq!(key.concurrency.as_ref().unwrap().in_flight(), 0);
    }

    #[test]
    fn unknown_models_and_forbidden_models_quote_a_bounded_name() {
        let cfg = config();
        let long = "x".repeat(1 << 20);
        let body = format!(r#"{{"model":"{long}","messages":[]}}"#);
        let refused = Authenticated::new(None::<()>)
            .inspect(&cfg, body.as_bytes())
            .unwrap_err();
        assert_eq!(refused.error.kind, ErrorKind::ModelNotFound);
        assert!(refused.error.message.len() < MAX_ECHO + 64);
        let refused = Authenticated::new(Some(()))
            .inspect(&cfg, br#"{"model":"m"}"#)
            .unwrap()
            .authorize(|_| false)
            .unwrap_err();
        assert_eq!(refused.error.kind, ErrorKind::Forbidden);
        assert_eq!(bounded("é".repeat(200).as_str()).len(), 256 + "…".len());
    }
}
