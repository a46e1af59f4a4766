//! Opening sources by URI: `nbd://`, `nbd+unix://`, `http://`, `https://`, `file://` (or a plain
//! path), `synth://`, `vddk://`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

#[cfg(feature = "http")]
use crate::digest::Checksum;
use crate::error::{unsupported, Error, ErrorKind, Hint, Result};
use crate::format::{open_format, sibling_name, DiskChoice, Format, FormatContext, Siblings};
#[cfg(feature = "http")]
use crate::http::HttpOptions;
use crate::source::file::FileSource;
#[cfg(feature = "http")]
use crate::source::glance::{GlanceAuth, GlanceSource};
#[cfg(feature = "http")]
use crate::source::http::HttpSource;
#[cfg(feature = "http")]
use crate::source::imageio::{ImageioSource, Transport};
pub use crate::source::nbd::NbdOptions;
use crate::source::nbd::{NbdSource, NbdUri};
use crate::source::retry::{RetryPolicy, RetrySource, RetryStats};
use crate::source::synth::SynthSource;
#[cfg(feature = "vddk")]
use crate::source::vddk::{Secret, VddkParams, VddkSource};
use crate::source::BlockSource;

/// Options that apply while opening a source: what every source shares, then one group per
/// source family.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Parallel connections a source may use.
    pub connections: usize,
    /// How to read a plain `http(s)://` URL: `auto` (a disk image file) or a named protocol
    /// (`imageio`).
    pub kind: SourceKind,
    /// How failed reads are retried on fresh handles ([`RetrySource`]).
    pub retry: RetryPolicy,
    /// What the retries did, shared by every handle of the source.
    pub retry_stats: Arc<RetryStats>,
    /// How the source's bytes are read: an image format, detected or forced.
    pub format: Format,
    /// Which disk of an OVA to read.
    pub disk: Option<DiskChoice>,
    /// The digest the source's bytes must have, as they are served (`sha256:HEX`, ...): the
    /// body is then read front to back and checked at its end (HTTP image files).
    #[cfg(feature = "http")]
    pub checksum: Option<Checksum>,
    /// TLS, headers and proxies of HTTP-family sources (HTTP, imageio, Glance,
    /// vSphere).
    #[cfg(feature = "http")]
    pub http: HttpOptions,
    /// NBD sources.
    pub nbd: NbdOptions,
    /// How imageio sources reach the daemon (its local socket when it can, by default).
    #[cfg(feature = "http")]
    pub imageio_transport: Transport,
    /// Keystone credentials for `glance+` URIs (default: the `OS_*` variables).
    #[cfg(feature = "http")]
    pub glance_auth: Option<GlanceAuth>,
    /// `vddk://` sources.
    #[cfg(feature = "vddk")]
    pub vddk: VddkOptions,
}

#[cfg(feature = "vddk")]
/// What a `vddk://` source takes besides its URL.
#[derive(Debug, Clone, Default)]
pub struct VddkOptions {
    /// `KEY=VALUE` parameters that override the URL's (see [`VddkParams::set`]).
    pub params: Vec<(String, String)>,
    /// The password (from a file or the environment, never the command line).
    pub password: Option<Secret>,
    /// The checkpoint vSphere counts changes from, for a delta: a disk change id, or the moref
    /// of the snapshot whose change id to start from. The changed areas are read through the
    /// login that finds the disk.
    pub changed_since: Option<String>,
    /// How long a VDDK call may go unanswered before its handle is given up (default:
    /// [`DEFAULT_CALL_TIMEOUT`](crate::source::vddk::params::DEFAULT_CALL_TIMEOUT)).
    pub timeout: Option<std::time::Duration>,
    /// Logins and connections kept across transfers (a daemon's): reused when they fit, and
    /// where the source's connections go when it closes.
    pub sessions: Option<crate::source::vddk::Sessions>,
}

#[cfg(feature = "vddk")]
/// The parameters of a `vddk://` URL with `opts`' overrides and password applied.
pub fn vddk_params(url: &url::Url, opts: &VddkOptions) -> Result<VddkParams> {
    let mut p = VddkParams::from_url(url)?;
    for (k, v) in &opts.params {
        p.set(k, v)?;
    }
    if opts.password.is_some() {
        p.password = opts.password.clone();
    }
    if let Some(t) = opts.timeout {
        p.timeout = t;
    }
    Ok(p)
}

/// What protocol a plain `http(s)://` URL speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceKind {
    /// Decide by scheme: `http(s)://` is a disk image file.
    #[default]
    Auto,
    /// oVirt imageio (`/images/TICKET`).
    Imageio,
}

impl std::str::FromStr for SourceKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(SourceKind::Auto),
            "imageio" => Ok(SourceKind::Imageio),
            _ => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("unknown source kind '{s}' (auto, imageio)"),
            )),
        }
    }
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            connections: 4,
            kind: SourceKind::Auto,
            retry: RetryPolicy::default(),
            retry_stats: Arc::default(),
            format: Format::Auto,
            disk: None,
            #[cfg(feature = "http")]
            checksum: None,
            #[cfg(feature = "http")]
            http: HttpOptions::default(),
            nbd: NbdOptions::default(),
            #[cfg(feature = "http")]
            imageio_transport: Transport::Auto,
            #[cfg(feature = "http")]
            glance_auth: None,
            #[cfg(feature = "vddk")]
            vddk: VddkOptions::default(),
        }
    }
}

/// A source URI, parsed once: which family of source it names, and where.
#[derive(Debug, Clone)]
pub enum SourceUri {
    /// A local file or block device (a plain path or `file://`).
    File(PathBuf),
    /// An NBD export (`nbd://`, `nbd+unix://`).
    Nbd(NbdUri),
    /// A disk image file over HTTP(S).
    Http(url::Url),
    /// An oVirt imageio ticket (`imageio+http(s)://`, or `http(s)://` read as imageio).
    Imageio(url::Url),
    /// An OpenStack Glance image: the Keystone URL and the image id
    /// (`glance+https://KEYSTONE/v3?image=ID`).
    Glance {
        /// The Keystone endpoint.
        keystone: url::Url,
        /// The image id.
        image: String,
    },
    /// A VMware disk through VDDK (`vddk://`; see [`VddkParams::from_url`]).
    Vddk(url::Url),
    /// A built-in synthetic disk (`synth://`).
    Synth(url::Url),
}

fn bad_uri(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::InvalidInput, format!("invalid source URI: {e}"))
}

impl SourceUri {
    /// Parses `uri`; `kind` says whether a plain `http(s)://` URL is an imageio ticket.
    pub fn parse(uri: &str, kind: SourceKind) -> Result<SourceUri> {
        let Some((scheme, _)) = uri.split_once("://") else {
            return Ok(SourceUri::File(PathBuf::from(uri)));
        };
        let scheme = scheme.to_ascii_lowercase();
        let url = || url::Url::parse(uri).map_err(bad_uri);
        let inner = || {
            let rest = uri.split_once('+').map_or(uri, |(_, rest)| rest);
            url::Url::parse(rest).map_err(bad_uri)
        };
        Ok(match scheme.as_str() {
            "nbd" | "nbd+unix" | "nbds" | "nbds+unix" => SourceUri::Nbd(NbdUri::parse(&url()?)?),
            "file" => SourceUri::File(
                url()?
                    .to_file_path()
                    .map_err(|_| Error::new(ErrorKind::InvalidInput, "invalid file URI"))?,
            ),
            "synth" => SourceUri::Synth(url()?),
            "vddk" => SourceUri::Vddk(url()?),
            "imageio+http" | "imageio+https" => SourceUri::Imageio(inner()?),
            "http" | "https" if kind == SourceKind::Imageio => SourceUri::Imageio(url()?),
            "http" | "https" => SourceUri::Http(url()?),
            "glance+http" | "glance+https" => {
                let mut keystone = inner()?;
                let image = keystone
                    .query_pairs()
                    .find(|(k, _)| k == "image")
                    .map(|(_, v)| v.into_owned())
                    .ok_or_else(|| {
                        Error::new(ErrorKind::InvalidInput, "glance URI needs ?image=ID")
                    })?;
                keystone.set_query(None);
                SourceUri::Glance { keystone, image }
            }
            other => return Err(Error::new(
                ErrorKind::Unsupported,
                format!("unknown source scheme '{other}' (nbd, nbd+unix, http, https, imageio+http, imageio+https, glance+http, glance+https, vddk, file, synth)"),
            )),
        })
    }

    /// Whether the URI names a file that may hold an image format (detected unless forced);
    /// protocols that serve a disk (NBD, imageio, VDDK, Glance, synthetic) present it raw.
    fn file_like(&self) -> bool {
        matches!(self, SourceUri::File(_) | SourceUri::Http(_))
    }
}

/// The ranges `(offset, length)` changed since the previous checkpoint, for the sources that
/// can tell: oVirt imageio tickets created with `dirty`, NBD exports with a qemu dirty bitmap
/// ([`NbdOptions::dirty_bitmap`]) and VMware disks (`vddk://`) through vSphere's
/// QueryChangedDiskAreas since [`VddkOptions::changed_since`] (which needs no VDDK).
pub async fn dirty_ranges(uri: &str, opts: &SourceOptions) -> Result<Vec<(u64, u64)>> {
    let parsed = SourceUri::parse(uri, opts.kind)?;
    #[cfg(feature = "vddk")]
    if let SourceUri::Vddk(url) = &parsed {
        let previous = opts.vddk.changed_since.as_deref().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                "vSphere changed areas are counted from a checkpoint: name it",
            )
            .with_hint(Hint::PreviousCheckpoint)
        })?;
        let mut params = vddk_params(url, &opts.vddk)?;
        let d = crate::delta::vsphere::prepare(&mut params, Some(previous)).await?;
        return Ok(d.map(|d| d.ranges().to_vec()).unwrap_or_default());
    }
    match &parsed {
        SourceUri::Nbd(_) if opts.nbd.dirty_bitmap.is_none() => {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "an NBD export's changed ranges come from a qemu dirty bitmap",
            )
            .with_hint(Hint::DirtyBitmap));
        }
        SourceUri::Nbd(_) | SourceUri::Imageio(_) => {}
        // Nothing to connect to for an answer that is known now.
        _ => {
            return Err(unsupported(
                "changed ranges come from oVirt imageio tickets, NBD dirty bitmaps and vSphere (vddk://)",
            )
            .with_hint(Hint::ChangedAreasFile))
        }
    }
    let mut o = opts.clone();
    o.format = Format::Raw;
    o.connections = 1;
    let src = open_parsed(&parsed, &o).await?;
    let tracker = src
        .changes()
        .ok_or_else(|| unsupported(format!("{}: no changed ranges to tell", src.describe())))?;
    let d = crate::delta::DeltaSet::new(src.size(), tracker.changed_ranges().await?)?;
    let _ = src.close().await;
    Ok(d.ranges().to_vec())
}

/// Opens the source named by `uri`, its transient read failures retried as `opts.retry` says.
pub async fn open_source(uri: &str, opts: &SourceOptions) -> Result<Arc<dyn BlockSource>> {
    open_parsed(&SourceUri::parse(uri, opts.kind)?, opts).await
}

/// Opens a parsed source URI (see [`open_source`]).
pub async fn open_parsed(uri: &SourceUri, opts: &SourceOptions) -> Result<Arc<dyn BlockSource>> {
    let src = open_plain(uri, opts).await?;
    // A size a peer or an image claims is checked here; a synthetic disk's is the caller's
    // own (a blank disk of a requested size), checked against the room the target has.
    let claimed = !matches!(uri, SourceUri::Synth(_));
    if claimed {
        crate::check_disk_size(&src.describe(), src.size())?;
    }
    let src = RetrySource::wrap(src, opts.retry, opts.retry_stats.clone());
    let format = match opts.format {
        Format::Auto if !uri.file_like() && opts.disk.is_none() => Format::Raw,
        Format::Auto if !uri.file_like() => Format::Ova,
        f => f,
    };
    let ctx = FormatContext {
        siblings: siblings_of(uri, opts),
        disk: opts.disk.clone(),
    };
    let src = open_format(src, format, &ctx).await?;
    if claimed {
        crate::check_disk_size(&src.describe(), src.size())?;
    }
    Ok(src)
}

/// The disks of the OVA at `uri` (only its descriptor is read).
pub async fn ova_listing(uri: &str, opts: &SourceOptions) -> Result<crate::format::ova::Listing> {
    let src = open_plain(&SourceUri::parse(uri, opts.kind)?, opts).await?;
    let src = RetrySource::wrap(src, opts.retry, opts.retry_stats.clone());
    let src = crate::format::decompress(src).await?;
    crate::format::ova::list(&src).await
}

/// Where the extent files of a VMDK descriptor at `uri` are: next to a file, or at URLs
/// relative to an HTTP one.
fn siblings_of(uri: &SourceUri, opts: &SourceOptions) -> Option<Arc<dyn Siblings>> {
    let at = match uri {
        SourceUri::File(p) => At::Dir(p.parent()?.to_path_buf()),
        #[cfg(feature = "http")]
        SourceUri::Http(u) => At::Url(u.clone()),
        _ => return None,
    };
    Some(Arc::new(NextTo {
        at,
        opts: opts.clone(),
    }))
}

enum At {
    Dir(std::path::PathBuf),
    #[cfg(feature = "http")]
    Url(url::Url),
}

/// Files next to a VMDK descriptor, opened with the descriptor's options and retries.
struct NextTo {
    at: At,
    opts: SourceOptions,
}

#[async_trait::async_trait]
impl Siblings for NextTo {
    async fn open(&self, name: &str) -> Result<Arc<dyn BlockSource>> {
        let name = sibling_name(name)?;
        let src: Arc<dyn BlockSource> = match &self.at {
            At::Dir(d) => {
                let p = if d.as_os_str().is_empty() {
                    Path::new(name).to_path_buf()
                } else {
                    d.join(name)
                };
                Arc::new(FileSource::open(&p)?)
            }
            #[cfg(feature = "http")]
            At::Url(u) => {
                let bad = |why: String| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!("extent file '{name}': {why}"),
                    )
                };
                let url = u.join(name).map_err(|e| bad(e.to_string()))?;
                // Escapes such as %2e%2e/ are resolved by the join: what it gives must still
                // lie in the descriptor's directory.
                let dir = u.join(".").map_err(|e| bad(e.to_string()))?;
                if !url.as_str().starts_with(dir.as_str()) {
                    return Err(bad("not a name next to the descriptor".into()));
                }
                if self.opts.checksum.is_some() {
                    return Err(bad(
                        "a checksum checks one file, and this VMDK's extents are other files"
                            .into(),
                    )
                    .with_hint(Hint::ChecksumOneFile));
                }
                Arc::new(HttpSource::open(url, &self.opts.http, self.opts.connections).await?)
            }
        };
        Ok(RetrySource::wrap(
            src,
            self.opts.retry,
            self.opts.retry_stats.clone(),
        ))
    }
}

/// Opens the source `uri` names, without retries.
async fn open_plain(uri: &SourceUri, opts: &SourceOptions) -> Result<Arc<dyn BlockSource>> {
    Ok(match uri {
        SourceUri::File(p) => Arc::new(FileSource::open(p)?),
        SourceUri::Nbd(u) => Arc::new(
            NbdSource::open(u.clone(), opts.nbd.clone()).await?,
        ),
        SourceUri::Synth(u) => Arc::new(SynthSource::from_url(u)?),
        #[cfg(feature = "http")]
        SourceUri::Imageio(u) => Arc::new(
            ImageioSource::open_with(
                u.clone(),
                &opts.http,
                opts.connections,
                opts.imageio_transport,
            )
            .await?,
        ),
        #[cfg(feature = "vddk")]
        SourceUri::Vddk(u) => {
            // One vSphere login finds the disk and, for a delta, its changed areas.
            let mut params = vddk_params(u, &opts.vddk)?;
            let since = opts.vddk.changed_since.as_deref();
            let sessions = opts.vddk.sessions.clone();
            let changes =
                crate::delta::vsphere::prepare_with(sessions.as_ref(), &mut params, since).await?;
            let src = VddkSource::open_with(params, sessions).await?;
            match changes {
                Some(d) => Arc::new(src.with_changes(d.ranges().to_vec())),
                None => Arc::new(src),
            }
        }
        #[cfg(feature = "http")]
        SourceUri::Glance { keystone, image } => {
            let auth = opts
                .glance_auth
                .clone()
                .unwrap_or_else(GlanceAuth::from_env);
            Arc::new(GlanceSource::open(keystone.clone(), image, &auth, &opts.http).await?)
        }
        #[cfg(feature = "http")]
        SourceUri::Http(u) => Arc::new(
            HttpSource::open_checked(
                u.clone(),
                &opts.http,
                opts.connections,
                opts.checksum.clone(),
            )
            .await?,
        ),
        #[allow(unreachable_patterns)]
        _ => {
            return Err(unsupported(
                "this build of transfer-core cannot open that kind of source (it lacks the http or vddk feature)",
            ))
        }
    })
}
