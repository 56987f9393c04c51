//! loadtest
pub mod load;
pub mod mock;
