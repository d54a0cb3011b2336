//! The wall clock, in the one unit the cluster's times are in: Unix milliseconds (commands'
//! stamps, tickets' expiry, handshakes' freshness).

/// Now, in Unix milliseconds (0 on a clock set before 1970).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
