//! Keys on real processes: every connection to groupd and storaged authenticates before a
//! request is read. A client without the handshake gets nothing and is closed; a wrong key
//! and a replayed handshake are refused; a daemon without a keyring does not start, and one
//! with another cluster's keyring or none (`--insecure`) cannot join.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sheep_core::auth::handshake::{self, Answer, Hello, Status, ANSWER_BODY, NONCE_LEN};
use sheep_core::auth::keyring::Keyring;
use sheep_core::auth::{Key, ADMIN, DAEMON};
use sheep_core::group::ClusterStatus;
use sheep_tests::keys::{command, keyring};
use sheep_tests::{Cluster, Daemon};

const T: Duration = Duration::from_secs(10);

fn test_keyring() -> Keyring {
    sheep_rpc::keyfile::load(keyring()).expect("the test keyring")
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(T)).unwrap();
    s
}

/// Reads until the peer closes; what it sent before.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the peer neither answered nor closed within {T:?}: {e}"),
        }
    }
}

/// A well-formed capnp-rpc request (a bootstrap) sent with no handshake first.
fn bootstrap_request() -> Vec<u8> {
    let mut m = capnp::message::Builder::new_default();
    m.init_root::<capnp_rpc::rpc_capnp::message::Builder>().init_bootstrap().set_question_id(0);
    let mut bytes = Vec::new();
    capnp::serialize::write_message(&mut bytes, &m).unwrap();
    bytes
}

/// One handshake by hand as `entity` with `key`: the hello and the proof sent, and the
/// server's verdict (None if it closed instead).
fn handshake_by_hand(addr: &str, entity: &str, key: &Key, nonce: [u8; NONCE_LEN]) -> (Vec<u8>, [u8; 32], Option<u8>) {
    let mut s = connect(addr);
    let hello = Hello { flags: 0, entity: entity.into(), nonce, ticket: Vec::new() };
    s.write_all(&hello.encode()).unwrap();
    let mut status = [0u8; 1];
    s.read_exact(&mut status).unwrap();
    assert_eq!(status[0], Status::Ok as u8, "{entity} is known to {addr}");
    let mut body = [0u8; ANSWER_BODY];
    s.read_exact(&mut body).unwrap();
    let answer = Answer::decode(&body);
    let t = handshake::transcript(&hello, answer.flags, &answer.nonce);
    let proof = handshake::client_proof(key, &t);
    s.write_all(&proof).unwrap();
    let verdict = match s.read(&mut status) {
        Ok(1) => Some(status[0]),
        _ => None,
    };
    (hello.encode(), proof, verdict)
}

/// The flags a server answers a hello of the admin with (is the session to be encrypted?).
fn answer_flags(addr: &str) -> u8 {
    let mut s = connect(addr);
    s.write_all(&Hello { flags: 0, entity: ADMIN.into(), nonce: [6; NONCE_LEN], ticket: Vec::new() }.encode()).unwrap();
    let mut answer = [0u8; 1 + ANSWER_BODY];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(answer[0], Status::Ok as u8);
    Answer::decode(answer[1..].try_into().unwrap()).flags
}

#[test]
fn a_secure_cluster_encrypts_every_session() {
    let mut c = Cluster::formatted(2, 2, &["--secure"]);
    // Every daemon answers a client that did not ask for it: this session is encrypted.
    for addr in c.groupd_addrs.iter().chain(&c.storaged_addrs) {
        assert_eq!(answer_flags(addr), handshake::flags::SECURE, "{addr} would not encrypt");
    }
    assert!(c.ctl_ok(&["cluster", "info"]).contains("encrypted (--secure)"));
    c.ctl_ok(&["vdi", "create", "enc", "8M"]);
    let out = c.ctl_stdin(&["vdi", "write", "enc", "4096"], b"sealed on the wire");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(c.ctl_ok(&["vdi", "read", "enc", "4096", "18"]), "sealed on the wire");
    // A node that joins gets its copies from the others over encrypted sessions too, and
    // serves them.
    c.add_storaged();
    c.wait_epoch_nodes(0, 3, ClusterStatus::Running);
    c.wait_recovered();
    for r in ["0", "1"] {
        let img = c.path(&format!("enc{r}.img"));
        c.ctl_ok(&["vdi", "export", "enc", img.to_str().unwrap(), "--replica", r]);
        let data = std::fs::read(&img).unwrap();
        assert_eq!(&data[4096..4096 + 18], b"sealed on the wire", "replica {r}");
    }
    assert_eq!(answer_flags(&c.storaged_addrs[2]), handshake::flags::SECURE);
}

#[test]
fn no_handshake_no_data_and_wrong_or_replayed_proofs_are_refused() {
    let c = Cluster::formatted(1, 1, &[]);
    c.ctl_ok(&["vdi", "create", "secret-vdi", "8M"]);
    let k = test_keyring();
    let secret = k.secret.expect("the test keyring has the secret");
    for addr in [&c.groupd_addrs[0], &c.storaged_addrs[0]] {
        // A request without a handshake: closed, nothing sent back.
        let mut s = connect(addr);
        s.write_all(&bootstrap_request()).unwrap();
        let started = Instant::now();
        assert!(read_to_close(&mut s).is_empty(), "{addr} answered a client without keys");
        assert!(started.elapsed() < T);

        // Not formatted --secure: integrity-checked sessions unless the client asks.
        assert_eq!(answer_flags(addr), 0);
        // The right key: accepted, as the admin and as a daemon.
        assert_eq!(handshake_by_hand(addr, ADMIN, &k.key, [1; NONCE_LEN]).2, Some(Status::Ok as u8));
        let (hello, proof, verdict) = handshake_by_hand(addr, DAEMON, &secret, [2; NONCE_LEN]);
        assert_eq!(verdict, Some(Status::Ok as u8));

        // Another cluster's key: refused, with the reason.
        let other = [9u8; 32];
        assert_eq!(handshake_by_hand(addr, ADMIN, &other, [3; NONCE_LEN]).2, Some(Status::WrongProof as u8));
        assert_eq!(handshake_by_hand(addr, DAEMON, &other, [4; NONCE_LEN]).2, Some(Status::WrongProof as u8));

        // The accepted handshake recorded and replayed: the server's nonce is new, the proof
        // no longer matches.
        let mut s = connect(addr);
        s.write_all(&hello).unwrap();
        let mut answer = [0u8; 1 + ANSWER_BODY];
        s.read_exact(&mut answer).unwrap();
        s.write_all(&proof).unwrap();
        let mut verdict = [0u8; 1];
        s.read_exact(&mut verdict).unwrap();
        assert_eq!(verdict[0], Status::WrongProof as u8, "a replayed handshake was accepted by {addr}");
        assert!(read_to_close(&mut s).is_empty(), "{addr} went on after refusing");

        // An entity it does not know.
        let mut s = connect(addr);
        s.write_all(
            &Hello { flags: 0, entity: "client.nobody".into(), nonce: [5; NONCE_LEN], ticket: Vec::new() }.encode(),
        )
        .unwrap();
        let mut status = [0u8; 1];
        s.read_exact(&mut status).unwrap();
        assert_eq!(status[0], Status::UnknownEntity as u8);
    }

    // sheepctl with another cluster's keyring: refused, saying why; with none: one line.
    let other = c.path("other.keyring");
    let out = command("sheepctl").args(["auth", "init", "--out"]).arg(&other).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again = command("sheepctl").args(["auth", "init", "--out"]).arg(&other).output().unwrap();
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwritten"), "auth init overwrote a keyring");
    let out = command("sheepctl")
        .args(["--groupd", &c.groupd_addrs[0], "--keyring"])
        .arg(&other)
        .args(["vdi", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no member of this keyring's cluster"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("secret-vdi"));
    let out = command("sheepctl")
        .env_remove("SHEEP_KEYRING")
        .current_dir(c.path(""))
        .args(["--groupd", &c.groupd_addrs[0], "vdi", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("sheepctl auth init") && err.lines().count() == 1, "{err}");
}

#[test]
fn daemons_without_the_clusters_key_neither_start_nor_join() {
    let mut c = Cluster::formatted(1, 1, &[]);
    // Without a keyring: one line that says how to make one.
    for (program, args) in [
        (
            "groupd",
            vec!["--listen".to_string(), c.net.free_addr(50), "--data".into(), c.path("g9").display().to_string()],
        ),
        (
            "storaged",
            vec![
                "--listen".to_string(),
                c.net.free_addr(150),
                "--data".into(),
                c.path("s9").display().to_string(),
                "--groupd".into(),
                c.groupd_addrs[0].clone(),
            ],
        ),
    ] {
        let out = command(program).env_remove("SHEEP_KEYRING").args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{program} started without a keyring");
        assert!(err.contains("sheepctl auth init") && err.trim().lines().count() == 1, "{program}: {err}");
    }

    // Another cluster's keyring, then none at all (--insecure): neither joins.
    let other = c.path("other.keyring");
    assert!(command("sheepctl").args(["auth", "init", "--out"]).arg(&other).status().unwrap().success());
    let groupd = c.groupd_addrs[0].clone();
    let mut strangers = Vec::new();
    for (n, keys) in [(2, vec!["--keyring".to_string(), other.display().to_string()]), (3, vec!["--insecure".into()])] {
        let addr = c.net.free_addr(100 + n);
        let mut args = vec!["--listen".to_string(), addr.clone(), "--data".into()];
        args.push(c.path(&format!("stranger{n}")).display().to_string());
        args.extend(["--groupd".into(), groupd.clone(), "--zone".into(), n.to_string(), "--join-timeout".into()]);
        args.push("5".into());
        args.extend(keys);
        strangers.push((addr, Daemon::start("storaged", args, c.path(&format!("stranger{n}.log")))));
    }
    for (addr, d) in &mut strangers {
        let code = d.wait_exit(Duration::from_secs(30));
        assert_ne!(code, Some(0), "{addr} should give up joining");
        let info = c.info();
        assert!(info.epochs.iter().all(|e| e.nodes.iter().all(|n| n.id != *addr)), "{addr} joined: {info:?}");
    }
    let log = std::fs::read_to_string(c.path("groupd1.log")).unwrap();
    assert!(log.contains("refused a connection that did not authenticate"), "{log}");
    // The cluster's own node is still the only one, and serves.
    c.ctl_ok(&["vdi", "create", "still-works", "8M"]);
    c.storageds[0].kill();
}

#[test]
fn an_insecure_cluster_says_so_first() {
    let net = sheep_tests::Loopback::new();
    let dir = tempfile::tempdir().unwrap();
    let addr = net.free_addr(1);
    let args = vec!["--listen".to_string(), addr.clone(), "--data".into(), dir.path().join("g").display().to_string()];
    let _g = Daemon::start("groupd", [args, vec!["--insecure".into()]].concat(), dir.path().join("groupd.log"));
    let info = sheep_tests::wait_until(T, "the insecure groupd to answer", || {
        let out = command("sheepctl").args(["--groupd", &addr, "--insecure", "cluster", "info"]).output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    assert!(info.lines().next().unwrap_or("").starts_with("INSECURE"), "{info}");
    // A client with keys is refused by it, saying so.
    let out = command("sheepctl").args(["--groupd", &addr, "cluster", "info"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--insecure"), "{err}");
}
