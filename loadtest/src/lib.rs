//! loadtest
pub mod mock;
