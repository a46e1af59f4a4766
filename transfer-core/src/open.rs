//! Opening sources by URI: `nbd://`, `nbd+unix://`, `http://`, `https://`, `file://` (or a plain
//! path), `synth://`, `vddk://`.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::format::{open_format, sibling_name, DiskChoice, Format, FormatContext, Siblings};
use crate::http::HttpOptions;
use crate::source::file::FileSource;
use crate::source::glance::{GlanceAuth, GlanceSource};
use crate::source::http::HttpSource;
use crate::source::imageio::{ImageioSource, Transport};
use crate::source::nbd::{NbdSource, NbdUri};
use crate::source::retry::{RetryPolicy, RetrySource, RetryStats};
use crate::source::synth::SynthSource;
use crate::source::vddk::{Secret, VddkParams, VddkSource};
use crate::source::BlockSource;

/// Options that apply while opening a source.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Ask NBD servers for structured replies and block status.
    pub nbd_structured: bool,
    /// TLS, headers and proxies of HTTP-family sources.
    pub http: HttpOptions,
    /// Parallel connections an HTTP source may use.
    pub connections: usize,
    /// How to read a plain `http(s)://` URL: `auto` (a disk image file) or a named protocol
    /// (`imageio`).
    pub kind: SourceKind,
    /// Keystone credentials for `glance+` URIs (default: the `OS_*` variables).
    pub glance_auth: Option<GlanceAuth>,
    /// How imageio sources reach the daemon (its local socket when it can, by default).
    pub imageio_transport: Transport,
    /// `vddk://` parameters given apart from the URL, and the password.
    pub vddk: VddkOptions,
    /// The qemu dirty bitmap of an NBD export whose changed ranges [`dirty_ranges`] reports.
    pub nbd_dirty_bitmap: Option<String>,
    /// The checkpoint [`dirty_ranges`] counts changes from, for vSphere (`vddk://`): a disk
    /// change id, or the moref of the snapshot whose change id to start from.
    pub changed_since: Option<String>,
    /// How failed reads are retried on fresh handles ([`RetrySource`]).
    pub retry: RetryPolicy,
    /// What the retries did, shared by every handle of the source.
    pub retry_stats: Arc<RetryStats>,
    /// How the source's bytes are read: an image format, detected or forced.
    pub format: Format,
    /// Which disk of an OVA to read.
    pub disk: Option<DiskChoice>,
}

/// What a `vddk://` source takes besides its URL.
#[derive(Debug, Clone, Default)]
pub struct VddkOptions {
    /// `KEY=VALUE` parameters that override the URL's (see [`VddkParams::set`]).
    pub params: Vec<(String, String)>,
    /// The password (from a file or the environment, never the command line).
    pub password: Option<Secret>,
}

/// The parameters of a `vddk://` URI with `opts`' overrides and password applied.
pub fn vddk_params(uri: &str, opts: &VddkOptions) -> Result<VddkParams> {
    let url = url::Url::parse(uri)
        .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("invalid source URI: {e}")))?;
    let mut p = VddkParams::from_url(&url)?;
    for (k, v) in &opts.params {
        p.set(k, v)?;
    }
    if opts.password.is_some() {
        p.password = opts.password.clone();
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
            nbd_structured: true,
            http: HttpOptions::default(),
            connections: 4,
            kind: SourceKind::Auto,
            glance_auth: None,
            imageio_transport: Transport::Auto,
            vddk: VddkOptions::default(),
            nbd_dirty_bitmap: None,
            changed_since: None,
            retry: RetryPolicy::default(),
            retry_stats: Arc::default(),
            format: Format::Auto,
            disk: None,
        }
    }
}

/// The ticket URL when `uri` names an oVirt imageio ticket (`imageio+http(s)://`, or
/// `http(s)://` with [`SourceKind::Imageio`]), `None` for any other source.
fn imageio_url(uri: &str, opts: &SourceOptions) -> Option<Result<url::Url>> {
    let scheme = uri.split("://").next().unwrap_or("").to_ascii_lowercase();
    let plain = match scheme.as_str() {
        "imageio+http" | "imageio+https" => uri.split_once('+').map_or(uri, |(_, rest)| rest),
        "http" | "https" if opts.kind == SourceKind::Imageio => uri,
        _ => return None,
    };
    Some(
        url::Url::parse(plain)
            .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("invalid source URI: {e}"))),
    )
}

/// Opens an oVirt imageio ticket URL (`http(s)://host:54322/images/TICKET`).
async fn open_imageio(
    url: url::Url,
    opts: &SourceOptions,
    connections: usize,
) -> Result<ImageioSource> {
    ImageioSource::open_with(url, &opts.http, connections, opts.imageio_transport).await
}

/// The ranges `(offset, length)` changed since the previous checkpoint, for the sources that
/// can tell: oVirt imageio tickets created with `dirty` (`imageio+http(s)://`, or `http(s)://`
/// with [`SourceKind::Imageio`]), NBD exports with a qemu dirty bitmap
/// ([`SourceOptions::nbd_dirty_bitmap`]) and VMware disks (`vddk://`) through vSphere's
/// QueryChangedDiskAreas since [`SourceOptions::changed_since`].
pub async fn dirty_ranges(uri: &str, opts: &SourceOptions) -> Result<Vec<(u64, u64)>> {
    if let Some(url) = imageio_url(uri, opts) {
        return open_imageio(url?, opts, 1).await?.dirty_extents().await;
    }
    let scheme = uri.split("://").next().unwrap_or("").to_ascii_lowercase();
    if scheme == "vddk" {
        let previous = opts.changed_since.as_deref().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                "vSphere changed areas are counted from a checkpoint: name it (--previous-checkpoint CHANGE_ID or SNAPSHOT)",
            )
        })?;
        let params = vddk_params(uri, &opts.vddk)?;
        let d = crate::delta::vsphere::vddk_changed_areas(&params, previous).await?;
        return Ok(d.ranges().to_vec());
    }
    match (&opts.nbd_dirty_bitmap, scheme.as_str()) {
        (Some(bitmap), "nbd" | "nbd+unix") => {
            let url = url::Url::parse(uri).map_err(|e| {
                Error::new(ErrorKind::InvalidInput, format!("invalid source URI: {e}"))
            })?;
            crate::source::nbd::dirty_ranges(&NbdUri::parse(&url)?, bitmap).await
        }
        (None, "nbd" | "nbd+unix") => Err(Error::new(
            ErrorKind::InvalidInput,
            "an NBD export's changed ranges come from a qemu dirty bitmap: name it (--dirty-bitmap NAME)",
        )),
        _ => Err(Error::new(
            ErrorKind::Unsupported,
            "changed ranges come from oVirt imageio tickets (imageio+http(s):// or --source-kind imageio), NBD dirty bitmaps and vSphere (vddk://); otherwise pass them in a file (--changed-areas)",
        )),
    }
}

/// Opens the source named by `uri`, its transient read failures retried as `opts.retry` says.
pub async fn open_source(uri: &str, opts: &SourceOptions) -> Result<Arc<dyn BlockSource>> {
    let src = open_plain(uri, opts).await?;
    let src = RetrySource::wrap(src, opts.retry, opts.retry_stats.clone());
    // Image files (paths, file://, plain HTTP) are sniffed; protocols that serve a disk (NBD,
    // imageio, VDDK) present it raw unless a format is forced.
    let scheme = uri.split("://").next().unwrap_or("").to_ascii_lowercase();
    let file_like = !uri.contains("://")
        || (matches!(scheme.as_str(), "file" | "http" | "https")
            && imageio_url(uri, opts).is_none());
    let format = match opts.format {
        Format::Auto if !file_like && opts.disk.is_none() => Format::Raw,
        Format::Auto if !file_like => Format::Ova,
        f => f,
    };
    let ctx = FormatContext {
        siblings: siblings_of(uri, opts),
        disk: opts.disk.clone(),
    };
    open_format(src, format, &ctx).await
}

/// The disks of the OVA at `uri` (only its descriptor is read).
pub async fn ova_listing(uri: &str, opts: &SourceOptions) -> Result<crate::format::ova::Listing> {
    let src = open_plain(uri, opts).await?;
    let src = RetrySource::wrap(src, opts.retry, opts.retry_stats.clone());
    let src = crate::format::decompress(src).await?;
    crate::format::ova::list(&src).await
}

/// Where the extent files of a VMDK descriptor at `uri` are: next to a file, or at URLs
/// relative to an HTTP one.
fn siblings_of(uri: &str, opts: &SourceOptions) -> Option<Arc<dyn Siblings>> {
    let scheme = uri.split("://").next().unwrap_or("").to_ascii_lowercase();
    let dir = if !uri.contains("://") {
        Path::new(uri).parent().map(Path::to_path_buf)
    } else if scheme == "file" {
        url::Url::parse(uri)
            .ok()?
            .to_file_path()
            .ok()?
            .parent()
            .map(Path::to_path_buf)
    } else if matches!(scheme.as_str(), "http" | "https") && imageio_url(uri, opts).is_none() {
        return Some(Arc::new(NextTo {
            at: At::Url(url::Url::parse(uri).ok()?),
            opts: opts.clone(),
        }));
    } else {
        None
    };
    Some(Arc::new(NextTo {
        at: At::Dir(dir?),
        opts: opts.clone(),
    }))
}

enum At {
    Dir(std::path::PathBuf),
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
                if self.opts.http.checksum.is_some() {
                    return Err(bad(
                        "--checksum checks one file, and this VMDK's extents are other files"
                            .into(),
                    ));
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

/// Opens the source named by `uri`, without retries.
async fn open_plain(uri: &str, opts: &SourceOptions) -> Result<Arc<dyn BlockSource>> {
    if !uri.contains("://") {
        return Ok(Arc::new(FileSource::open(Path::new(uri))?));
    }
    if let Some(url) = imageio_url(uri, opts) {
        return Ok(Arc::new(open_imageio(url?, opts, opts.connections).await?));
    }
    let scheme = uri.split("://").next().unwrap_or("").to_ascii_lowercase();
    let parsed = || {
        url::Url::parse(uri)
            .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("invalid source URI: {e}")))
    };
    match scheme.as_str() {
        "nbd" | "nbd+unix" | "nbds" | "nbds+unix" => {
            let u = NbdUri::parse(&parsed()?)?;
            Ok(Arc::new(NbdSource::connect(u, opts.nbd_structured).await?))
        }
        "file" => {
            let p = parsed()?
                .to_file_path()
                .map_err(|_| Error::new(ErrorKind::InvalidInput, "invalid file URI"))?;
            Ok(Arc::new(FileSource::open(&p)?))
        }
        "synth" => Ok(Arc::new(SynthSource::from_url(&parsed()?)?)),
        "vddk" => {
            let mut params = vddk_params(uri, &opts.vddk)?;
            crate::delta::vsphere::resolve_vm(&mut params).await?;
            Ok(Arc::new(VddkSource::open(params).await?))
        }
        "glance+http" | "glance+https" => {
            let plain = uri.split_once('+').map(|(_, rest)| rest).unwrap_or(uri);
            let mut keystone = url::Url::parse(plain)
                .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("invalid source URI: {e}")))?;
            let image = keystone
                .query_pairs()
                .find(|(k, _)| k == "image")
                .map(|(_, v)| v.into_owned())
                .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "glance URI needs ?image=ID"))?;
            keystone.set_query(None);
            let auth = opts.glance_auth.clone().unwrap_or_else(GlanceAuth::from_env);
            Ok(Arc::new(GlanceSource::open(keystone, &image, &auth, &opts.http).await?))
        }
        "http" | "https" => Ok(Arc::new(
            HttpSource::open(parsed()?, &opts.http, opts.connections).await?,
        )),
        other => Err(Error::new(
            ErrorKind::Unsupported,
            format!("unknown source scheme '{other}' (nbd, nbd+unix, http, https, imageio+http, imageio+https, glance+http, glance+https, vddk, file, synth)"),
        )),
    }
}
