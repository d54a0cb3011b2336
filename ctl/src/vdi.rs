//! `sheepctl vdi …`: the VDI namespace (through groupd) and the VDI's bytes (through the
//! engine of the client crate).

use std::io::Write;
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;
use sheep_client::vdi::{reclaim, CallLimits, Cluster, Vdi};
use sheep_core::namespace::VdiEntry;
use sheep_core::object::validate_vdi_name;
use sheep_core::size::format_size;

use crate::cli::{ObjectCmd, RangeArgs, ReplicaArg, VdiCmd};
use crate::output::{list, print_json, table};
use crate::vdi_family::{incomplete, removed, Deleted};
use crate::vdi_io::{chunks, open, open_with, IN_FLIGHT};

/// A VDI as `vdi list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VdiRow {
    pub name: String,
    /// 6 hex digits, as Sheepdog shows them.
    pub vid: String,
    pub size: u64,
    pub copies: u8,
    pub object_size: u64,
    pub created_ms: u64,
}

impl From<&VdiEntry> for VdiRow {
    fn from(v: &VdiEntry) -> Self {
        VdiRow {
            name: v.name.clone(),
            vid: v.vid.to_string(),
            size: v.size,
            copies: v.copies,
            object_size: 1 << v.object_size_shift,
            created_ms: v.created_ms,
        }
    }
}

pub async fn run(groupd: &str, cmd: &VdiCmd, json: bool) -> Result<()> {
    match cmd {
        VdiCmd::Create { name, size, copies, allow_fewer_zones } => {
            validate_vdi_name(name)?;
            let client = crate::client(groupd)?;
            let v = client.vdi_create_with(name, *size, copies.unwrap_or(0), *allow_fewer_zones).await?;
            if json {
                return print_json(&VdiRow::from(&v));
            }
            println!("created VDI {} (id {}, {}, {} copies)", v.name, v.vid, format_size(v.size), v.copies);
            Ok(())
        }
        VdiCmd::List => crate::vdi_family::list(groupd, json).await,
        VdiCmd::Stat { name, args } => crate::io_stat::vdi(groupd, name.as_deref(), args, json).await,
        VdiCmd::Delete { name, snapshot: Some(tag) } => {
            crate::vdi_family::delete_snapshot(groupd, name, tag, json).await
        }
        VdiCmd::Delete { name, snapshot: None } => delete_vdi(groupd, name, json).await,
        VdiCmd::Snapshot { name, tag } => crate::vdi_family::snapshot(groupd, name, tag, json).await,
        VdiCmd::Clone { name, snapshot, new_name } => {
            crate::vdi_family::clone(groupd, name, snapshot, new_name, json).await
        }
        VdiCmd::Rollback { name, snapshot } => crate::vdi_family::rollback(groupd, name, snapshot, json).await,
        VdiCmd::Resize { name, size } => crate::vdi_family::resize(groupd, name, *size, json).await,
        VdiCmd::Tree => crate::vdi_family::tree(groupd, json).await,
        VdiCmd::Setattr { name, key, value, exclusive, delete } => {
            crate::vdi_family::setattr(groupd, name, key, value.as_deref(), *exclusive, *delete).await
        }
        VdiCmd::Getattr { name, key, raw } => crate::vdi_family::getattr(groupd, name, key, *raw).await,
        VdiCmd::Read(r) => read(groupd, &r.range, &r.replica).await,
        VdiCmd::Write(r) => crate::vdi_lock::with_lock(groupd, &r.name, "vdi write", |vdi| write(vdi, r)).await,
        VdiCmd::Import(f) => crate::vdi_file::import(groupd, &f.name, &f.file, json).await,
        VdiCmd::Export(e) => crate::vdi_file::export(groupd, &e.file.name, &e.file.file, &e.replica, json).await,
        VdiCmd::Object(ObjectCmd::Map { name }) => map(groupd, name, json).await,
        VdiCmd::Lock(l) => crate::vdi_lock::run(groupd, l, json).await,
        VdiCmd::Check(a) => crate::check::vdi(groupd, a, json).await,
    }
}

/// `vdi delete NAME`: the working VDI and every snapshot of it. The storage nodes remove
/// the objects of those nothing descends from; what a clone still descends from stays, less
/// the objects no live VDI reads, removed here.
async fn delete_vdi(groupd: &str, name: &str, json: bool) -> Result<()> {
    validate_vdi_name(name)?;
    let group = Rc::new(crate::client(groupd)?);
    let cluster = Cluster::connect(group.clone(), CallLimits::default()).await?;
    let (v, r) = reclaim::deleting(&cluster, |e| e.name == name, || group.vdi_delete(name)).await?;
    if json {
        let row = VdiRow::from(&v);
        print_json(&Deleted { entry: &row, objects_removed: r.removed, incomplete: r.incomplete.as_deref() })?;
    } else {
        println!(
            "deleted VDI {} with its snapshots (id {}); {}, the storage nodes remove the rest",
            v.name,
            v.vid,
            removed(&r)
        );
    }
    incomplete(&r, &format!("VDI {} is deleted", v.name))
}

/// `offset`/`len` checked against the VDI: the length to use.
pub fn check_range(vdi: &Vdi, offset: u64, len: Option<u64>) -> Result<u64> {
    let size = vdi.size();
    if offset > size {
        bail!("offset {offset} is past the end of VDI {} ({size} bytes, {})", vdi.entry().name, format_size(size));
    }
    let len = len.unwrap_or(size - offset);
    if offset.checked_add(len).is_none_or(|end| end > size) {
        bail!(
            "offset {offset} + length {len} is past the end of VDI {} ({size} bytes, {})",
            vdi.entry().name,
            format_size(size)
        );
    }
    Ok(len)
}

/// `vdi read NAME [OFFSET [LEN]]`: to stdout, in order, several chunks in flight.
async fn read(groupd: &str, r: &RangeArgs, from: &ReplicaArg) -> Result<()> {
    let vdi = open_with(groupd, &r.name, from).await?;
    let len = check_range(&vdi, r.offset, r.len)?;
    let mut out = std::io::stdout().lock();
    let mut reads = stream::iter(chunks(r.offset, len))
        .map(|(off, n)| {
            let vdi = vdi.clone();
            async move {
                let mut buf = vec![0u8; n];
                vdi.read(off, &mut buf).await.map(|()| buf)
            }
        })
        .buffered(IN_FLIGHT);
    while let Some(buf) = reads.try_next().await? {
        out.write_all(&buf).context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")?;
    Ok(())
}

/// Up to `n` bytes of stdin (fewer only at its end), read on the blocking pool so that the
/// writes in flight go on meanwhile.
pub async fn read_stdin(n: usize) -> std::io::Result<Vec<u8>> {
    let task = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; n];
        let mut stdin = std::io::stdin().lock();
        let mut got = 0;
        while got < n {
            match std::io::Read::read(&mut stdin, &mut buf[got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(got);
        Ok(buf)
    });
    task.await.map_err(std::io::Error::other)?
}

/// `vdi write NAME [OFFSET [LEN]]`: from stdin, several chunks in flight, then a flush;
/// `vdi` is opened under its lock (see `vdi_lock::with_lock`).
async fn write(vdi: Rc<Vdi>, r: &RangeArgs) -> Result<()> {
    let size = vdi.size();
    let max = check_range(&vdi, r.offset, r.len)?;
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut written = 0u64;
    for (off, n) in chunks(r.offset, max) {
        let buf = read_stdin(n).await.context("reading stdin")?;
        let got = buf.len();
        if got > 0 {
            let vdi = vdi.clone();
            pending.push(async move { vdi.write(off, &buf, false).await.map(|()| buf.len() as u64) });
        }
        while pending.len() >= IN_FLIGHT {
            written += pending.try_next().await?.unwrap_or(0);
        }
        if got < n {
            break;
        }
    }
    while let Some(n) = pending.try_next().await? {
        written += n;
    }
    vdi.flush().await?;
    if let Some(len) = r.len {
        if written < len {
            bail!("stdin ended after {written} of the {len} bytes asked for (those were written)");
        }
    } else if r.offset + written == size {
        // Everything fitted exactly: check there is nothing more.
        if !read_stdin(1).await.context("reading stdin")?.is_empty() {
            bail!(
                "stdin holds more than fits in VDI {} from offset {} ({size} bytes): the first {written} bytes \
                were written",
                r.name,
                r.offset
            );
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct ObjectRow {
    index: u32,
    oid: String,
    nodes: Vec<String>,
}

#[derive(Serialize)]
struct ObjectMap {
    vdi: String,
    vid: String,
    epoch: u32,
    inode: ObjectRow,
    objects: Vec<ObjectRow>,
}

/// `vdi object map NAME`: the written objects and where they are in the current epoch.
async fn map(groupd: &str, name: &str, json: bool) -> Result<()> {
    let vdi = open(groupd, name).await?;
    let ids = |oid| vdi.replicas(oid).into_iter().map(|n| n.id).collect::<Vec<_>>();
    let inode = vdi.inode_oid();
    let objects: Vec<ObjectRow> = (0..vdi.max_objects())
        .filter_map(|idx| vdi.data_oid(idx).map(|oid| ObjectRow { index: idx, oid: oid.to_string(), nodes: ids(oid) }))
        .collect();
    let m = ObjectMap {
        vdi: name.to_string(),
        vid: vdi.vid().to_string(),
        epoch: vdi.cluster().epoch(),
        inode: ObjectRow { index: 0, oid: inode.to_string(), nodes: ids(inode) },
        objects,
    };
    if json {
        return print_json(&m);
    }
    println!(
        "VDI {} (id {}), epoch {}: {} of {} objects written; inode {} on {}",
        m.vdi,
        m.vid,
        m.epoch,
        m.objects.len(),
        vdi.max_objects(),
        m.inode.oid,
        list(&m.inode.nodes)
    );
    if !m.objects.is_empty() {
        let rows: Vec<Vec<String>> =
            m.objects.iter().map(|o| vec![o.index.to_string(), o.oid.clone(), list(&o.nodes)]).collect();
        print!("{}", table("", &["INDEX", "OID", "NODES"], &rows));
    }
    Ok(())
}
