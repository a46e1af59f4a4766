//! Connection caps per source server, across the transfers of one process. ESXi's NFC service
//! takes about 10 connections per host by default, shared by everything that reads from it;
//! an imageio daemon announces `max_readers`; an NBD server may accept few clients. A transfer
//! takes slots for its connections before it opens the source, as many as are free (at least
//! one, waiting first come first served when none is), never waiting while it holds some, and
//! runs with that many connections; it gives them back when it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::open::{SourceKind, SourceUri};
use crate::source::nbd::NbdAddr;

/// Per-server connection caps, shared by cloning.
#[derive(Clone, Default)]
pub struct ServerSlots {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// The cap of servers not named in `caps` (`None`: uncapped).
    default: Option<usize>,
    caps: HashMap<String, usize>,
    servers: HashMap<String, (usize, Arc<Semaphore>)>,
}

impl std::fmt::Debug for ServerSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.usage()).finish()
    }
}

/// The slots a transfer holds on its source's server; given back when dropped.
pub struct Slots {
    /// Connections the transfer may open.
    pub granted: usize,
    _permit: OwnedSemaphorePermit,
}

impl ServerSlots {
    /// Caps of `per_server` (`host`, `host:port` or an NBD socket path, as [`server_of`] names
    /// them; host names in lower case) and `default` for every other server (`None`: uncapped).
    pub fn new(default: Option<usize>, per_server: &[(String, usize)]) -> ServerSlots {
        let inner = Inner {
            default: default.map(|n| n.max(1)),
            caps: per_server
                .iter()
                .map(|(s, n)| (s.clone(), (*n).max(1)))
                .collect(),
            servers: HashMap::new(),
        };
        ServerSlots {
            inner: Arc::new(Mutex::new(inner)),
        }
    }

    fn semaphore(&self, server: &str) -> Option<(usize, Arc<Semaphore>)> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = g.servers.get(server) {
            return Some(s.clone());
        }
        // A cap named for the host applies to every port of it.
        let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
        let cap = g
            .caps
            .get(server)
            .or_else(|| g.caps.get(host))
            .copied()
            .or(g.default)?;
        let s = (cap, Arc::new(Semaphore::new(cap)));
        g.servers.insert(server.to_owned(), s.clone());
        Some(s)
    }

    /// Takes up to `want` connection slots on `server` (never more than its cap): as many as
    /// are free now, or, when none is, waits for one and then takes what is free. It never
    /// holds slots while waiting for more, so transfers cannot block each other. `None` when
    /// the server is not capped. Logs when it has to wait.
    pub async fn take(&self, server: &str, want: usize) -> Option<Slots> {
        let (cap, sem) = self.semaphore(server)?;
        let want = want.clamp(1, cap);
        if sem.available_permits() == 0 {
            tracing::info!(
                server,
                connections = want,
                cap,
                "waiting for connection slots to the source's server"
            );
        }
        let mut permit = sem.clone().acquire_owned().await.ok()?;
        let mut granted = 1;
        while granted < want {
            match sem.clone().try_acquire_owned() {
                Ok(p) => {
                    permit.merge(p);
                    granted += 1;
                }
                Err(_) => break,
            }
        }
        if granted < want {
            tracing::info!(
                server,
                connections = granted,
                wanted = want,
                "fewer connections than asked: the server's other slots are taken"
            );
        }
        Some(Slots {
            granted,
            _permit: permit,
        })
    }

    /// Each capped server seen so far: its name, the connections in use and its cap.
    pub fn usage(&self) -> Vec<(String, usize, usize)> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = g
            .servers
            .iter()
            .map(|(k, (cap, s))| (k.clone(), cap - s.available_permits(), *cap))
            .collect();
        v.sort();
        v
    }
}

/// The server a source URI reads from, as connection caps name it: `host:port` for NBD over
/// TCP and HTTP(S) (imageio included), the socket path for NBD over a Unix socket, the host
/// for `vddk://` (NFC connections are per ESXi host or vCenter). `None` for local files,
/// synthetic disks and Glance (its image service is found only after the Keystone login).
pub fn server_of(uri: &str, kind: SourceKind) -> Option<String> {
    // Host names are case-blind; socket paths are not.
    Some(match SourceUri::parse(uri, kind).ok()? {
        SourceUri::Nbd(u) => match u.addr {
            NbdAddr::Tcp(h, p) => format!("{}:{p}", h.to_ascii_lowercase()),
            NbdAddr::Unix(p) => p,
        },
        SourceUri::Http(u) | SourceUri::Imageio(u) => {
            format!("{}:{}", u.host_str()?, u.port_or_known_default()?).to_ascii_lowercase()
        }
        SourceUri::Vddk(u) => u.host_str()?.to_ascii_lowercase(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_named_by_host_and_port_or_socket() {
        let k = SourceKind::Auto;
        assert_eq!(
            server_of("nbd://Example.com:10810/x", k).as_deref(),
            Some("example.com:10810")
        );
        assert_eq!(
            server_of("nbd+unix:///x?socket=/run/s.sock", k).as_deref(),
            Some("/run/s.sock")
        );
        assert_eq!(
            server_of("https://h.example/images/t", SourceKind::Imageio).as_deref(),
            Some("h.example:443")
        );
        assert_eq!(server_of("/tmp/disk.img", k), None);
        assert_eq!(server_of("synth://pattern?size=1M", k), None);
    }

    #[tokio::test]
    async fn slots_are_capped_per_server_and_given_back() {
        let s = ServerSlots::new(None, &[("h.example".into(), 3)]);
        assert!(s.take("other:1", 8).await.is_none(), "uncapped");
        let a = s.take("h.example:10809", 2).await.unwrap();
        assert_eq!(a.granted, 2);
        let b = s.take("h.example:10809", 2).await.unwrap();
        assert_eq!(b.granted, 1, "what is free, without waiting");
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            s.take("h.example:10809", 1),
        );
        assert!(waiting.await.is_err(), "none free: it waits");
        drop((a, b));
        let c = s.take("h.example:10809", 8).await.unwrap();
        assert_eq!(c.granted, 3, "no more than the cap");
        assert_eq!(s.usage(), vec![("h.example:10809".into(), 3, 3)]);
        drop(c);
        assert_eq!(s.usage(), vec![("h.example:10809".into(), 0, 3)]);
    }
}
