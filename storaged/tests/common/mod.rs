//! Helpers of storaged's integration tests: real processes on loopback, each test in its own
//! temp dir, every process killed and reaped by pid when the test ends.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sheep_client::rpc::{self, Connection};
use sheep_rpc::storaged_capnp::storaged;

pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

/// A binary of the same build as this test (target/<profile>/).
pub fn bin(name: &str) -> PathBuf {
    if name == "storaged" {
        return PathBuf::from(env!("CARGO_BIN_EXE_storaged"));
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    dir.join(name)
}

/// A daemon we started: SIGKILLed and reaped when dropped.
pub struct Proc {
    pub name: String,
    pub args: Vec<String>,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    pub fn start(name: &str, args: Vec<String>, log: PathBuf) -> Proc {
        let mut p = Proc { name: name.into(), args, log, child: None };
        p.restart();
        p
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let out = std::fs::File::options().create(true).append(true).open(&self.log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(bin(&self.name))
            .args(&self.args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.name));
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits (bounded) for the process to exit by itself; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st.code().unwrap_or(-1));
            }
            assert!(start.elapsed() < timeout, "{} did not exit within {timeout:?}:\n{}", self.name, self.log_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn runtime() -> (tokio::runtime::Runtime, tokio::task::LocalSet) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    (rt, tokio::task::LocalSet::new())
}

/// Connects to a storaged, waiting (bounded) until it listens.
pub async fn connect(addr: &str) -> Connection<storaged::Client> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rpc::connect::<storaged::Client>(addr, Duration::from_secs(1)).await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("storaged at {addr} does not listen: {e}"),
        }
    }
}

/// The code word of a failed call.
pub fn code(e: &capnp::Error) -> String {
    sheep_rpc::codec::error_code(e).unwrap_or("").to_string()
}

pub async fn create(
    c: &storaged::Client,
    epoch: u32,
    oid: u64,
    size: u32,
    base: u64,
    offset: u32,
    data: &[u8],
) -> capnp::Result<()> {
    let mut req = c.create_and_write_request();
    let mut p = req.get();
    p.set_epoch(epoch);
    p.set_oid(oid);
    p.set_object_size(size);
    p.set_base_oid(base);
    p.set_offset(offset);
    p.set_data(data);
    p.set_fua(false);
    req.send().promise.await?;
    Ok(())
}

pub async fn write(
    c: &storaged::Client,
    epoch: u32,
    oid: u64,
    offset: u32,
    data: &[u8],
    fua: bool,
) -> capnp::Result<()> {
    let mut req = c.write_request();
    let mut p = req.get();
    p.set_epoch(epoch);
    p.set_oid(oid);
    p.set_offset(offset);
    p.set_data(data);
    p.set_fua(fua);
    req.send().promise.await?;
    Ok(())
}

/// A write carrying a VDI lock token (`fence`; the other helpers send 0: no lock held).
pub async fn write_fenced(
    c: &storaged::Client,
    epoch: u32,
    oid: u64,
    offset: u32,
    data: &[u8],
    fence: u64,
) -> capnp::Result<()> {
    let mut req = c.write_request();
    let mut p = req.get();
    p.set_epoch(epoch);
    p.set_oid(oid);
    p.set_offset(offset);
    p.set_data(data);
    p.set_fence(fence);
    req.send().promise.await?;
    Ok(())
}

pub async fn create_fenced(
    c: &storaged::Client,
    epoch: u32,
    oid: u64,
    size: u32,
    data: &[u8],
    fence: u64,
) -> capnp::Result<()> {
    let mut req = c.create_and_write_request();
    let mut p = req.get();
    p.set_epoch(epoch);
    p.set_oid(oid);
    p.set_object_size(size);
    p.set_data(data);
    p.set_fence(fence);
    req.send().promise.await?;
    Ok(())
}

pub async fn zero_fenced(
    c: &storaged::Client,
    epoch: u32,
    oid: u64,
    offset: u32,
    len: u32,
    fence: u64,
) -> capnp::Result<()> {
    let mut req = c.zero_request();
    let mut p = req.get();
    p.set_epoch(epoch);
    p.set_oid(oid);
    p.set_offset(offset);
    p.set_length(len);
    p.set_fence(fence);
    req.send().promise.await?;
    Ok(())
}

pub async fn zero(c: &storaged::Client, epoch: u32, oid: u64, offset: u32, len: u32, fua: bool) -> capnp::Result<()> {
    let mut req = c.zero_request();
    let mut p = req.get();
    p.set_epoch(epoch);
    p.set_oid(oid);
    p.set_offset(offset);
    p.set_length(len);
    p.set_fua(fua);
    req.send().promise.await?;
    Ok(())
}

pub async fn read(c: &storaged::Client, epoch: u32, oid: u64, offset: u32, len: u32) -> capnp::Result<Vec<u8>> {
    let mut req = c.read_request();
    let mut p = req.get();
    p.set_epoch(epoch);
    p.set_oid(oid);
    p.set_offset(offset);
    p.set_length(len);
    let resp = req.send().promise.await?;
    Ok(resp.get()?.get_data()?.to_vec())
}

/// (every oid, the stale ones)
pub async fn list(c: &storaged::Client, epoch: u32) -> capnp::Result<(Vec<u64>, Vec<u64>)> {
    let mut req = c.list_request();
    req.get().set_epoch(epoch);
    let resp = req.send().promise.await?;
    let r = resp.get()?;
    Ok((r.get_oids()?.iter().collect(), r.get_stale()?.iter().collect()))
}

pub async fn fetch(c: &storaged::Client, epoch: u32, oid: u64) -> capnp::Result<(Vec<u8>, bool)> {
    let mut req = c.fetch_request();
    req.get().set_epoch(epoch);
    req.get().set_oid(oid);
    let resp = req.send().promise.await?;
    let r = resp.get()?;
    Ok((r.get_data()?.to_vec(), r.get_stale()))
}

pub async fn remove(c: &storaged::Client, epoch: u32, oid: u64) -> capnp::Result<()> {
    let mut req = c.remove_request();
    req.get().set_epoch(epoch);
    req.get().set_oid(oid);
    req.send().promise.await?;
    Ok(())
}

pub async fn flush(c: &storaged::Client, epoch: u32) -> capnp::Result<()> {
    let mut req = c.flush_request();
    req.get().set_epoch(epoch);
    req.send().promise.await?;
    Ok(())
}

/// (capacity, used, free, objects)
pub async fn stat(c: &storaged::Client) -> capnp::Result<(u64, u64, u64, u64)> {
    let resp = c.stat_request().send().promise.await?;
    let s = resp.get()?.get_stat()?;
    Ok((s.get_capacity(), s.get_used(), s.get_free(), s.get_objects()))
}

/// (epoch, done, total, complete, listed)
pub async fn recovery(c: &storaged::Client) -> capnp::Result<(u32, u64, u64, bool, bool)> {
    let resp = c.recovery_request().send().promise.await?;
    let s = resp.get()?.get_status()?;
    Ok((s.get_epoch(), s.get_done(), s.get_total(), s.get_complete(), s.get_listed()))
}

pub async fn epoch_of(c: &storaged::Client) -> capnp::Result<u32> {
    let resp = c.status_request().send().promise.await?;
    Ok(resp.get()?.get_status()?.get_epoch())
}

/// The code word of a call that must have failed (its data is never printed).
pub fn code_of<T>(r: capnp::Result<T>) -> String {
    match r {
        Ok(_) => panic!("the call succeeded; an error was expected"),
        Err(e) => code(&e),
    }
}

/// A data object id: VDI `vid`, index `idx`.
pub fn oid(vid: u32, idx: u32) -> u64 {
    (u64::from(vid) << 32) | u64::from(idx)
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) | 1).collect()
}
