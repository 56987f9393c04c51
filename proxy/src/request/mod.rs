//! The stages of one API request, in order: `api` (walks core's stages: authenticate with
//! `auth`, inspect, `plan`, authorize, admit, the response store, reserve), `forward` (drives
//! core's attempt loop), `deliver` (the answer to the client) and `relay` (a streamed body
//! through the filter chain), and `settle` (the one place a finished request changes the
//! world). `client` holds what every answer needs; `prepare` readies the bodies of the
//! endpoints beyond chat (multipart forms, default models, local token counts), and `upload`
//! streams a large form to the upstream once its `model` field is read.

pub mod api;
pub mod auth;
pub mod client;
pub mod compress;
pub mod deliver;
pub mod forward;
pub mod key_memo;
pub mod media;
pub mod plan;
pub mod prepare;
pub mod relay;
pub mod settle;
pub mod upload;
