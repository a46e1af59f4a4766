//! `http-bench`: `importer copy` against `curl -o` from the same nginx on loopback, side by side,
//! alternating, several rounds; prints medians and ratios.
//!
//! nginx serves one file (random data, 2 GiB by default) over HTTP and HTTPS (a self-signed
//! certificate made with openssl), with Range honoured and, under `/norange/`, ignored. Rows:
//! curl over HTTP and HTTPS (one stream), the importer with parallel ranged reads over HTTP and
//! HTTPS (`--insecure`, as `curl -k`), and the importer on one stream (`/norange/`). Every run
//! writes a fresh target (deleted and synced first). The importer's copy ends with fdatasync;
//! curl's does not, so the `+sync` column adds the `sync` that follows each run.
//!
//! Run: `cargo build --release -p importer -p benches && ./target/release/http-bench --rounds 3`
//! (options: `--size 2G`, `--rounds N`, `--dir /var/tmp/ferry-http-bench`).

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use util::{arg, free_port, listening, rounds, run, self_signed, table, wait_until, Guard, Row};

fn start_nginx(dir: &Path, http: u16, https: u16) -> Result<Guard, String> {
    let d = dir.display();
    self_signed(dir)?;
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{ access_log off; sendfile on; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
  uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{ listen 127.0.0.1:{http}; listen 127.0.0.1:{https} ssl; ssl_certificate {d}/cert.pem;
    ssl_certificate_key {d}/key.pem; root {d}/www;
    location /norange/ {{ alias {d}/www/; max_ranges 0; }} }} }}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).map_err(|e| e.to_string())?;
    let child = Command::new("nginx")
        .args(["-c", &format!("{d}/nginx.conf"), "-p", &format!("{d}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting nginx: {e}"))?;
    let n = Guard(child);
    if wait_until(Duration::from_secs(5), || listening(http)) {
        return Ok(n);
    }
    Err("nginx did not start".into())
}

fn main() {
    if let Err(e) = bench() {
        eprintln!("http-bench: {e}");
        std::process::exit(1);
    }
}

fn bench() -> Result<(), String> {
    let rounds_n: usize = arg("--rounds", "7").parse().map_err(|_| "bad --rounds")?;
    let size = arg("--size", "2G");
    let dir = PathBuf::from(arg("--dir", "/var/tmp/ferry-http-bench"));
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let importer = exe.with_file_name("importer");
    let importer = importer.to_str().ok_or("bad path")?.to_owned();
    std::fs::create_dir_all(dir.join("www")).map_err(|e| e.to_string())?;
    let file = dir.join("www/disk.img");
    // A file kept from an earlier run of another size is made again.
    let want = transfer_core::size::parse_size(&size).map_err(|e| e.to_string())?;
    if std::fs::metadata(&file).is_ok_and(|m| m.len() != want) {
        let _ = std::fs::remove_file(&file);
    }
    if !file.exists() {
        run(
            &importer,
            &[
                "copy",
                &format!("synth://sparse-random?size={size}&percent=100&seed=9"),
                file.to_str().unwrap(),
            ],
        )?;
    }
    let bytes = std::fs::metadata(&file).map_err(|e| e.to_string())?.len();
    // Served from the page cache in every run.
    run("cat", &[file.to_str().unwrap()])?;
    let (http, https) = (free_port(), free_port());
    let _nginx = start_nginx(&dir, http, https)?;
    let out = dir.join("out.img");
    let o = out.to_str().unwrap().to_owned();
    let h = format!("http://127.0.0.1:{http}/disk.img");
    let s = format!("https://127.0.0.1:{https}/disk.img");
    let n = format!("http://127.0.0.1:{http}/norange/disk.img");
    let rows: Vec<Row> = vec![
        (
            "curl http".into(),
            "curl".into(),
            vec!["-sf".into(), "-o".into(), o.clone(), h.clone()],
        ),
        (
            "importer http ranged".into(),
            importer.clone(),
            vec!["copy".into(), h.clone(), o.clone()],
        ),
        (
            "importer http 1 stream".into(),
            importer.clone(),
            vec!["copy".into(), n.clone(), o.clone()],
        ),
        (
            "curl https".into(),
            "curl".into(),
            vec!["-sfk".into(), "-o".into(), o.clone(), s.clone()],
        ),
        (
            "importer https ranged".into(),
            importer.clone(),
            vec!["copy".into(), "--insecure".into(), s.clone(), o.clone()],
        ),
    ];
    let med = rounds(
        &rows,
        rounds_n,
        &out,
        2 * bytes,
        &[_nginx.0.id()],
        &mut |_| Ok(String::new()),
    )?;
    table(&rows, &med, bytes);
    let ratio = |a: usize, b: usize| (med[b].0 / med[a].0, med[b].1 / med[a].1);
    let (r1, r1s) = ratio(1, 0);
    let (r2, r2s) = ratio(2, 0);
    let (r3, r3s) = ratio(4, 3);
    println!("\ncurl/importer speed: http ranged {r1:.2}x (+sync {r1s:.2}x, goal >= 1.0x), http one stream {r2:.2}x (+sync {r2s:.2}x, goal >= 1.0x), https ranged {r3:.2}x (+sync {r3s:.2}x, goal >= 1.3x)");
    let json = serde_json::json!({
        "bench": "http-bench", "bytes": bytes, "rounds": rounds_n,
        "median_s": rows.iter().zip(&med).map(|((n, _, _), m)| (n.clone(), serde_json::json!(m.0))).collect::<serde_json::Map<_, _>>(),
        "speedup_vs_curl": { "http_ranged": r1, "http_one_stream": r2, "https_ranged": r3 },
    });
    println!("{json}");
    Ok(())
}
