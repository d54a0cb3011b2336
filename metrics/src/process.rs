//! What every daemon's registry holds from the start: which build runs and for how long.

use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// A registry whose every metric is named `sheep_…`, holding `sheep_build_info{daemon,
/// version}` and `sheep_uptime_seconds`.
pub fn daemon_registry(daemon: &'static str) -> Registry {
    let mut registry = Registry::with_prefix("sheep");
    let build = Info::new(vec![("daemon", daemon.to_string()), ("version", env!("CARGO_PKG_VERSION").to_string())]);
    registry.register("build", "Which daemon and version this process runs", build);
    registry.register_collector(Box::new(Uptime { started: Instant::now() }));
    registry
}

/// Read at each scrape, so it is never stale.
#[derive(Debug)]
struct Uptime {
    started: Instant,
}

impl Collector for Uptime {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(self.started.elapsed().as_secs_f64());
        let metric = encoder.encode_descriptor(
            "uptime",
            "How long this process has been running.",
            Some(&Unit::Seconds),
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}
