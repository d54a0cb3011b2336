//! The groupd client of a command, with the time limits of the command line.

use std::time::Duration;

use anyhow::Result;
use sheep_client::group::{self, GroupClient, Options};

/// Time limits of one command: a groupd that does not answer is reported within 5 s.
pub fn cli_options() -> Options {
    Options {
        connect_timeout: Duration::from_secs(1),
        call_timeout: Duration::from_secs(2),
        retry_for: Duration::from_millis(4200),
        wait_for_groupd: false,
    }
}

pub fn client(addrs: &str) -> Result<GroupClient> {
    let list = group::parse_addrs(addrs);
    if list.is_empty() {
        anyhow::bail!("--groupd needs at least one address");
    }
    Ok(GroupClient::new(list, cli_options())?)
}
