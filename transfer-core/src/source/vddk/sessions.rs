//! Sessions kept across transfers: the vSphere API login and the VDDK connections of a disk,
//! reused by the next checkpoint of the same disk and closed after an idle time. A warm
//! migration then pays a vCenter login and a `ConnectEx` (seconds each, on real systems) once,
//! not once per checkpoint. A daemon holds one [`Sessions`] for all its transfers and calls
//! [`Sessions::expire`] now and then.
//!
//! A login is reused only for the same server, port, user, password and thumbprint. A VDDK
//! connection is reused only for the same library, server, ports, user, password, thumbprint,
//! VM and transports, and either the same snapshot or, over the NBD transports (which read the
//! disk file the path names), another snapshot's own disk file: the same path under another
//! snapshot means "that snapshot's contents", which only a new connection for that snapshot
//! gives (SAN and HotAdd attach the snapshot's disks when connecting).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vddk_sys::disk::Parked;

use super::params::VddkParams;
use crate::delta::vsphere::Client;

/// The sessions a process keeps; cloning shares them.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

struct Inner {
    idle: Duration,
    logins: Mutex<Vec<Login>>,
    connections: Mutex<Vec<Connection>>,
}

struct Login {
    key: LoginKey,
    client: Arc<Client>,
    used: Instant,
}

#[derive(PartialEq)]
struct LoginKey {
    server: String,
    port: u32,
    user: String,
    password: Option<super::Secret>,
    thumbprint: Option<String>,
}

impl LoginKey {
    fn of(p: &VddkParams) -> LoginKey {
        LoginKey {
            server: p.server.to_ascii_lowercase(),
            port: p.port,
            user: p.user.clone(),
            password: p.password.clone(),
            thumbprint: p.thumbprint.as_ref().map(|t| t.to_ascii_lowercase()),
        }
    }
}

struct Connection {
    key: ConnKey,
    snapshot: Option<String>,
    path: String,
    parked: Parked,
    used: Instant,
}

#[derive(PartialEq)]
struct ConnKey {
    login: LoginKey,
    nfc_port: u32,
    libdir: std::path::PathBuf,
    config: Option<std::path::PathBuf>,
    vm: String,
    transports: Option<String>,
}

impl ConnKey {
    fn of(p: &VddkParams) -> ConnKey {
        ConnKey {
            login: LoginKey::of(p),
            nfc_port: p.nfc_port,
            libdir: p.libdir.clone(),
            config: p.config.clone(),
            vm: p.vm.clone(),
            transports: p.transports.clone(),
        }
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (logins, connections) = self.counts();
        f.debug_struct("Sessions")
            .field("logins", &logins)
            .field("connections", &connections)
            .field("idle", &self.inner.idle)
            .finish()
    }
}

impl Sessions {
    /// Sessions closed once unused for `idle`.
    pub fn new(idle: Duration) -> Sessions {
        Sessions {
            inner: Arc::new(Inner {
                idle,
                logins: Mutex::new(Vec::new()),
                connections: Mutex::new(Vec::new()),
            }),
        }
    }

    /// vSphere logins and idle VDDK connections kept now.
    pub fn counts(&self) -> (usize, usize) {
        let l = self.inner.logins.lock().unwrap_or_else(|e| e.into_inner());
        let c = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        (l.len(), c.len())
    }

    /// The login kept for `p`'s server and user, if any.
    pub(crate) fn login(&self, p: &VddkParams) -> Option<Arc<Client>> {
        let key = LoginKey::of(p);
        let mut l = self.inner.logins.lock().unwrap_or_else(|e| e.into_inner());
        let kept = l.iter_mut().find(|k| k.key == key)?;
        kept.used = Instant::now();
        Some(kept.client.clone())
    }

    /// Keeps `client`, logged in for `p`, for the next transfer (one per key: a second one
    /// made meanwhile is logged out by the caller).
    pub(crate) fn keep_login(&self, p: &VddkParams, client: Arc<Client>) -> Option<Arc<Client>> {
        let key = LoginKey::of(p);
        let mut l = self.inner.logins.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = l.iter_mut().find(|k| k.key == key) {
            k.used = Instant::now();
            return (!Arc::ptr_eq(&k.client, &client)).then_some(client);
        }
        l.push(Login {
            key,
            client,
            used: Instant::now(),
        });
        None
    }

    /// Forgets the login for `p` (it failed).
    pub(crate) fn drop_login(&self, p: &VddkParams) {
        let key = LoginKey::of(p);
        let mut l = self.inner.logins.lock().unwrap_or_else(|e| e.into_inner());
        l.retain(|k| k.key != key);
    }

    /// An idle VDDK connection that may open `p`'s disk (see the module docs), taken out of
    /// the pool.
    pub(crate) fn connection(&self, p: &VddkParams) -> Option<Parked> {
        let key = ConnKey::of(p);
        let mut c = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let fits = |k: &Connection| {
            k.key == key
                && (k.snapshot == p.snapshot
                    || (k.path != p.file
                        && matches!(k.parked.transport(), "nbd" | "nbdssl" | "file")))
        };
        let i = c.iter().position(fits)?;
        Some(c.swap_remove(i).parked)
    }

    /// Keeps `parked`, whose last disk was `p`'s, for the next transfer.
    pub(crate) fn keep_connection(&self, p: &VddkParams, parked: Parked) {
        let mut c = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        c.push(Connection {
            key: ConnKey::of(p),
            snapshot: p.snapshot.clone(),
            path: p.file.clone(),
            parked,
            used: Instant::now(),
        });
    }

    /// Closes an idle connection to `server`, to free its slot under a per-host cap; false
    /// when there is none.
    pub(crate) async fn close_one_to(&self, server: &str) -> bool {
        let parked = {
            let mut c = self
                .inner
                .connections
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match c
                .iter()
                .position(|k| k.key.login.server.eq_ignore_ascii_case(server))
            {
                Some(i) => c.swap_remove(i).parked,
                None => return false,
            }
        };
        let _ = tokio::task::spawn_blocking(move || parked.close()).await;
        true
    }

    /// Logs out and disconnects what has been unused for the idle time.
    pub async fn expire(&self) {
        self.close_where(|used| used.elapsed() >= self.inner.idle)
            .await;
    }

    /// Logs out and disconnects everything kept.
    pub async fn close_all(&self) {
        self.close_where(|_| true).await;
    }

    async fn close_where(&self, old: impl Fn(Instant) -> bool) {
        let logins: Vec<Login> = {
            let mut l = self.inner.logins.lock().unwrap_or_else(|e| e.into_inner());
            let (gone, kept) = std::mem::take(&mut *l)
                .into_iter()
                .partition(|k| old(k.used));
            *l = kept;
            gone
        };
        let conns: Vec<Connection> = {
            let mut c = self
                .inner
                .connections
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let (gone, kept) = std::mem::take(&mut *c)
                .into_iter()
                .partition(|k| old(k.used));
            *c = kept;
            gone
        };
        for l in logins {
            tracing::debug!(server = %l.key.server, "vSphere session idle: logging out");
            l.client.logout().await;
        }
        if !conns.is_empty() {
            tracing::debug!(
                connections = conns.len(),
                "VDDK connections idle: disconnecting"
            );
            let _ = tokio::task::spawn_blocking(move || {
                for c in conns {
                    c.parked.close();
                }
            })
            .await;
        }
    }
}
