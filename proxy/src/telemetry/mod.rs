//! What the gateway tells about itself: logs and the access line (`log`), OpenTelemetry
//! traces (`trace`, with the ids of `context`) and Prometheus metrics (`metrics`).

pub mod access_line;
pub mod context;
pub mod histograms;
pub mod log;
pub mod log_writer;
pub mod metrics;
pub mod process;
pub mod trace;
