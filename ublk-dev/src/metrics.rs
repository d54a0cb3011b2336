//! What the front-end counts of the requests it serves, per VDI and kind of request:
//! `sheep_frontend_ops_total`, `_data_bytes_total`, `_errors_total{code}` (the errno's name)
//! and `_op_duration_seconds`, from the request reaching the VDI engine to its answer.

use sheep_metrics::{OpFamilies, OpMetrics, Registry};

/// The families, registered before the endpoint serves; a VDI's series come later, once the
/// daemon knows the VDI's name (a recovered ublk device names it).
pub fn register(registry: &mut Registry) -> OpFamilies {
    OpFamilies::register(registry, "frontend", "block requests served")
}

/// One VDI's series.
#[derive(Clone, Debug)]
pub struct FrontendMetrics {
    pub read: OpMetrics,
    pub write: OpMetrics,
    pub flush: OpMetrics,
    pub discard: OpMetrics,
    pub write_zeroes: OpMetrics,
}

impl FrontendMetrics {
    pub fn new(families: &OpFamilies, vdi: &str) -> FrontendMetrics {
        let op = |op: &str| families.op(vec![("vdi", vdi.to_string()), ("op", op.to_string())]);
        FrontendMetrics {
            read: op("read"),
            write: op("write"),
            flush: op("flush"),
            discard: op("discard"),
            write_zeroes: op("write_zeroes"),
        }
    }

    /// Series nobody scrapes: for the unit tests.
    #[cfg(test)]
    pub fn unregistered() -> FrontendMetrics {
        FrontendMetrics::new(&register(&mut Registry::default()), "test")
    }
}
