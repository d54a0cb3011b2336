//! One kind of operation counted as Prometheus expects: `…_ops_total`, `…_data_bytes_total`,
//! `…_errors_total` (with the error's `code`) and `…_op_duration_seconds`, each with the
//! labels that name the operation.

use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::Labels;

/// 50 µs to about 13 s, doubling: from a page-cache read on loopback to an operation held
/// for a new epoch.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(50e-6, 2.0, 19)
}

type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// The families of one subsystem (`sheep_{subsystem}_…`), registered once per process.
#[derive(Clone, Debug)]
pub struct OpFamilies {
    ops: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    seconds: Histograms,
}

impl OpFamilies {
    /// `what` ends the help texts: "… of the front-end's operations", say.
    pub fn register(registry: &mut Registry, subsystem: &str, what: &str) -> OpFamilies {
        let families = OpFamilies {
            ops: Family::default(),
            bytes: Family::default(),
            errors: Family::default(),
            seconds: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
        };
        let sub = registry.sub_registry_with_prefix(subsystem);
        sub.register("ops", format!("Finished {what}, failed ones too"), families.ops.clone());
        sub.register_with_unit(
            "data",
            format!("Payload bytes of the {what} that succeeded"),
            Unit::Bytes,
            families.bytes.clone(),
        );
        sub.register("errors", format!("Failed {what}, by error code"), families.errors.clone());
        sub.register_with_unit(
            "op_duration",
            format!("How long the {what} took, failed ones too"),
            Unit::Seconds,
            families.seconds.clone(),
        );
        families
    }

    /// The series of one operation, looked up once so that counting takes no lock on the
    /// family.
    pub fn op(&self, labels: Labels) -> OpMetrics {
        OpMetrics {
            ops: self.ops.get_or_create(&labels).clone(),
            bytes: self.bytes.get_or_create(&labels).clone(),
            seconds: self.seconds.get_or_create(&labels).clone(),
            errors: self.errors.clone(),
            labels,
        }
    }
}

/// One operation's series.
#[derive(Clone, Debug)]
pub struct OpMetrics {
    ops: Counter,
    bytes: Counter,
    seconds: Histogram,
    errors: Family<Labels, Counter>,
    labels: Labels,
}

impl OpMetrics {
    /// One operation that began at `started` succeeded, moving `bytes` of payload.
    pub fn succeeded(&self, started: Instant, bytes: u64) {
        self.ops.inc();
        self.bytes.inc_by(bytes);
        self.seconds.observe(started.elapsed().as_secs_f64());
    }

    /// One operation that began at `started` failed with `code`.
    pub fn failed(&self, started: Instant, code: &str) {
        self.ops.inc();
        self.seconds.observe(started.elapsed().as_secs_f64());
        let mut labels = self.labels.clone();
        labels.push(("code", code.to_string()));
        self.errors.get_or_create(&labels).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode;

    #[test]
    fn an_operation_is_counted_in_every_series_and_a_failure_by_its_code() {
        let mut registry = crate::daemon_registry("test");
        let families = OpFamilies::register(&mut registry, "frontend", "front-end operations");
        let write = families.op(vec![("vdi", "disk0".into()), ("op", "write".into())]);
        let started = Instant::now();
        write.succeeded(started, 4096);
        write.succeeded(started, 8192);
        write.failed(started, "EIO");
        let text = encode(&registry);
        assert!(text.contains("sheep_frontend_ops_total{vdi=\"disk0\",op=\"write\"} 3\n"), "{text}");
        assert!(text.contains("sheep_frontend_data_bytes_total{vdi=\"disk0\",op=\"write\"} 12288\n"), "{text}");
        assert!(text.contains("sheep_frontend_errors_total{vdi=\"disk0\",op=\"write\",code=\"EIO\"} 1\n"), "{text}");
        assert!(text.contains("sheep_frontend_op_duration_seconds_count{vdi=\"disk0\",op=\"write\"} 3\n"), "{text}");
        assert!(text.contains("sheep_build_info{daemon=\"test\",version=\""), "{text}");
        assert!(text.contains("# TYPE sheep_uptime_seconds gauge\n"), "{text}");
    }
}
