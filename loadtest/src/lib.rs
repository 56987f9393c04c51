//! loadtest
pub mod mock;
pub mod load;
