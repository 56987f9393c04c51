//! What the cache tells settlement about one request (plain data, so the stages that carry it
//! need nothing else of the cache).

use sluice_core::cache::{CacheKey, SemanticQuery, StoredAnswer};

/// What a request to a group with a cache carries from the lookup to settlement.
#[derive(Debug)]
pub struct Ticket {
    /// The request's key (`None`: it could not be keyed, e.g. `n > 1`).
    pub key: Option<CacheKey>,
    /// How long its answer lives.
    pub ttl_ms: u64,
    /// Its answer may be kept.
    pub write: bool,
    /// Its semantic query and the prompt's embedding, for the semantic index.
    pub semantic: Option<(SemanticQuery, Vec<f32>)>,
    /// Identical requests wait for this one (`coalesce = true`): resolved at settlement.
    pub leader: Option<crate::cache::coalesce::Leader>,
}

/// How the cache answered a request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mark {
    /// An exact hit.
    Hit,
    /// The answer of an identical request that was in flight (`coalesce = true`).
    Coalesced,
    /// A semantic hit, with its cosine similarity.
    Semantic(f32),
    /// Went upstream.
    Miss,
}

impl Mark {
    /// The ledger's and the access log's word for it.
    pub fn label(self) -> &'static str {
        match self {
            Mark::Hit | Mark::Coalesced => "hit",
            Mark::Semantic(_) => "semantic",
            Mark::Miss => "miss",
        }
    }
}

/// What the cache did for one request, for settlement.
#[derive(Debug)]
pub struct CacheNote {
    /// Hit or miss.
    pub mark: Mark,
    /// A miss's ticket.
    pub ticket: Option<Box<Ticket>>,
    /// The answer in the pivot shape, when it completed (captured by `deliver`).
    pub captured: Option<StoredAnswer>,
    /// What a hit saved: the stored answer's cost and tokens.
    pub saved_micros: u64,
    /// Tokens a hit saved.
    pub saved_tokens: u64,
}

impl CacheNote {
    /// A note saying `mark`, nothing captured or saved yet.
    pub fn new(mark: Mark) -> Self {
        CacheNote {
            mark,
            ticket: None,
            captured: None,
            saved_micros: 0,
            saved_tokens: 0,
        }
    }
}
