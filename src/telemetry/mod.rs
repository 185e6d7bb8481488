//! Logs, Prometheus metrics and health: what an operator sees of a running agent.

mod health;
mod logging;
mod metrics;
mod process;
mod server;

pub use health::{Health, HealthReport};
pub use logging::{LogFormat, init_logging, parse_log_filter};
pub use metrics::{ControllerMetrics, Metrics};
pub use server::serve;
