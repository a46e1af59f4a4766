//! `imageio-bench`: `importer copy` against the ovirt-imageio Python client
//! (`ovirt_imageio.client.download`, the client oVirt's own tools use) from the same real
//! ovirt-imageio daemon and the same tickets, side by side, alternating, several rounds; prints
//! medians and ratios.
//!
//! The disk is a half-sparse image (random data in about half of its 64 KiB blocks, 4 GiB by
//! default), behind two tickets: a file-backed one (the raw file) and an nbd-backed one
//! (qemu-nbd serving the same disk as qcow2, `-e 8`). Two daemons serve both tickets over HTTPS
//! with a self-signed certificate that both clients trust: one as a remote host looks to a
//! migration pod (no local socket), one with its local Unix socket on, which both clients use
//! when the daemon runs on their host. Every run gets a ticket of its own, as every migration
//! does: the daemon keeps per-ticket state (the ranges read so far) that makes later reads of a
//! reused ticket slower. Per daemon and ticket kind there are three rows: the Python client, the
//! importer as it is by default (short zero gaps read with the data where the extents are
//! fragmented, see `transfer_core::extent::auto_gap`), and the importer with `--read-gaps 1M`
//! (every zero run under 1 MiB read with the data). Both clients
//! write a new raw file; the importer's copy ends with fdatasync, the Python client's does not
//! always, so the `+sync` column adds the `sync` that follows each run.
//!
//! Needs the peers of `scripts/install-peers.sh` (the daemon in `.peers/venv`, qemu-img,
//! qemu-nbd, openssl). Run:
//! `cargo build --release -p importer -p benches && ./target/release/imageio-bench --rounds 3`
//! (options: `--size 4G`, `--rounds N`, `--dir /var/tmp/ferry-imageio-bench`,
//! `--venv PATH`).

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use util::{arg, free_port, listening, rounds, run, self_signed, table, wait_until, Guard, Row};

/// A running daemon: its process, its HTTPS port and its control port.
struct Daemon {
    _child: Guard,
    port: u16,
    control: u16,
}

/// Starts the daemon from `venv` with its configuration under `dir`, TLS with `tls_dir`'s
/// certificate, and its local socket service on or off.
fn start_daemon(venv: &Path, dir: &Path, tls_dir: &Path, local: bool) -> Result<Daemon, String> {
    let conf_d = dir.join("conf.d");
    let run_dir = dir.join("run");
    for d in [&conf_d, &run_dir] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let (port, control) = (free_port(), free_port());
    let t = tls_dir.display();
    let conf = format!(
        "[daemon]\ndrop_privileges = false\nsystemd_enable = false\nrun_dir = {run}\n\
         [tls]\nenable = true\nkey_file = {t}/key.pem\ncert_file = {t}/cert.pem\nca_file = {t}/cert.pem\n\
         [remote]\nhost = 127.0.0.1\nport = {port}\n\
         [local]\nenable = {local}\nsocket =\n\
         [control]\ntransport = tcp\nport = {control}\n\
         [profile]\nfilename = {run}/profile\n\
         [handler_logfile]\nargs = ('{log}',)\n",
        run = run_dir.display(),
        log = dir.join("daemon.log").display(),
    );
    std::fs::write(conf_d.join("99-bench.conf"), conf).map_err(|e| e.to_string())?;
    let child = Command::new(venv.join("bin/ovirt-imageio"))
        .args(["--conf-dir", &dir.display().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting ovirt-imageio: {e}"))?;
    let d = Daemon {
        _child: Guard(child),
        port,
        control,
    };
    if wait_until(Duration::from_secs(60), || {
        listening(port) && listening(control)
    }) {
        return Ok(d);
    }
    Err(format!(
        "ovirt-imageio did not start (see {})",
        dir.display()
    ))
}

impl Daemon {
    /// Adds a read-only ticket `id` of `size` bytes on backend `url` for an hour.
    fn add_ticket(&self, id: &str, size: u64, url: &str) -> Result<(), String> {
        let body = format!(
            r#"{{"uuid": "{id}", "size": {size}, "url": "{url}", "ops": ["read"], "timeout": 3600, "transfer_id": "bench-{id}"}}"#
        );
        let mut c = TcpStream::connect(("127.0.0.1", self.control)).map_err(|e| e.to_string())?;
        write!(
            c,
            "PUT /tickets/{id} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        c.read_to_string(&mut answer).map_err(|e| e.to_string())?;
        if !answer.starts_with("HTTP/1.1 200") {
            return Err(format!("adding ticket {id}: {answer}"));
        }
        Ok(())
    }

    fn url(&self, id: &str) -> String {
        format!("https://127.0.0.1:{}/images/{id}", self.port)
    }
}

fn main() {
    if let Err(e) = bench() {
        eprintln!("imageio-bench: {e}");
        std::process::exit(1);
    }
}

fn bench() -> Result<(), String> {
    let rounds_n: usize = arg("--rounds", "7").parse().map_err(|_| "bad --rounds")?;
    let size = arg("--size", "4G");
    let dir = PathBuf::from(arg("--dir", "/var/tmp/ferry-imageio-bench"));
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let importer = exe.with_file_name("importer").display().to_string();
    let default_venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.peers/venv");
    let venv = PathBuf::from(arg("--venv", &default_venv.display().to_string()));
    let python = venv.join("bin/python").display().to_string();
    if !venv.join("bin/ovirt-imageio").is_file() {
        return Err(format!(
            "no ovirt-imageio in {} (run scripts/install-peers.sh)",
            venv.display()
        ));
    }
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let raw = dir.join("disk.raw");
    let qcow2 = dir.join("disk.qcow2");
    // A disk kept from an earlier run of another size is made again, with its qcow2.
    let want = transfer_core::size::parse_size(&size).map_err(|e| e.to_string())?;
    if std::fs::metadata(&raw).is_ok_and(|m| m.len() != want) {
        let _ = std::fs::remove_file(&raw);
        let _ = std::fs::remove_file(&qcow2);
    }
    if !raw.exists() {
        run(
            &importer,
            &[
                "copy",
                &format!("synth://sparse-random?size={size}&percent=50&seed=11"),
                &raw.display().to_string(),
            ],
        )?;
    }
    if !qcow2.exists() {
        run(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "qcow2",
                &raw.display().to_string(),
                &qcow2.display().to_string(),
            ],
        )?;
    }
    let bytes = std::fs::metadata(&raw).map_err(|e| e.to_string())?.len();
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).map_err(|e| e.to_string())?;
    self_signed(&tls)?;
    let ca = tls.join("cert.pem").display().to_string();
    let sock = dir.join("nbd.sock");
    let _ = std::fs::remove_file(&sock);
    let nbd = Guard(
        Command::new("qemu-nbd")
            .args(["-f", "qcow2", "-r", "-e", "8", "-t", "-k"])
            .arg(&sock)
            .arg(&qcow2)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting qemu-nbd: {e}"))?,
    );
    wait_until(Duration::from_secs(5), || sock.exists());
    let daemons = [
        start_daemon(&venv, &dir.join("remote"), &tls, false)?,
        start_daemon(&venv, &dir.join("local"), &tls, true)?,
    ];
    let backends = [
        format!("file://{}", raw.display()),
        format!("nbd:unix:{}", sock.display()),
    ];
    let out = dir.join("out.img");
    let o = out.display().to_string();
    let download = "import sys\nfrom ovirt_imageio import client\n\
                    client.download(sys.argv[1], sys.argv[2], sys.argv[3], fmt='raw')\n";
    // Rows come in threes per (daemon, backend): python, importer, importer --read-gaps.
    let mut rows: Vec<Row> = Vec::new();
    let mut ticket_of: Vec<(usize, usize)> = Vec::new();
    for (d, how) in ["https", "local"].into_iter().enumerate() {
        for (b, kind) in ["file", "nbd"].into_iter().enumerate() {
            let url = daemons[d].url("{ticket}");
            let importer_args = |extra: &[&str]| {
                let mut v: Vec<String> = vec!["copy".into(), "--cacert".into(), ca.clone()];
                v.extend(extra.iter().map(|s| s.to_string()));
                v.extend([format!("imageio+{url}"), o.clone()]);
                v
            };
            rows.push((
                format!("python {kind} {how}"),
                python.clone(),
                vec![
                    "-c".into(),
                    download.into(),
                    url.clone(),
                    o.clone(),
                    ca.clone(),
                ],
            ));
            rows.push((
                format!("importer {kind} {how}"),
                importer.clone(),
                importer_args(&[]),
            ));
            rows.push((
                format!("importer --read-gaps 1M {kind} {how}"),
                importer.clone(),
                importer_args(&["--read-gaps", "1M"]),
            ));
            ticket_of.extend([(d, b); 3]);
        }
    }
    // Every run gets a new ticket, as every migration does: the daemon keeps per-ticket state
    // (the ranges read so far) that makes later reads of the same ticket slower.
    let mut serial = 0usize;
    let mut fresh = |row: usize| {
        serial += 1;
        let (d, b) = ticket_of[row];
        let id = format!("t{serial}");
        daemons[d].add_ticket(&id, bytes, &backends[b])?;
        Ok(id)
    };
    // The daemons (one is busy at a time) and qemu-nbd behind the nbd tickets.
    let servers = [
        daemons[0]._child.0.id(),
        daemons[1]._child.0.id(),
        nbd.0.id(),
    ];
    let med = rounds(&rows, rounds_n, &out, 2 * bytes, &servers, &mut fresh)?;
    drop(nbd);
    table(&rows, &med, bytes);
    let mut speedups = serde_json::Map::new();
    let mut line = Vec::new();
    for py in (0..rows.len()).step_by(3) {
        let name = rows[py].0.trim_start_matches("python ").to_owned();
        let ratio = |i: usize| (med[py].0 / med[i].0, med[py].1 / med[i].1);
        let ((r, rs), (g, gs)) = (ratio(py + 1), ratio(py + 2));
        line.push(format!(
            "{name} {r:.2}x (+sync {rs:.2}x), with --read-gaps 1M {g:.2}x (+sync {gs:.2}x)"
        ));
        speedups.insert(name.clone(), serde_json::json!(r));
        speedups.insert(format!("{name} --read-gaps 1M"), serde_json::json!(g));
    }
    println!("\npython/importer speed (goal >= 1.5x):");
    for l in line {
        println!("  {l}");
    }
    let json = serde_json::json!({
        "bench": "imageio-bench", "bytes": bytes, "rounds": rounds_n,
        "median_s": rows.iter().zip(&med).map(|((n, _, _), m)| (n.clone(), serde_json::json!(m.0))).collect::<serde_json::Map<_, _>>(),
        "speedup_vs_python_client": speedups,
    });
    println!("{json}");
    Ok(())
}
