//! The stages of one API request, in order: `auth` (who, and within which limits), `plan`
//! (what to ask the upstream), `forward` (attempts, retries, fallbacks, hedging), `deliver`
//! (the answer to the client) and `relay` (a streamed body, as it arrives).

pub mod api;
pub mod auth;
pub mod client;
pub mod deliver;
pub mod forward;
pub mod plan;
pub mod relay;
pub mod settle;
