//! Scrapes a daemon's `/metrics` (`--metrics ADDR`) over plain HTTP/1.1, every step bounded,
//! and reads the samples of the Prometheus text format.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A connection, a write or a read of an answer waits at most this long.
pub const LIMIT: Duration = Duration::from_secs(10);

/// `METHOD path` at `addr` (`ip:port`): the status code and the body.
pub fn request(addr: &str, method: &str, path: &str) -> Result<(u16, String), String> {
    let sock = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sock, LIMIT).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(LIMIT)).and_then(|()| s.set_write_timeout(Some(LIMIT))).map_err(|e| e.to_string())?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| format!("read from {addr}: {e}"))?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or_else(|| format!("no end of head in {answer:?}"))?;
    let status =
        head.split(' ').nth(1).and_then(|code| code.parse().ok()).ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// `GET /metrics`, which must answer 200.
pub fn scrape(addr: &str) -> String {
    match request(addr, "GET", "/metrics") {
        Ok((200, body)) => body,
        Ok((status, body)) => panic!("GET http://{addr}/metrics answered {status}: {body}"),
        Err(e) => panic!("GET http://{addr}/metrics: {e}"),
    }
}

/// The value of the sample named exactly `series` (its name and its labels as printed,
/// e.g. `sheep_frontend_ops_total{vdi="a",op="write"}`), if the text has it.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The sum of every sample of metric `name` whose labels include all of `labels` (each
/// `key="value"`).
pub fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let inside = match rest {
                "" => "",
                r => r.strip_prefix('{')?.strip_suffix('}')?,
            };
            let have: Vec<&str> = inside.split(',').collect();
            labels.iter().all(|want| have.contains(want)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
