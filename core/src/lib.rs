//! Sluice core
