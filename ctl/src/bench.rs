//! `sheepctl bench`: random 4 KiB and sequential 1 MiB jobs through the VDI engine, the
//! same shapes as `ci/bench` gives fio, with the CPU time per operation of this process and
//! of any others named (the cluster's daemons on this host).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Result};
use futures::future::try_join_all;
use serde::Serialize;
use sheep_client::vdi::Vdi;
use sheep_core::size::format_size;
use tokio::time::Instant;

use crate::cli::BenchArgs;
use crate::cpu::{self, ProcessCpu};
use crate::output::{print_json, table};

/// One job: what fio would call rw, bs and iodepth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Job {
    pub name: &'static str,
    pub write: bool,
    pub random: bool,
    pub bs: usize,
    pub qd: usize,
}

pub const JOBS: &[Job] = &[
    Job { name: "seqwrite", write: true, random: false, bs: 1 << 20, qd: 8 },
    Job { name: "randwrite1", write: true, random: true, bs: 4096, qd: 1 },
    Job { name: "randwrite32", write: true, random: true, bs: 4096, qd: 32 },
    Job { name: "randread1", write: false, random: true, bs: 4096, qd: 1 },
    Job { name: "randread32", write: false, random: true, bs: 4096, qd: 32 },
    Job { name: "seqread", write: false, random: false, bs: 1 << 20, qd: 8 },
];

/// Parses "a,b,c" into jobs, in that order.
pub fn parse_jobs(list: &str) -> Result<Vec<Job>> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match JOBS.iter().find(|j| j.name == name) {
            Some(j) => out.push(*j),
            None => {
                let known: Vec<&str> = JOBS.iter().map(|j| j.name).collect();
                bail!("unknown bench job {name:?} (known: {})", known.join(", "))
            }
        }
    }
    if out.is_empty() {
        bail!("no bench job given");
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct JobResult {
    pub job: String,
    pub bs: usize,
    pub qd: usize,
    pub ops: u64,
    pub seconds: f64,
    pub iops: f64,
    pub mb_per_s: f64,
    pub lat_avg_us: f64,
    /// CPU time per operation of every process measured (sheepctl first), and their sum:
    /// set together by [`JobResult::set_cpu`].
    cpu: Vec<ProcessCpu>,
    cpu_us_per_op: f64,
}

impl JobResult {
    fn set_cpu(&mut self, cpu: Vec<ProcessCpu>) {
        self.cpu_us_per_op = cpu.iter().map(|c| c.us_per_op).sum();
        self.cpu = cpu;
    }
}

/// xorshift64*: a fast, good enough generator of offsets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Runs `job` on the first `region` bytes of `vdi` for `runtime`.
pub async fn run_job(vdi: &Rc<Vdi>, job: Job, region: u64, runtime: Duration) -> Result<JobResult> {
    let blocks = region / job.bs as u64;
    if blocks == 0 {
        bail!("the bench region ({region} bytes) is smaller than one block of {}", job.bs);
    }
    let started = Instant::now();
    let end = started + runtime;
    let next_seq = Rc::new(Cell::new(0u64));
    let ops = Rc::new(Cell::new(0u64));
    let lat = Rc::new(Cell::new(Duration::ZERO));
    let workers = (0..job.qd).map(|w| {
        let (vdi, next_seq, ops, lat) = (vdi.clone(), next_seq.clone(), ops.clone(), lat.clone());
        async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03));
            let mut buf = vec![0u8; job.bs];
            if job.write {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = (i as u8).wrapping_mul(31).wrapping_add(w as u8) | 1;
                }
            }
            while Instant::now() < end {
                let block = if job.random {
                    rng.next() % blocks
                } else {
                    let b = next_seq.get();
                    next_seq.set((b + 1) % blocks);
                    b
                };
                let offset = block * job.bs as u64;
                let t = Instant::now();
                if job.write {
                    vdi.write(offset, &buf, false).await?;
                } else {
                    vdi.read(offset, &mut buf).await?;
                }
                lat.set(lat.get() + t.elapsed());
                ops.set(ops.get() + 1);
            }
            anyhow::Ok(())
        }
    });
    try_join_all(workers).await?;
    if job.write {
        vdi.flush().await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let n = ops.get();
    Ok(JobResult {
        job: job.name.to_string(),
        bs: job.bs,
        qd: job.qd,
        ops: n,
        seconds,
        iops: n as f64 / seconds,
        mb_per_s: (n as f64 * job.bs as f64) / seconds / 1e6,
        lat_avg_us: if n == 0 { 0.0 } else { lat.get().as_secs_f64() * 1e6 / n as f64 },
        cpu: Vec::new(),
        cpu_us_per_op: 0.0,
    })
}

/// Writes every not yet written object of the region once, so that the jobs measure
/// steady-state I/O rather than first writes.
async fn prefill(vdi: &Rc<Vdi>, region: u64) -> Result<()> {
    let os = vdi.object_size();
    let chunk = os.min(1 << 20);
    let buf = vec![0x5au8; chunk as usize];
    let todo: Vec<u64> = (0..region.div_ceil(os))
        .filter(|&i| !vdi.is_written(i as u32))
        .flat_map(|i| (0..os / chunk).map(move |k| i * os + k * chunk))
        .filter(|&off| off + chunk <= region)
        .collect();
    let next = Rc::new(Cell::new(0usize));
    let todo = Rc::new(todo);
    let workers = (0..8).map(|_| {
        let (vdi, next, todo, buf) = (vdi.clone(), next.clone(), todo.clone(), &buf);
        async move {
            loop {
                let i = next.get();
                let Some(&off) = todo.get(i) else { break };
                next.set(i + 1);
                vdi.write(off, buf, false).await?;
            }
            anyhow::Ok(())
        }
    });
    try_join_all(workers).await?;
    vdi.flush().await?;
    Ok(())
}

pub async fn run(groupd: &str, args: &BenchArgs, json: bool) -> Result<()> {
    let jobs = parse_jobs(&args.jobs)?;
    // Every process to measure must be there before anything is created.
    cpu::sample_all(&args.cpu_of)?;
    let group = crate::client(groupd)?;
    let (vdis, _) = group.vdi_list().await?;
    let created = if vdis.iter().any(|v| v.name == args.name) {
        false
    } else {
        let size = args.size.div_ceil(512) * 512;
        group.vdi_create(&args.name, size, 0).await?;
        true
    };
    let result = bench(groupd, args, &jobs, json).await;
    if created {
        if let Err(e) = group.vdi_delete(&args.name).await {
            eprintln!("warning: could not delete the bench VDI {}: {e}", args.name);
        }
    }
    result
}

async fn bench(groupd: &str, args: &BenchArgs, jobs: &[Job], json: bool) -> Result<()> {
    let vdi = crate::vdi_io::open(groupd, &args.name).await?;
    let region = args.size.min(vdi.size());
    if !json {
        eprintln!(
            "bench on VDI {} ({} region, {} s per job): prefilling",
            args.name,
            format_size(region),
            args.runtime
        );
    }
    prefill(&vdi, region).await?;
    let mut results = Vec::new();
    for job in jobs {
        let before = cpu::sample_all(&args.cpu_of)?;
        let mut r = run_job(&vdi, *job, region, Duration::from_secs(args.runtime)).await?;
        r.set_cpu(cpu::per_op(&before, &cpu::sample_all(&args.cpu_of)?, r.ops));
        if !json {
            eprintln!(
                "{:<12} {:>10.0} IOPS {:>9.1} MB/s {:>8.0} us CPU/op",
                r.job, r.iops, r.mb_per_s, r.cpu_us_per_op
            );
        }
        results.push(r);
    }
    if json {
        return print_json(&results);
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.job.clone(),
                format_size(r.bs as u64),
                r.qd.to_string(),
                format!("{:.0}", r.iops),
                format!("{:.1}", r.mb_per_s),
                format!("{:.0}", r.lat_avg_us),
                format!("{:.0}", r.cpu_us_per_op),
            ]
        })
        .collect();
    print!("{}", table("", &["JOB", "BS", "QD", "IOPS", "MB/S", "LAT(us)", "CPU/OP(us)"], &rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_parse_in_order() {
        let j = parse_jobs("randread32, seqwrite").unwrap();
        assert_eq!(j.iter().map(|j| j.name).collect::<Vec<_>>(), vec!["randread32", "seqwrite"]);
        assert!(parse_jobs("nope").is_err());
        assert!(parse_jobs(",").is_err());
    }

    #[test]
    fn rng_spreads() {
        let mut r = Rng(1);
        let mut seen = [false; 16];
        for _ in 0..1000 {
            seen[(r.next() % 16) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
