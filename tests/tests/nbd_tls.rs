//! The NBD export over TLS on real processes: `sheepctl export --tls-cert --tls-key` with a
//! certificate made by `openssl` for the export's address, QEMU's `qemu-io` with
//! `tls-creds-x509` as the client; a client in the clear is refused; bad certificate files
//! stop the export with a clear error.

use std::path::Path;
use std::process::Command;

use sheep_tests::nbd::{run_tool, url_or_exit, LIMIT as T};
use sheep_tests::{Cluster, Daemon};

/// Runs openssl; panics with its output unless it succeeded.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}): install it (ci/install-deps does)"));
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA (`ca-cert.pem`, what QEMU's tls-creds-x509 dir holds for a client) and a server
/// certificate for `ip` signed by it, in `dir`.
fn make_certs(dir: &Path, ip: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=sheep test CA",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca-cert.pem",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        dir,
        &["req", "-newkey", "rsa:2048", "-nodes", "-subj", &format!("/CN={ip}"), "-keyout", "server-key.pem"]
            .into_iter()
            .chain(["-out", "server.csr"])
            .collect::<Vec<_>>(),
    );
    let ext = format!(
        "subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n"
    );
    std::fs::write(dir.join("server.ext"), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca-cert.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server-cert.pem",
            "-extfile",
            "server.ext",
        ],
    );
}

fn export(c: &Cluster, listen: &str, cert: &Path, key: &Path, log: &str) -> Daemon {
    let args = ["--groupd", &c.groupd_addrs.join(","), "export", "disk0", "--listen", listen];
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    args.extend(["--tls-cert".into(), cert.display().to_string(), "--tls-key".into(), key.display().to_string()]);
    Daemon::start("sheepctl", args, c.path(log))
}

/// qemu-io over TLS against `host:port`: (every command succeeded, its output).
fn qemu_io_tls(certs: &Path, host: &str, port: &str, cmds: &[&str]) -> (bool, String) {
    let object = format!("tls-creds-x509,id=tls0,endpoint=client,dir={}", certs.display());
    let image = format!("driver=nbd,host={host},port={port},export=disk0,tls-creds=tls0");
    let mut args = vec!["--object", &object, "--image-opts", &image];
    for c in cmds {
        args.extend(["-c", c]);
    }
    let out = run_tool("qemu-io", &args, T);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let bad = text.lines().any(|l| l.contains("failed") || l.contains("error") || l.contains("Error"));
    (out.status.success() && !bad, text)
}

#[test]
fn qemu_speaks_tls_to_the_export_and_a_client_in_the_clear_is_refused() {
    let c = Cluster::formatted(2, 2, &[]);
    c.ctl_ok(&["vdi", "create", "disk0", "8M"]);
    let ip = c.net.ip(200).to_string();
    let certs = c.path("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_certs(&certs, &ip);

    // Unreadable certificate files: the export does not start, and says which file.
    let mut bad = export(&c, &format!("{ip}:0"), &certs.join("nope.pem"), &certs.join("server-key.pem"), "bad.log");
    let log = url_or_exit(&mut bad).expect_err("an export with a missing certificate");
    assert!(log.contains("cannot read the TLS certificate") && log.contains("nope.pem"), "{log}");

    let (cert, key) = (certs.join("server-cert.pem"), certs.join("server-key.pem"));
    let mut d = export(&c, &format!("{ip}:0"), &cert, &key, "export.log");
    let url = url_or_exit(&mut d).unwrap_or_else(|log| panic!("the TLS export stopped: {log}"));
    let port = url.rsplit_once(':').unwrap().1.split('/').next().unwrap().to_string();

    let (ok, text) = qemu_io_tls(&certs, &ip, &port, &["write -P 0x3c 0 65536", "read -P 0x3c 0 65536"]);
    assert!(ok, "qemu-io over TLS: {text}");
    let (ok, text) = qemu_io_tls(&certs, &ip, &port, &["read -P 0x3c 4096 8192", "read -P 0 65536 4096"]);
    assert!(ok, "qemu-io over TLS, a new connection: {text}");

    // In the clear: refused, saying TLS is required.
    let out = run_tool("qemu-io", &["-f", "raw", &url, "-c", "read 0 4096"], T);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() || text.contains("TLS"), "a client in the clear was served: {text}");
    assert!(text.to_lowercase().contains("tls"), "{text}");
    assert!(d.is_running(), "the export survived a client in the clear");

    // What qemu-io wrote is the VDI's.
    let out = c.ctl(&["vdi", "read", "disk0", "0", "65536"]);
    assert!(out.status.success() && out.stdout.iter().all(|&b| b == 0x3c), "{}", String::from_utf8_lossy(&out.stderr));
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(T), Some(0), "{}", std::fs::read_to_string(&d.log).unwrap_or_default());
}
