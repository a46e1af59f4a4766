//! Progress metrics for the pods' controllers: counters named as CDI and Forklift scrape them
//! (`NAME_total{ownerUID="UID"} PERCENT`), monotonic, served over HTTPS with a self-signed
//! certificate made at start (the controllers do not verify it), kept scrapeable at 100 for a
//! short grace period before the process exits so that the last scrape sees the end.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use transfer_core::engine::Progress;
use transfer_core::{Error, ErrorKind, Result};

type Labels = Vec<(String, String)>;
type GaugeFamily = Family<Labels, Gauge<f64, AtomicU64>>;

/// The progress counters of one import.
pub struct Metrics {
    registry: Registry,
    families: Vec<Family<Labels, Counter<f64, AtomicU64>>>,
    gauges: Vec<Family<Labels, Gauge<f64, AtomicU64>>>,
    /// The `# TYPE` lines of `gauges` as a scraper must read them: counters, under their
    /// own names (what Forklift's Go client writes).
    counter_types: Vec<(String, String)>,
    /// Other values of the import (not percentages), by name.
    extra: Vec<(String, GaugeFamily)>,
    owner: Labels,
    last: Mutex<f64>,
    /// Set once a scrape has returned 100.
    seen_done: AtomicBool,
    /// Scrapes served.
    scrapes: AtomicU64,
}

/// Connections the metrics server serves at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 16;

/// How long a client has for the TLS handshake, and then for its request's headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one connection may last (keep-alive scrapes included).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

impl Metrics {
    /// Progress metrics named exactly `names`, labelled `ownerUID=owner_uid` only. A name that
    /// ends in `_total` is a counter (CDI's names); any other is exposed under that very name
    /// (Forklift's `ovirt_progress`, whose Go client adds no suffix) and typed a counter too,
    /// kept as a gauge that only rises (the encoder would add `_total` to a counter).
    pub fn new(names: &[&str], owner_uid: &str) -> Arc<Metrics> {
        Metrics::labelled(names, "ownerUID", owner_uid, &[])
    }

    /// Progress metrics named `names` labelled `label=owner_uid` (Forklift's copy-offload
    /// populator says `owner_uid`), and the gauges `extra` (name, help), set with
    /// [`set`](Self::set).
    pub fn labelled(
        names: &[&str],
        label: &str,
        owner_uid: &str,
        extra: &[(&str, &str)],
    ) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let mut families = Vec::new();
        let mut gauges = Vec::new();
        let mut counter_types = Vec::new();
        for n in names {
            let help = "Progress of the disk copy, in percent";
            if let Some(base) = n.strip_suffix("_total") {
                let f = Family::<Labels, Counter<f64, AtomicU64>>::default();
                registry.register(base, help, f.clone());
                families.push(f);
            } else {
                let g = Family::<Labels, Gauge<f64, AtomicU64>>::default();
                registry.register(*n, help, g.clone());
                gauges.push(g);
                counter_types.push((
                    format!("# TYPE {n} gauge\n"),
                    format!("# TYPE {n} counter\n"),
                ));
            }
        }
        let mut others = Vec::new();
        for (n, help) in extra {
            let g = Family::<Labels, Gauge<f64, AtomicU64>>::default();
            registry.register(*n, *help, g.clone());
            others.push(((*n).to_owned(), g));
        }
        let owner = vec![(label.to_owned(), owner_uid.to_owned())];
        let m = Metrics {
            registry,
            families,
            gauges,
            counter_types,
            extra: others,
            owner,
            last: Mutex::new(0.0),
            seen_done: AtomicBool::new(false),
            scrapes: AtomicU64::new(0),
        };
        m.set_percent(0.0);
        Arc::new(m)
    }

    /// Sets the extra gauge `name` (one given to [`labelled`](Self::labelled)), labelled with
    /// the owner and `labels`.
    pub fn set(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.set_labelled(name, self.owner.clone(), labels, value);
    }

    /// [`set`](Self::set) without the owner label (a metric of the array, not of the import).
    pub fn set_unowned(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.set_labelled(name, Vec::new(), labels, value);
    }

    fn set_labelled(&self, name: &str, mut l: Labels, labels: &[(&str, &str)], value: f64) {
        l.extend(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        for (n, g) in &self.extra {
            if n == name {
                g.get_or_create(&l).set(value);
            }
        }
    }

    /// Waits until a scrape has been served after this call, or `max` has passed (the last
    /// values reach the controller before the pod ends).
    pub async fn hold_for_scrape(&self, max: Duration) {
        let seen = self.scrapes.load(Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + max;
        while self.scrapes.load(Ordering::Relaxed) == seen && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The scrape is counted when its body is made: let the answer reach the scraper before
        // the process ends.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// Moves the counters up to `percent` (never down, never past 100).
    pub fn set_percent(&self, percent: f64) {
        let p = percent.clamp(0.0, 100.0);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let step = p - *last;
        for f in &self.families {
            let c = f.get_or_create(&self.owner);
            if step > 0.0 {
                c.inc_by(step);
            }
        }
        for g in &self.gauges {
            let g = g.get_or_create(&self.owner);
            if step > 0.0 {
                g.set(p);
            }
        }
        if step > 0.0 {
            *last = p;
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        for (gauge, counter) in &self.counter_types {
            out = out.replace(gauge.as_str(), counter);
        }
        self.scrapes.fetch_add(1, Ordering::Relaxed);
        if *self.last.lock().unwrap_or_else(|e| e.into_inner()) >= 100.0 {
            self.seen_done.store(true, Ordering::Relaxed);
        }
        out
    }

    /// Starts the counters `names` of `owner_uid` on a populator pod's :8443, or, when
    /// `FERRY_METRICS_ADDR_FILE` is set (tests only), on a free loopback port whose address is
    /// written to the file it names.
    pub async fn start_for_populator(names: &[&str], owner_uid: &str) -> Result<Arc<Metrics>> {
        Metrics::start_on_pod(Metrics::new(names, owner_uid)).await
    }

    /// Serves `metrics` on a populator pod's :8443 (or as
    /// [`start_for_populator`](Self::start_for_populator) says, under test).
    pub async fn start_on_pod(metrics: Arc<Metrics>) -> Result<Arc<Metrics>> {
        match std::env::var("FERRY_METRICS_ADDR_FILE")
            .ok()
            .filter(|f| !f.is_empty())
        {
            Some(file) => {
                let bound = metrics.serve("127.0.0.1:0").await?;
                let _ = std::fs::write(file, bound.to_string());
            }
            None => {
                metrics.serve("0.0.0.0:8443").await?;
            }
        }
        Ok(metrics)
    }

    /// Serves the counters over HTTPS on `addr` (any path); returns the bound address.
    pub async fn serve(self: &Arc<Self>, addr: &str) -> Result<SocketAddr> {
        let tls = tls_config()?;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            Error::with_source(ErrorKind::Io, format!("serving metrics on {addr}"), e)
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::io("reading the metrics address", e))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let me = self.clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    // EMFILE and the like: wait instead of spinning on the error.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                // Past the limit a connection is closed at once: a scraper retries, and a
                // flood of idle sockets cannot exhaust the pod's descriptors.
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    drop(tcp);
                    continue;
                };
                let (acceptor, me) = (acceptor.clone(), me.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                    let Ok(Ok(tls)) = handshake.await else {
                        return;
                    };
                    let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let body = me.encode();
                        async move {
                            let mut resp = Response::new(Full::new(Bytes::from(body)));
                            resp.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static(
                                    "text/plain; version=0.0.4; charset=utf-8",
                                ),
                            );
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    // A scrape is one short request: a connection that stays longer is cut.
                    let serve = hyper::server::conn::http1::Builder::new()
                        .header_read_timeout(HANDSHAKE_TIMEOUT)
                        .timer(hyper_util::rt::TokioTimer::new())
                        .serve_connection(TokioIo::new(tls), svc);
                    let _ = tokio::time::timeout(CONNECTION_LIFETIME, serve).await;
                });
            }
        });
        Ok(bound)
    }

    /// Follows `progress` (updating the counters twice a second) until the task is aborted.
    /// Percentages are of `of` bytes (a populator's `--pvc-size`), or of the progress's own
    /// total when `of` is 0.
    pub async fn follow(self: Arc<Self>, progress: Arc<Progress>, of: u64) {
        loop {
            let (done, total) = progress.get();
            let of = if of > 0 { of } else { total };
            if of > 0 {
                self.set_percent(done as f64 * 100.0 / of as f64);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Sets 100 and waits until a scrape has seen it, or `grace` has passed.
    pub async fn finish(&self, grace: Duration) {
        self.set_percent(100.0);
        let deadline = tokio::time::Instant::now() + grace;
        while !self.seen_done.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A TLS configuration with a self-signed certificate made now.
fn tls_config() -> Result<rustls::ServerConfig> {
    let bad = |e: String| {
        Error::new(
            ErrorKind::Io,
            format!("making the metrics certificate: {e}"),
        )
    };
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .map_err(|e| bad(e.to_string()))?;
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_monotonic_percentages_with_the_owner_label_only() {
        let m = Metrics::new(
            &["kubevirt_cdi_import_progress_total", "ovirt_progress"],
            "uid-1",
        );
        m.set_percent(40.5);
        m.set_percent(20.0);
        m.set_percent(250.0);
        let text = m.encode();
        let line = text
            .lines()
            .find(|l| l.starts_with("kubevirt_cdi_import_progress_total{"))
            .unwrap();
        assert_eq!(
            line,
            r#"kubevirt_cdi_import_progress_total{ownerUID="uid-1"} 100.0"#
        );
        // Forklift's name, without a suffix, typed as its Go client types it.
        assert!(text.contains("# TYPE ovirt_progress counter\n"), "{text}");
        assert!(
            text.contains("\novirt_progress{ownerUID=\"uid-1\"} 100.0\n"),
            "{text}"
        );
        assert!(!text.contains("gauge"), "{text}");
    }

    /// Whether the server closed `c` within `within` (a read returns end of file or fails).
    async fn closed_within(c: &mut tokio::net::TcpStream, within: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(within, c.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn idle_connections_are_limited_and_cut_after_the_handshake_timeout() {
        let m = Metrics::new(&["kubevirt_cdi_import_progress_total"], "uid-1");
        let addr = m.serve("127.0.0.1:0").await.unwrap();
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Give the server time to take them all on.
        tokio::time::sleep(Duration::from_millis(200)).await;

        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut extra, Duration::from_secs(2)).await,
            "a connection past the limit is closed at once"
        );
        for c in &mut idle {
            assert!(
                closed_within(c, HANDSHAKE_TIMEOUT + Duration::from_secs(3)).await,
                "a connection that never starts its TLS handshake is cut"
            );
        }
    }
}
