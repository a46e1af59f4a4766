//! Scraping a pod binary's progress metrics over HTTPS (with curl, certificate unchecked: it is
//! made at start) and reading them as the controllers do. Shared by the importer's tests and
//! the populator's.

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// Scrapes `https://ADDR/metrics` (ADDR read from `addr_file`, as the binary writes it for
/// tests) every 20 ms until `child` exits; returns its output and every non-empty scrape.
pub fn scrape_until_exit(mut child: Child, addr_file: &Path) -> (Output, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut scrapes = Vec::new();
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        if let Ok(addr) = std::fs::read_to_string(addr_file) {
            let out = Command::new("curl")
                .args(["-sk", &format!("https://{addr}/metrics")])
                .output()
                .expect("running curl");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if !text.is_empty() {
                scrapes.push(text);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "the process did not end within 60 s; killed it. stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (child.wait_with_output().unwrap(), scrapes)
}

/// The value of `name{ownerUID="uid"}` in `text`, as CDI's and Forklift's regexes read it:
/// `(name)\{ownerUID="UID"\} (\d{1,3}\.?\d*)`. Anything but a plain decimal fails the test.
pub fn progress(text: &str, name: &str, uid: &str) -> Option<f64> {
    let prefix = format!("{name}{{ownerUID=\"{uid}\"}} ");
    let value = text.lines().find_map(|l| l.strip_prefix(prefix.as_str()))?;
    let int = value.split('.').next().unwrap_or("");
    let plain = value.chars().all(|c| c.is_ascii_digit() || c == '.')
        && (1..=3).contains(&int.len())
        && value.matches('.').count() <= 1;
    assert!(plain, "not a plain decimal percentage: {value:?}");
    value.parse().ok()
}

/// Every one of `names` reads 100 in the last scrape, and the first name never went down.
pub fn assert_progress_done(scrapes: &[String], names: &[&str], uid: &str) {
    let last = scrapes.last().expect("scraped at least once");
    for name in names {
        assert_eq!(progress(last, name, uid), Some(100.0), "{name}: {last}");
    }
    let seen: Vec<f64> = scrapes
        .iter()
        .filter_map(|t| progress(t, names[0], uid))
        .collect();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "monotonic: {seen:?}");
}
