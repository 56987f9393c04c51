//! What the gateway tells about itself: logs and the access line (`log`), OpenTelemetry
//! traces (`trace`) and Prometheus metrics (`metrics`).

pub mod log;
pub mod metrics;
pub mod trace;
