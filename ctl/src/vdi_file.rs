//! `sheepctl vdi import` and `vdi export`: a whole VDI to or from a local file, sparse-aware,
//! with a progress bar when stderr is a terminal.

use std::fs::File;
use std::io::IsTerminal;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sheep_client::vdi::sparse::{data_extents, is_zero};
use sheep_client::vdi::Vdi;
use sheep_core::size::format_size;

use crate::output::print_json;
use crate::vdi_io::{chunks, open_with, IN_FLIGHT};

/// The granularity of zero detection on import.
const BLOCK: usize = 4096;

#[derive(Serialize)]
struct Summary {
    vdi: String,
    file: String,
    /// Bytes covered (the file's length on import, the VDI's size on export).
    bytes: u64,
    /// Bytes actually sent to or written from the cluster.
    data_bytes: u64,
    seconds: f64,
}

fn progress(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

/// `vdi import NAME FILE`: the file's bytes at the VDI's start. All-zero blocks of objects
/// never written are skipped (they read as zeros already); an object written before is
/// written whole, zeros included.
pub async fn import(groupd: &str, name: &str, path: &Path, json: bool) -> Result<()> {
    crate::vdi_lock::with_lock(groupd, name, "vdi import", |vdi| import_into(vdi, name, path, json)).await
}

/// `import` into `vdi`, opened under its lock.
async fn import_into(vdi: Rc<Vdi>, name: &str, path: &Path, json: bool) -> Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file_len(&file).with_context(|| format!("cannot read the size of {}", path.display()))?;
    if len > vdi.size() {
        return Err(too_big(&path.display().to_string(), len, &vdi));
    }
    let started = Instant::now();
    let bar = progress(len, "import");
    let object_shift = vdi.entry().object_size_shift;
    let sent: u64 = stream::iter(chunks(0, len))
        .map(|(off, n)| {
            let (vdi, file, bar) = (vdi.clone(), &file, bar.clone());
            async move {
                let mut buf = vec![0u8; n];
                file.read_exact_at(&mut buf, off).with_context(|| format!("reading {}", path.display()))?;
                let idx = (off >> object_shift) as u32;
                let mut sent = 0u64;
                if vdi.is_written(idx) {
                    vdi.write(off, &buf, false).await?;
                    sent += n as u64;
                } else {
                    for (start, l) in data_extents(&buf, BLOCK) {
                        vdi.write(off + start as u64, &buf[start..start + l], false).await?;
                        sent += l as u64;
                    }
                }
                bar.inc(n as u64);
                anyhow::Ok(sent)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
        .await?;
    vdi.flush().await?;
    bar.finish_and_clear();
    report(json, "imported", name, path, len, sent, started)
}

/// `vdi export NAME FILE`: the whole VDI into FILE (created or truncated), never-written
/// and all-zero ranges left as holes.
pub async fn export(groupd: &str, name: &str, path: &Path, from: &crate::cli::ReplicaArg, json: bool) -> Result<()> {
    let vdi = open_with(groupd, name, from).await?;
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let size = vdi.size();
    let is_regular = file.metadata().map(|m| m.file_type().is_file()).unwrap_or(false);
    if is_regular {
        file.set_len(size).with_context(|| format!("cannot size {}", path.display()))?;
    }
    let started = Instant::now();
    let bar = progress(size, "export");
    let object_shift = vdi.entry().object_size_shift;
    let written: u64 = stream::iter(chunks(0, size))
        .map(|(off, n)| {
            let (vdi, file, bar) = (vdi.clone(), &file, bar.clone());
            async move {
                let idx = (off >> object_shift) as u32;
                let mut out = 0u64;
                if vdi.is_written(idx) {
                    let mut buf = vec![0u8; n];
                    vdi.read(off, &mut buf).await?;
                    if !is_regular || !is_zero(&buf) {
                        file.write_all_at(&buf, off).with_context(|| format!("writing {}", path.display()))?;
                        out = n as u64;
                    }
                } else if !is_regular {
                    file.write_all_at(&vec![0u8; n], off).with_context(|| format!("writing {}", path.display()))?;
                }
                bar.inc(n as u64);
                anyhow::Ok(out)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
        .await?;
    file.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    bar.finish_and_clear();
    report(json, "exported", name, path, size, written, started)
}

/// A regular file's length, or a block device's size.
fn file_len(file: &File) -> std::io::Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_file() {
        return Ok(meta.len());
    }
    let mut f = file.try_clone()?;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0))
}

fn report(json: bool, verb: &str, name: &str, path: &Path, bytes: u64, data: u64, started: Instant) -> Result<()> {
    let seconds = started.elapsed().as_secs_f64();
    if json {
        return print_json(&Summary {
            vdi: name.into(),
            file: path.display().to_string(),
            bytes,
            data_bytes: data,
            seconds,
        });
    }
    let rate =
        if seconds > 0.0 { format!(", {}/s", format_size((bytes as f64 / seconds) as u64)) } else { String::new() };
    let (from, to) = if verb == "imported" {
        (path.display().to_string(), name.to_string())
    } else {
        (name.to_string(), path.display().to_string())
    };
    println!("{verb} {from} to {to}: {} ({} of data) in {seconds:.1} s{rate}", format_size(bytes), format_size(data));
    Ok(())
}

/// An error for a file that does not fit.
pub fn too_big(what: &str, len: u64, vdi: &Vdi) -> anyhow::Error {
    anyhow!(
        "{what} is {len} bytes ({}), larger than VDI {} ({} bytes, {})",
        format_size(len),
        vdi.entry().name,
        vdi.size(),
        format_size(vdi.size())
    )
}
