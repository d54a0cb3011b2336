//! `sheepctl vdi import` and `vdi export`: a whole VDI to or from a local file, sparse-aware,
//! with a progress bar when stderr is a terminal.

use std::collections::BTreeSet;
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
use sheep_client::vdi::sparse::data_extents;
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
    /// The data carried: on import the bytes written to the VDI (its non-zero 4 KiB blocks,
    /// and the whole range of an object written before, whose old data zeros must replace);
    /// on export the non-zero 4 KiB blocks of the VDI's written objects, the only bytes
    /// written to a regular file (the rest are holes). A fresh import and its export agree.
    data_bytes: u64,
    /// The objects those bytes are in.
    objects: usize,
    seconds: f64,
}

/// What an import or export carried: bytes, and the object indexes they are in.
#[derive(Default)]
struct Carried {
    bytes: u64,
    objects: BTreeSet<u32>,
}

impl Carried {
    /// Counts `len` bytes at VDI offset `off`.
    fn add(&mut self, off: u64, len: usize, object_shift: u8) {
        if len == 0 {
            return;
        }
        self.bytes += len as u64;
        let (first, last) = (off >> object_shift, (off + len as u64 - 1) >> object_shift);
        self.objects.extend((first..=last).map(|i| i as u32));
    }

    fn merge(mut self, other: Carried) -> Carried {
        self.bytes += other.bytes;
        self.objects.extend(other.objects);
        self
    }
}

/// The pieces `(start, len, object index)` of the `n` bytes at VDI offset `off`, split where
/// objects end: a chunk may span several objects (1 MiB objects), each written or not.
fn pieces(off: u64, n: usize, object_shift: u8) -> Vec<(usize, usize, u32)> {
    let mut out = Vec::new();
    let mut start = 0usize;
    while start < n {
        let pos = off + start as u64;
        let object_end = ((pos >> object_shift) + 1) << object_shift;
        let len = (object_end - pos).min((n - start) as u64) as usize;
        out.push((start, len, (pos >> object_shift) as u32));
        start += len;
    }
    out
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
    let sent: Carried = stream::iter(chunks(0, len))
        .map(|(off, n)| {
            let (vdi, file, bar) = (vdi.clone(), &file, bar.clone());
            async move {
                let mut buf = vec![0u8; n];
                file.read_exact_at(&mut buf, off).with_context(|| format!("reading {}", path.display()))?;
                let mut sent = Carried::default();
                for (p, l, idx) in pieces(off, n, object_shift) {
                    let piece = &buf[p..p + l];
                    if vdi.is_written(idx) {
                        vdi.write(off + p as u64, piece, false).await?;
                        sent.add(off + p as u64, l, object_shift);
                    } else {
                        for (start, l) in data_extents(piece, BLOCK) {
                            let at = off + (p + start) as u64;
                            vdi.write(at, &piece[start..start + l], false).await?;
                            sent.add(at, l, object_shift);
                        }
                    }
                }
                bar.inc(n as u64);
                anyhow::Ok(sent)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_fold(Carried::default(), |acc, c| async move { Ok(acc.merge(c)) })
        .await?;
    vdi.flush().await?;
    bar.finish_and_clear();
    report(json, "imported", name, path, len, &sent, started)
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
    let written: Carried = stream::iter(chunks(0, size))
        .map(|(off, n)| {
            let (vdi, file, bar) = (vdi.clone(), &file, bar.clone());
            async move {
                let mut out = Carried::default();
                let mut buf = vec![0u8; n];
                if pieces(off, n, object_shift).iter().any(|&(_, _, idx)| vdi.is_written(idx)) {
                    // Never-written objects in it read as zeros, without I/O.
                    vdi.read(off, &mut buf).await?;
                }
                let extents = data_extents(&buf, BLOCK);
                for &(start, l) in &extents {
                    out.add(off + start as u64, l, object_shift);
                }
                let write = |at: usize, bytes: &[u8]| {
                    file.write_all_at(bytes, off + at as u64).with_context(|| format!("writing {}", path.display()))
                };
                if is_regular {
                    // The file is all holes already: only the data goes in.
                    for (start, l) in extents {
                        write(start, &buf[start..start + l])?;
                    }
                } else {
                    write(0, &buf)?;
                }
                bar.inc(n as u64);
                anyhow::Ok(out)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_fold(Carried::default(), |acc, c| async move { Ok(acc.merge(c)) })
        .await?;
    file.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    bar.finish_and_clear();
    report(json, "exported", name, path, size, &written, started)
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

fn report(json: bool, verb: &str, name: &str, path: &Path, bytes: u64, data: &Carried, started: Instant) -> Result<()> {
    let seconds = started.elapsed().as_secs_f64();
    if json {
        return print_json(&Summary {
            vdi: name.into(),
            file: path.display().to_string(),
            bytes,
            data_bytes: data.bytes,
            objects: data.objects.len(),
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
    println!("{verb} {from} to {to}: {}{rate}", summary_line(bytes, data.bytes, data.objects.len(), seconds));
    Ok(())
}

/// "16.0 MiB (8.0 KiB of data in 1 object(s)) in 0.2 s".
fn summary_line(bytes: u64, data: u64, objects: usize, seconds: f64) -> String {
    format!("{} ({} of data in {objects} object(s)) in {seconds:.1} s", format_size(bytes), format_size(data))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_where_objects_end() {
        const MIB: u64 = 1 << 20;
        // 4 MiB objects: a 4 MiB chunk is one object.
        assert_eq!(pieces(8 * MIB, 4 << 20, 22), vec![(0, 4 << 20, 2)]);
        // 1 MiB objects: four.
        let p = pieces(4 * MIB, 4 << 20, 20);
        assert_eq!(p, vec![(0, 1 << 20, 4), (1 << 20, 1 << 20, 5), (2 << 20, 1 << 20, 6), (3 << 20, 1 << 20, 7)]);
        // Ragged ends, and nothing.
        assert_eq!(pieces(MIB - 10, 20, 20), vec![(0, 10, 0), (10, 10, 1)]);
        assert!(pieces(0, 0, 22).is_empty());
    }

    #[test]
    fn carried_counts_bytes_and_the_objects_they_are_in() {
        let mut c = Carried::default();
        c.add(0, 4096, 22);
        c.add(8192, 4096, 22);
        c.add(4 << 20, 0, 22);
        assert_eq!((c.bytes, c.objects.len()), (8192, 1));
        let mut d = Carried::default();
        d.add((4 << 20) - 4096, 8192, 22);
        let c = c.merge(d);
        assert_eq!((c.bytes, c.objects.iter().copied().collect::<Vec<_>>()), (16384, vec![0, 1]));
        assert_eq!(summary_line(16 << 20, 8192, 1, 0.25), "16.0 MiB (8.0 KiB of data in 1 object(s)) in 0.2 s");
    }
}
