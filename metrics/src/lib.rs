//! Prometheus metrics of every daemon: [`daemon_registry`] makes a registry that already
//! holds the process's build and uptime, [`OpMetrics`] counts one kind of operation (ops,
//! bytes, errors by code, a latency histogram), and [`serve`] answers `GET /metrics` in the
//! Prometheus text format on a thread of its own, so that a scrape never waits for the
//! daemon's event loop nor delays it. Metric values are atomics the event loop updates.

mod ops;
mod process;
mod server;

pub use ops::{OpFamilies, OpMetrics};
pub use process::daemon_registry;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::registry::Registry;
pub use server::{encode, serve, MetricsEndpoint, MetricsError};

/// Labels of one series: name and value pairs, in the order they are printed.
pub type Labels = Vec<(&'static str, String)>;
