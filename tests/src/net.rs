//! A test's own block of loopback addresses, `127.A.B.N`: picked at random, so that tests
//! running at the same time (in this process or others) do not meet.

use std::net::{Ipv4Addr, TcpListener};

pub struct Loopback {
    net: [u8; 2],
}

impl Loopback {
    pub fn new() -> Loopback {
        let seed = u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
        let h = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Loopback { net: [(h >> 40) as u8 % 200 + 20, (h >> 48) as u8 % 250 + 1] }
    }

    /// Address number `n` (1..=254) of the block.
    pub fn ip(&self, n: usize) -> Ipv4Addr {
        assert!((1..255).contains(&n), "node number {n} out of range");
        Ipv4Addr::new(127, self.net[0], self.net[1], n as u8)
    }

    /// `ip:port` with a free TCP port on address `n`, found by binding port 0 (the daemon
    /// binds it right after).
    pub fn free_addr(&self, n: usize) -> String {
        let ip = self.ip(n);
        let l = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}: {e}"));
        l.local_addr().expect("local_addr").to_string()
    }
}

impl Loopback {
    /// Two distinct free ports on address `n` (a daemon's service and its metrics): both
    /// are held until both are picked, so they cannot be the same.
    pub fn free_addr_pair(&self, n: usize) -> (String, String) {
        let ip = self.ip(n);
        let bind = || TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}: {e}"));
        let (a, b) = (bind(), bind());
        (a.local_addr().expect("local_addr").to_string(), b.local_addr().expect("local_addr").to_string())
    }
}

impl Default for Loopback {
    fn default() -> Self {
        Loopback::new()
    }
}
