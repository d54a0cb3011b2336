//! The chaos test's writers: one through the VDI engine in this process, one through an NBD
//! export (a `sheepctl export` daemon). Each writes 4 KiB blocks at random slots of its own
//! VDI, one request at a time, flushes now and then, reads back a slot now and then, and
//! records every write and what it read in its [`Model`].

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sheep_client::group::attach_lock::AttachLock;
use sheep_client::group::{GroupClient, Options};
use sheep_client::vdi::{CallLimits, Cluster, Vdi, VdiOptions};

use super::model::{block, Model, SLOT};
use crate::nbd_client::NbdClient;
use crate::rand::Rng;

/// What both writers share with the test.
#[derive(Clone)]
pub struct Shared {
    pub model: Arc<Mutex<Model>>,
    pub stop: Arc<AtomicBool>,
    /// Reads that broke the model, and writer failures that are not I/O errors.
    pub violations: Arc<Mutex<Vec<String>>>,
    /// Byte distance between two slots.
    pub stride: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn new(writer: u8, slots: usize, stride: u64) -> Shared {
        assert!(stride >= SLOT as u64);
        Shared {
            model: Arc::new(Mutex::new(Model::new(writer, slots))),
            stop: Arc::new(AtomicBool::new(false)),
            violations: Arc::new(Mutex::new(Vec::new())),
            stride,
        }
    }

    pub fn violation(&self, what: String) {
        eprintln!("chaos: VIOLATION {what}");
        lock(&self.violations).push(what);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// One operation of a writer, drawn from its seed.
enum Op {
    Write { slot: usize, fua: bool },
    Flush,
    Read { slot: usize },
}

fn draw(r: &mut Rng, slots: usize) -> Op {
    let slot = r.below(slots as u64) as usize;
    match r.below(10) {
        0 => Op::Flush,
        1 | 2 => Op::Read { slot },
        n => Op::Write { slot, fua: n == 9 },
    }
}

/// What a writer does with its device: the engine or an NBD connection.
trait Device {
    async fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<(), String>;
    async fn flush(&mut self) -> Result<(), String>;
    async fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String>;
}

async fn run_ops(dev: &mut impl Device, sh: &Shared, seed: u64) {
    let mut r = Rng::new(seed);
    let (writer, slots) = {
        let m = lock(&sh.model);
        (m.writer, m.slots())
    };
    while !sh.stopped() {
        match draw(&mut r, slots) {
            Op::Write { slot, fua } => {
                let seq = lock(&sh.model).start(slot);
                let ok = dev.write(slot as u64 * sh.stride, &block(writer, slot, seq), fua).await.is_ok();
                lock(&sh.model).end(slot, seq, ok);
            }
            Op::Flush => {
                let _ = dev.flush().await;
            }
            Op::Read { slot } => {
                let mut buf = vec![0u8; SLOT];
                let t0 = Instant::now();
                if dev.read(slot as u64 * sh.stride, &mut buf).await.is_ok() {
                    let t1 = Instant::now();
                    if let Err(e) = lock(&sh.model).check(slot, t0, t1, &buf) {
                        sh.violation(format!("while running: {e}"));
                    }
                }
            }
        }
    }
}

struct Engine(Rc<Vdi>);

impl Device for Engine {
    async fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<(), String> {
        self.0.write(offset, data, fua).await.map_err(|e| e.to_string())
    }
    async fn flush(&mut self) -> Result<(), String> {
        self.0.flush().await.map_err(|e| e.to_string())
    }
    async fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        self.0.read(offset, buf).await.map_err(|e| e.to_string())
    }
}

/// The groupd client of a long-running test client: it waits for groupd through failovers.
pub fn group_client(groupds: &[String]) -> Rc<GroupClient> {
    let opts = Options { wait_for_groupd: true, retry_for: Duration::from_secs(30), ..Options::default() };
    Rc::new(GroupClient::new(groupds.to_vec(), opts).expect("groupd addresses"))
}

/// Writes to VDI `name` through the engine, under its lock, until told to stop.
pub fn engine_writer(groupds: Vec<String>, name: String, sh: Shared, seed: u64) -> JoinHandle<()> {
    std::thread::spawn(move || {
        crate::block_on(async move {
            let group = group_client(&groupds);
            let lock = match AttachLock::acquire(group.clone(), &name, "chaos engine writer").await {
                Ok(l) => l,
                Err(e) => return sh.violation(format!("engine writer: cannot lock {name}: {e}")),
            };
            // An open that fails with a clear error (e.g. its inode waits for nodes that are
            // down and may hold a newer copy) is what the contract allows: try again until
            // the run ends. Only what is read back can violate it.
            while !sh.stopped() {
                let opened = match Cluster::connect(group.clone(), CallLimits::default()).await {
                    Ok(cluster) => {
                        Vdi::open(cluster, &name, VdiOptions { fence: lock.token(), ..VdiOptions::default() }).await
                    }
                    Err(e) => Err(e),
                };
                match opened {
                    Ok(vdi) => {
                        run_ops(&mut Engine(Rc::new(vdi)), &sh, seed).await;
                        break;
                    }
                    Err(e) => {
                        eprintln!("chaos: engine writer: cannot open {name} yet ({e}); trying again");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
            lock.release().await;
        })
    })
}

struct Nbd {
    addr: String,
    name: String,
    conn: Option<NbdClient>,
    sh: Shared,
}

impl Nbd {
    /// The connection, made again if the last one broke (which is a violation: the export
    /// must answer every request, if only with an error).
    fn conn(&mut self) -> Result<&mut NbdClient, String> {
        if self.conn.is_none() {
            let c = NbdClient::connect(&self.addr, &self.name, Duration::from_secs(120)).map_err(|e| e.to_string())?;
            self.conn = Some(c);
        }
        Ok(self.conn.as_mut().expect("connected"))
    }

    fn done<T>(&mut self, r: Result<T, crate::nbd_client::NbdError>) -> Result<T, String> {
        match r {
            Ok(v) => Ok(v),
            Err(crate::nbd_client::NbdError::Refused(e)) => Err(format!("error {e}")),
            Err(crate::nbd_client::NbdError::Io(e)) => {
                self.conn = None;
                self.sh.violation(format!("the NBD export broke its connection: {e}"));
                Err(e.to_string())
            }
        }
    }
}

impl Device for Nbd {
    async fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<(), String> {
        let r = self.conn()?.write(offset, data, fua);
        self.done(r)
    }
    async fn flush(&mut self) -> Result<(), String> {
        let r = self.conn()?.flush();
        self.done(r)
    }
    async fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let r = self.conn()?.read(offset, buf);
        self.done(r)
    }
}

/// Writes to export `name` at `addr` (`ip:port`) until told to stop.
pub fn nbd_writer(addr: String, name: String, sh: Shared, seed: u64) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut dev = Nbd { addr, name, conn: None, sh: sh.clone() };
        futures::executor::block_on(run_ops(&mut dev, &sh, seed));
        if let Some(c) = dev.conn.take() {
            let _ = c.disconnect();
        }
    })
}
