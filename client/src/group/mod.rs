//! The groupd client.
//!
//! [`GroupClient`] holds the addresses of the groupd instances, keeps one connection, and
//! moves to the next address when that connection fails, within a bounded time per call.
//! [`Watcher`] follows the one total order of events from a sequence number, across such
//! reconnections, with no gap and no duplicate.

pub mod attach_lock;
mod auth;
mod client;
mod conn;
mod error;
mod watch;

pub use client::{GroupClient, Options, VdiListing};
pub use error::Error;
pub use watch::Watcher;

/// Splits a comma-separated list of addresses (`"127.0.0.1:7000,127.0.0.2:7000"`), trimming
/// blanks. Empty entries are dropped.
pub fn parse_addrs(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_address_lists() {
        assert_eq!(parse_addrs("a:1"), vec!["a:1"]);
        assert_eq!(parse_addrs(" a:1 , b:2,,"), vec!["a:1", "b:2"]);
        assert!(parse_addrs(" , ").is_empty());
    }
}
