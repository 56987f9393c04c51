//! What the proxy and the attempt loop exchange: the events fed in, the commands taken out,
//! the environment (time, randomness, routing state, provider limits) and the report kept for
//! settlement.

use std::time::{Duration, Instant};

use smallvec::SmallVec;

use crate::config::Config;
use crate::error::GatewayError;
use crate::retry::Failure;
use crate::route::{RouteTable, Target};

/// The limiter backend for deployments (the providers' own `rpm`/`tpm`): a request is sent to
/// a deployment only after a take succeeds, and every take is settled or released once.
pub trait DeploymentLimiter {
    /// Takes one request and `tokens` tokens of `t`'s limits, all or nothing. On refusal, how
    /// long until it could succeed (`None`: never, the request is larger than a limit).
    /// Deployments without limits always succeed.
    fn take(&self, t: Target, tokens: u64, now_ms: u64) -> Result<(), Option<Duration>>;
    /// Gives back a take whose request was never sent.
    fn release(&self, t: Target, tokens: u64, now_ms: u64);
    /// Settles a sent request with the tokens it really used.
    fn settle(&self, t: Target, reserved: u64, used: u64, now_ms: u64);
}

/// A limiter with no limits.
pub struct Unlimited;

impl DeploymentLimiter for Unlimited {
    fn take(&self, _: Target, _: u64, _: u64) -> Result<(), Option<Duration>> {
        Ok(())
    }
    fn release(&self, _: Target, _: u64, _: u64) {}
    fn settle(&self, _: Target, _: u64, _: u64, _: u64) {}
}

/// What the loop works with at each step: the config, this worker's routing state, the
/// deployment limiter, the time and a source of randomness.
pub struct Env<'a> {
    /// The config generation the request runs on.
    pub config: &'a Config,
    /// This worker's balancers, breakers and hedgers.
    pub routes: &'a mut RouteTable,
    /// The providers' limits per deployment.
    pub limits: &'a dyn DeploymentLimiter,
    /// Now, for the balancer, breakers and timers.
    pub now: Instant,
    /// Now in the limiter's milliseconds.
    pub now_ms: u64,
    /// Uniformly random numbers (balancer rolls, backoff jitter).
    pub rng: &'a mut dyn FnMut() -> u64,
}

/// An attempt of this request, numbered from 0 in the order they were sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttemptId(pub usize);

/// What the proxy must do next.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Build the request for `target` (in its provider's dialect), send it and read the
    /// response head; report [`Event::Head`], [`Event::Failed`] or [`Event::Refused`].
    Send {
        /// The attempt.
        attempt: AttemptId,
        /// Where to.
        target: Target,
        /// A hedge: a second copy of the request while the first still runs.
        hedge: bool,
    },
    /// Read the error answer of `attempt` whole (a bounded size) and keep it; report
    /// [`Event::ErrorBody`] or [`Event::Failed`].
    ReadErrorBody {
        /// The attempt.
        attempt: AttemptId,
    },
    /// Drop `attempt` (a hedge loser): closing its connection cancels it upstream.
    Cancel {
        /// The attempt.
        attempt: AttemptId,
    },
    /// Nothing to do until an attempt reports, the client leaves, or `until` passes (then
    /// report [`Event::Timer`]).
    Wait {
        /// When to report [`Event::Timer`]; `None`: only events.
        until: Option<Instant>,
    },
    /// Terminal: hand `attempt`'s answer to the client; then call
    /// [`AttemptLoop::settle_delivered`](super::AttemptLoop::settle_delivered).
    Deliver {
        /// The attempt.
        attempt: AttemptId,
    },
    /// Terminal: answer with the error answer kept for `attempt` (the upstream's own words).
    PassThrough {
        /// The attempt.
        attempt: AttemptId,
    },
    /// Terminal: answer with this error.
    Fail(GatewayError),
    /// Terminal: the client went away; close.
    Abandon,
}

/// A transport failure of an attempt, as the proxy classified it.
#[derive(Clone, Debug, PartialEq)]
pub struct TransportFailure {
    /// Connect or timeout, for the retry policy.
    pub failure: Failure,
    /// What to answer when this is the last word (502 or 504).
    pub error: GatewayError,
    /// A short label for logs and metrics (`connect`, `first_byte_timeout`, ...).
    pub label: &'static str,
}

impl TransportFailure {
    /// Whether the deployment could not be reached at all (`connect`, `connect_timeout`,
    /// `resolve`, `tls`): the provider's failure whoever asked, unlike a timeout or a broken
    /// exchange, which may be the request's own doing.
    pub fn unreachable(&self) -> bool {
        matches!(
            self.label,
            "connect" | "connect_timeout" | "resolve" | "tls"
        )
    }
}

/// What happened.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// `attempt`'s response head arrived.
    Head {
        /// The attempt.
        attempt: AttemptId,
        /// Its status.
        status: u16,
        /// Its `retry-after-ms` or `Retry-After`, parsed.
        retry_after: Option<Duration>,
    },
    /// The error answer asked for with [`Command::ReadErrorBody`] was read.
    ErrorBody {
        /// The attempt.
        attempt: AttemptId,
        /// The body says the prompt does not fit the model
        /// ([`retry::is_context_window_error`](crate::retry::is_context_window_error)).
        context_window: bool,
    },
    /// `attempt` failed before a head (or while its error body was read).
    Failed {
        /// The attempt.
        attempt: AttemptId,
        /// How.
        failure: TransportFailure,
    },
    /// The request cannot be expressed in `attempt`'s dialect: answer `error` (a 400).
    Refused {
        /// The attempt.
        attempt: AttemptId,
        /// The answer.
        error: GatewayError,
    },
    /// The time of the last [`Command::Wait`] passed.
    Timer,
    /// The client went away.
    ClientGone,
}

/// How the relay of a delivered answer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relayed {
    /// The body reached the client whole.
    Complete,
    /// The upstream failed mid-body (the client got an SSE error event or a cut body).
    UpstreamFailed(&'static str),
    /// The client went away.
    ClientGone,
}

/// One attempt, for the access log and traces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    /// Where it went.
    pub target: Target,
    /// When it was sent.
    pub started: Instant,
    /// When it ended (`None` while running).
    pub ended: Option<Instant>,
    /// The upstream's status, 0 when none arrived.
    pub status: u16,
    /// Why it failed or stopped, if it did.
    pub error: Option<&'static str>,
}

/// What settlement needs from the attempt loop.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttemptReport {
    /// Every attempt, in the order sent.
    pub attempts: SmallVec<[AttemptRecord; 2]>,
    /// The group and deployment that gave the last word (the deployment is `None` when the
    /// request failed before any could be tried).
    pub route: Option<(usize, Option<usize>)>,
    /// Retries made (after a backoff or at once).
    pub retries: u32,
    /// Fallback groups entered.
    pub fallbacks: u32,
    /// Hedges sent.
    pub hedges: u32,
    /// Retries and hedges the group's retry budget refused.
    pub budget_refused: u32,
    /// Label of the failure that decided the answer (`connect`, `client_gone`, ...).
    pub error: Option<&'static str>,
    /// The client went away before an answer was chosen.
    pub client_gone: bool,
}
