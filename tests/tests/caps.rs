//! Per-client capabilities on real processes: a client added with `auth add --caps` reads and
//! writes the VDIs its capabilities name and nothing else, through sheepctl and by talking
//! to a storaged directly (its ticket is checked on every object request); its refusals name
//! the capability; the administrator's commands are refused to it; `auth caps` changes what
//! it may do; `auth rm` revokes it at groupd at once and at storage nodes within the ticket
//! lifetime; a client removed and added again gets a new key, and the old one stays dead.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use sheep_core::auth::caps::Access;
use sheep_core::auth::keyring::Keyring;
use sheep_core::auth::ticket::Ticket;
use sheep_core::object::{ObjectId, VdiId};
use sheep_rpc::error::{self, ErrorCode};
use sheep_rpc::groupd_capnp::groupd;
use sheep_rpc::storaged_capnp::storaged;
use sheep_tests::nbd::{listen_addr, qemu_io_ok, url_or_exit};
use sheep_tests::{wait_until, Cluster, Daemon};

/// The ticket lifetime of this test's groupd: the bound on a revocation at storage nodes.
const TICKET_SECS: u64 = 4;

/// sheepctl as the client of `keyring`, with `input` on its stdin.
fn as_client(c: &Cluster, keyring: &Path, args: &[&str], input: &[u8]) -> Output {
    c.ctl_as(keyring, args, input)
}

fn refused(out: &Output, says: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "should have been refused, saying {says:?}; stdout: {}", show(&out.stdout));
    assert!(err.contains(says), "the refusal should say {says:?}: {err}");
    err
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", show(&out.stderr));
    show(&out.stdout)
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn vid_of(c: &Cluster, name: &str) -> VdiId {
    let out = c.ctl_ok(&["--json", "vdi", "list"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("vdi list JSON");
    let list = v.as_array().or_else(|| v["vdis"].as_array()).expect("a list of VDIs");
    let e = list
        .iter()
        .find(|e| e["name"] == name && (e["snapshot"].is_null() || e["snapshot"] == ""))
        .unwrap_or_else(|| panic!("{name} in {out}"));
    let raw = e["vid"].as_u64().or_else(|| e["vid"].as_str().and_then(|s| u64::from_str_radix(s, 16).ok()));
    VdiId::new(raw.expect("a vid") as u32).unwrap()
}

/// What a storaged answers a call made as the client of `keyring` showing `ticket`: the
/// error code of the refusal and its message (None, "": accepted, or refused otherwise).
fn direct_read(addr: &str, keyring: &Keyring, ticket: &[u8], epoch: u32, oid: ObjectId) -> (Option<ErrorCode>, String) {
    run_local(async {
        let conn = match sheep_client::rpc::connect_as::<storaged::Client>(
            addr,
            Duration::from_secs(5),
            keyring,
            ticket,
        )
        .await
        {
            Ok(c) => c,
            Err(e) => return (None, format!("connection refused: {e}")),
        };
        let mut req = conn.client().read_request();
        req.get().set_epoch(epoch);
        req.get().set_oid(oid.raw());
        req.get().set_offset(0);
        req.get().set_length(512);
        match req.send().promise.await {
            Ok(_) => (None, String::new()),
            Err(e) => (error::code_of(&e), error::message_of(&e).to_string()),
        }
    })
}

fn direct_write(
    addr: &str,
    keyring: &Keyring,
    ticket: &[u8],
    epoch: u32,
    oid: ObjectId,
) -> (Option<ErrorCode>, String) {
    run_local(async {
        let conn = sheep_client::rpc::connect_as::<storaged::Client>(addr, Duration::from_secs(5), keyring, ticket)
            .await
            .expect("connect with a ticket");
        let mut req = conn.client().write_request();
        req.get().set_epoch(epoch);
        req.get().set_oid(oid.raw());
        req.get().set_offset(0);
        req.get().set_data(b"overwritten by someone without the right");
        match req.send().promise.await {
            Ok(_) => (None, String::new()),
            Err(e) => (error::code_of(&e), error::message_of(&e).to_string()),
        }
    })
}

fn ticket_of(groupd_addr: &str, keyring: &Keyring) -> Result<Vec<u8>, String> {
    run_local(async {
        let conn =
            sheep_client::rpc::connect_as::<groupd::Client>(groupd_addr, Duration::from_secs(5), keyring, &[]).await?;
        let resp = conn.client().ticket_request().send().promise.await.map_err(|e| e.to_string())?;
        Ok(resp.get().map_err(|e| e.to_string())?.get_ticket().map_err(|e| e.to_string())?.to_vec())
    })
}

/// A groupd's answer to keepalive (`close`: closeSession) of `session`, called as the client
/// of `keyring`: the refusal's code and message (None, "": accepted).
fn session_call(addr: &str, keyring: &Keyring, session: u64, close: bool) -> (Option<ErrorCode>, String) {
    run_local(async {
        let conn = sheep_client::rpc::connect_as::<groupd::Client>(addr, Duration::from_secs(5), keyring, &[])
            .await
            .expect("connect to groupd");
        let sent = if close {
            let mut req = conn.client().close_session_request();
            req.get().set_session(session);
            req.send().promise.await.map(drop)
        } else {
            let mut req = conn.client().keepalive_request();
            req.get().set_session(session);
            req.send().promise.await.map(drop)
        };
        match sent {
            Ok(()) => (None, String::new()),
            Err(e) => (error::code_of(&e), error::message_of(&e).to_string()),
        }
    })
}

fn run_local<T>(f: impl std::future::Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

#[test]
fn a_client_touches_only_what_its_capabilities_name() {
    let mut c = Cluster::new();
    c.groupd_extra = vec!["--ticket-secs".into(), TICKET_SECS.to_string()];
    let c = c.format_with(2, 2, &[]);
    for name in ["vm-a", "vm-b", "golden"] {
        c.ctl_ok(&["vdi", "create", name, "8M"]);
    }
    let admin = sheep_rpc::keyfile::load(sheep_tests::keys::keyring()).unwrap();
    ok(&as_client(&c, sheep_tests::keys::keyring(), &["vdi", "write", "vm-b", "0"], b"secret-of-vm-b"));
    ok(&as_client(&c, sheep_tests::keys::keyring(), &["vdi", "write", "golden", "0"], b"golden-image"));

    // The administrator adds a client: its keyring, mode 0600, and the list shows it.
    let host = c.path("host.keyring");
    let hs = host.display().to_string();
    c.ctl_ok(&["auth", "add", "client.host", "--caps", "vdi=vm-a:rw, vdi=golden:r", "--out", &hs]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&host).unwrap().permissions().mode() & 0o777, 0o600);
    let list = c.ctl_ok(&["auth", "list"]);
    assert!(list.contains("client.host") && list.contains("vdi=vm-a:rw, vdi=golden:r"), "{list}");
    let dup = c.ctl(&["auth", "add", "client.host", "--caps", "vdi=x:r"]);
    refused(&dup, "exists already");
    refused(&c.ctl(&["auth", "add", "client.bad", "--caps", "vdi=x:rwx"]), "neither `r` nor `rw`");

    // What its capabilities name works, through sheepctl.
    ok(&as_client(&c, &host, &["vdi", "write", "vm-a", "0"], b"hello-from-host"));
    let back = ok(&as_client(&c, &host, &["vdi", "read", "vm-a", "0", "15"], b""));
    assert_eq!(back, "hello-from-host");
    let golden = ok(&as_client(&c, &host, &["vdi", "read", "golden", "0", "12"], b""));
    assert_eq!(golden, "golden-image");

    // Nothing else; each refusal names the capability it lacks.
    let out = as_client(&c, &host, &["vdi", "read", "vm-b", "0", "14"], b"");
    refused(&out, "no capability `r`");
    assert!(!show(&out.stdout).contains("secret"), "vm-b's data leaked");
    refused(&as_client(&c, &host, &["vdi", "write", "vm-b", "0"], b"overwrite"), "no capability `rw`");
    refused(&as_client(&c, &host, &["vdi", "write", "golden", "0"], b"overwrite"), "no capability `rw`");
    refused(&as_client(&c, &host, &["vdi", "create", "vm-c", "8M"], b""), "no capability `rw` on VDI \"vm-c\"");
    refused(&as_client(&c, &host, &["vdi", "delete", "vm-b"], b""), "no capability `rw` on VDI \"vm-b\"");
    refused(&as_client(&c, &host, &["cluster", "format", "--force"], b""), "administrator's");
    refused(&as_client(&c, &host, &["auth", "list"], b""), "administrator's");
    let b = c.ctl_ok(&["vdi", "read", "vm-b", "0", "14"]);
    assert_eq!(b, "secret-of-vm-b", "vm-b unchanged");

    // Straight to a storaged, past sheepctl: the ticket names vm-a and golden, not vm-b.
    let host_keys = sheep_rpc::keyfile::load(&host).unwrap();
    let ticket = ticket_of(&c.groupd_addrs[0], &host_keys).expect("a ticket for client.host");
    let peeked = Ticket::peek(&ticket).unwrap();
    let (a, b, g) = (vid_of(&c, "vm-a"), vid_of(&c, "vm-b"), vid_of(&c, "golden"));
    assert_eq!(peeked.access(a.get()), Some(Access::ReadWrite));
    assert_eq!(peeked.access(g.get()), Some(Access::Read));
    assert_eq!(peeked.access(b.get()), None);
    let epoch = c.info().epochs.last().unwrap().epoch;
    for addr in &c.storaged_addrs {
        let (code, msg) = direct_read(addr, &host_keys, &ticket, epoch, ObjectId::data(b, 0));
        assert_eq!(code, Some(ErrorCode::Denied), "{addr}: {msg}");
        assert!(msg.contains("no capability `r`"), "{msg}");
        let (code, msg) = direct_write(addr, &host_keys, &ticket, epoch, ObjectId::data(b, 0));
        assert_eq!(code, Some(ErrorCode::Denied), "{addr}: {msg}");
        assert!(msg.contains("no capability `rw`"), "{msg}");
        let (code, msg) = direct_write(addr, &host_keys, &ticket, epoch, ObjectId::data(g, 0));
        assert!(code == Some(ErrorCode::Denied) && msg.contains("only `r`"), "{addr}: {code:?} {msg}");
        let (code, msg) = direct_read(addr, &host_keys, &ticket, epoch, ObjectId::data(a, 0));
        assert_ne!(code, Some(ErrorCode::Denied), "{addr}: vm-a is the client's: {msg}");
        // Without a ticket, or with one it made up: no session at all.
        let (code, msg) = direct_read(addr, &host_keys, &[], epoch, ObjectId::data(a, 0));
        assert!(code.is_none() && msg.contains("connection refused"), "{addr}: {msg}");
        let forged = Ticket::new("client.host", peeked.generation, u64::MAX, vec![(b.get(), Access::ReadWrite)]);
        let (code, msg) = direct_read(addr, &host_keys, &forged.seal(&[1u8; 32]), epoch, ObjectId::data(b, 0));
        assert!(code.is_none() && msg.contains("ticket"), "{addr}: {msg}");
        // The admin's ticket shown by this client: it is the admin's, not the client's.
        let _ = &admin;
    }

    // New capabilities: groupd at once, storage nodes with the next ticket.
    c.ctl_ok(&["auth", "caps", "client.host", "--caps", "vdi=vm-*:rw"]);
    ok(&as_client(&c, &host, &["vdi", "write", "vm-b", "0"], b"now-allowed-b"));
    let b2 = c.ctl_ok(&["vdi", "read", "vm-b", "0", "13"]);
    assert_eq!(b2, "now-allowed-b");
    refused(&as_client(&c, &host, &["vdi", "read", "golden", "0", "12"], b""), "no capability `r`");

    // Revoked: groupd refuses it at once; a storaged within the ticket's lifetime.
    let ticket = ticket_of(&c.groupd_addrs[0], &host_keys).expect("a ticket before the revocation");
    c.ctl_ok(&["auth", "rm", "client.host"]);
    refused(&as_client(&c, &host, &["vdi", "list"], b""), "client.host");
    assert!(ticket_of(&c.groupd_addrs[0], &host_keys).is_err(), "a removed client got a ticket");
    let revoked = std::time::Instant::now();
    let addr = c.storaged_addrs[0].clone();
    let why = wait_until(Duration::from_secs(TICKET_SECS + 5), "the storaged to refuse the revoked client", || {
        match direct_read(&addr, &host_keys, &ticket, epoch, ObjectId::data(a, 0)) {
            (Some(ErrorCode::Denied), m) => Err(format!("still denied only by caps? {m}")),
            (None, m) if m.contains("connection refused") => Ok(m),
            (code, m) => Err(format!("still served: {code:?} {m}")),
        }
    });
    assert!(revoked.elapsed() <= Duration::from_secs(TICKET_SECS + 5), "{why}");
    assert!(why.contains("ticket"), "{why}");

    // Added again: a new key; the old keyring stays dead.
    let again = c.path("host2.keyring");
    c.ctl_ok(&["auth", "add", "client.host", "--caps", "vdi=vm-a:rw", "--out", &again.display().to_string()]);
    refused(&as_client(&c, &host, &["vdi", "read", "vm-a", "0", "15"], b""), "client.host");
    let back = ok(&as_client(&c, &again, &["vdi", "read", "vm-a", "0", "15"], b""));
    assert_eq!(back, "hello-from-host");

    // The NBD export works with the client's key for a VDI it covers, a snapshot of it taken
    // while exported included (the working VDI's id is new: the export's ticket is renewed).
    let keys = ["--keyring".to_string(), again.display().to_string()];
    let export = |name: &str, log: &str| {
        let args = ["--groupd", &c.groupd_addrs.join(","), "export", name, "--listen", &listen_addr(&c)];
        let args: Vec<String> = keys.iter().cloned().chain(args.iter().map(|s| s.to_string())).collect();
        Daemon::start("sheepctl", args, c.path(log))
    };
    let mut denied = export("vm-b", "export-b.log");
    let log = url_or_exit(&mut denied).expect_err("an export of a VDI the client may not write");
    assert!(log.contains("no capability `rw` on VDI \"vm-b\""), "{log}");
    let mut d = export("vm-a", "export-a.log");
    let url = url_or_exit(&mut d).unwrap_or_else(|log| panic!("the export as client.host stopped: {log}"));

    // A client uses only the sessions it opened: its own are named after it; a storage node's
    // session (closing it would take the node out) is refused to it.
    let info = c.info();
    let own = info.sessions.iter().find(|s| s.name().starts_with("client.host: ")).expect("the export's session");
    let again_keys = sheep_rpc::keyfile::load(&again).unwrap();
    assert_eq!(session_call(&c.groupd_addrs[0], &again_keys, own.id, false), (None, String::new()));
    let node = info.sessions.iter().find(|s| s.node().is_some()).expect("a storage node's session");
    for close in [false, true] {
        let (code, msg) = session_call(&c.groupd_addrs[0], &again_keys, node.id, close);
        assert_eq!(code, Some(ErrorCode::Denied), "{msg}");
        assert!(msg.contains("is not one client.host opened"), "{msg}");
    }
    assert!(c.info().sessions.iter().any(|s| s.id == node.id), "the node's session was closed");
    qemu_io_ok(&url, &["write -P 0x5a 0 65536", "read -P 0x5a 0 65536"]);
    let tag = ["vdi", "snapshot", "vm-a", "--tag", "s1"];
    ok(&as_client(&c, &again, &tag, b""));
    qemu_io_ok(&url, &["write -P 0x6b 4096 8192", "read -P 0x5a 0 4096", "read -P 0x6b 4096 8192"]);
    let snap = as_client(&c, &again, &["vdi", "read", "vm-a", "4096", "8192", "--snapshot", "s1"], b"");
    assert!(snap.status.success() && snap.stdout.iter().all(|&b| b == 0x5a), "{}", show(&snap.stderr));
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), Some(0), "{}", std::fs::read_to_string(&d.log).unwrap());
}
