//! Bounded waiting.

use std::time::{Duration, Instant};

/// Polls `probe` every 100 ms until it returns `Some`, for at most `timeout`; panics with
/// `what` and the last state seen otherwise.
pub fn wait_until<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        let last = match probe() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
