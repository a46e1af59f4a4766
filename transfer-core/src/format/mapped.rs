//! One reader for the images that map a guest disk onto a file in fixed units through tables
//! (qcow2 clusters, sparse VMDK grains). A format says where each unit is ([`Mapping`]); the
//! [`MappedSource`] does the rest once for all of them: reads split per unit, plain units
//! fetched in contiguous runs and compressed ones in spans inflated on the blocking pool
//! (`batch`), extents from the tables, other handles sharing the tables.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::buffer::Buffer;
use crate::error::{Error, ErrorKind, Result};
use crate::extent::{Extent, ExtentKind};
use crate::format::batch::{push_run, read_packed, read_runs, Packed};
use crate::format::unit_extents;
use crate::source::{BlockSource, SourceCaps};

/// Where one unit of the guest disk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Not allocated: reads as zeros, a hole.
    Hole,
    /// Allocated as zeros.
    Zero,
    /// Stored as it is, starting at this file offset.
    Plain(u64),
    /// Stored compressed.
    Packed {
        /// Where its compressed bytes start in the file.
        host: u64,
        /// At most how many compressed bytes there are.
        max: u64,
        /// How many bytes of the unit must inflate (less than a unit only at the disk's end).
        need: usize,
    },
}

/// What a table-mapped image format knows; shared by every handle of one image.
pub trait Mapping: Send + Sync + 'static {
    /// The image, for messages.
    fn describe(&self) -> &str;
    /// The guest disk's size.
    fn size(&self) -> u64;
    /// The unit (cluster, grain) size in bytes.
    fn unit(&self) -> u64;
    /// The request size to prefer, given what the file's source prefers.
    fn preferred_request(&self, inner: &SourceCaps) -> usize;
    /// Where unit `index` is, reading tables from `inner` when they are not cached.
    fn locate(
        &self,
        inner: &dyn BlockSource,
        index: u64,
    ) -> impl Future<Output = Result<Unit>> + Send;
    /// Inflates compressed unit bytes `raw` into `out` (a unit long); `part` says which.
    fn inflate(&self, raw: &[u8], out: &mut [u8], part: &Packed) -> Result<()>;
}

/// A table-mapped image on `inner`, read as a raw disk.
pub struct MappedSource<M: Mapping> {
    inner: Arc<dyn BlockSource>,
    map: Arc<M>,
}

impl<M: Mapping> MappedSource<M> {
    /// The image `map` describes, whose file is `inner`.
    pub fn new(inner: Arc<dyn BlockSource>, map: M) -> Self {
        MappedSource {
            inner,
            map: Arc::new(map),
        }
    }

    /// The image's mapping.
    pub fn mapping(&self) -> &M {
        &self.map
    }
}

#[async_trait]
impl<M: Mapping> BlockSource for MappedSource<M> {
    fn describe(&self) -> String {
        self.map.describe().to_owned()
    }

    fn fingerprint(&self) -> Option<String> {
        self.inner.fingerprint()
    }

    fn size(&self) -> u64 {
        self.map.size()
    }

    fn caps(&self) -> SourceCaps {
        let inner = self.inner.caps();
        SourceCaps {
            can_extents: true,
            preferred_request: self.map.preferred_request(&inner),
            ..inner
        }
    }

    async fn read_at(&self, offset: u64, mut buf: Buffer) -> Result<Buffer> {
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|e| e > self.size()) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{}: read of {len} bytes at {offset} past the end",
                    self.map.describe()
                ),
            ));
        }
        let unit = self.map.unit();
        let (mut runs, mut packed) = (Vec::new(), Vec::new());
        let mut pos = offset;
        while pos < offset + len {
            let within = pos % unit;
            let n = (unit - within).min(offset + len - pos) as usize;
            let at = (pos - offset) as usize;
            match self.map.locate(&*self.inner, pos / unit).await? {
                Unit::Hole | Unit::Zero => buf.as_mut_slice()[at..at + n].fill(0),
                Unit::Plain(host) => push_run(&mut runs, at, host + within, n),
                Unit::Packed { host, max, need } => packed.push(Packed {
                    at,
                    within,
                    len: n,
                    host,
                    max,
                    need,
                }),
            }
            pos += n as u64;
        }
        read_runs(&*self.inner, &runs, &mut buf).await?;
        if packed.is_empty() {
            return Ok(buf);
        }
        let map = self.map.clone();
        read_packed(
            &*self.inner,
            unit as usize,
            packed,
            buf,
            move |raw, out, p| map.inflate(raw, out, p),
        )
        .await
    }

    async fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        unit_extents(offset, len, self.size(), self.map.unit(), |i| async move {
            Ok(match self.map.locate(&*self.inner, i).await? {
                Unit::Hole => ExtentKind::Hole,
                Unit::Zero => ExtentKind::Zero,
                Unit::Plain(_) | Unit::Packed { .. } => ExtentKind::Data,
            })
        })
        .await
    }

    async fn open_another(&self) -> Result<Arc<dyn BlockSource>> {
        Ok(Arc::new(MappedSource {
            inner: self.inner.open_another().await?,
            map: self.map.clone(),
        }))
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// Decodes a table of `N`-byte entries with `decode` (`u64::from_be_bytes`,
/// `u32::from_le_bytes`, ...); a partial entry at the end is left out.
pub fn entries<const N: usize, T>(b: &[u8], decode: fn([u8; N]) -> T) -> Vec<T> {
    b.chunks_exact(N)
        .map(|c| decode(c.try_into().expect("N bytes")))
        .collect()
}

/// Mapping tables (qcow2 L2 tables, VMDK grain tables) read on demand and kept, at most `max`
/// of them; when full the cache starts over.
pub struct TableCache<K, T> {
    tables: Mutex<HashMap<K, Arc<Vec<T>>>>,
    max: usize,
}

impl<K: Eq + Hash + Copy, T> TableCache<K, T> {
    /// A cache of at most `max` tables.
    pub fn new(max: usize) -> Self {
        TableCache {
            tables: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// The table `key`, from the cache or from `load`.
    pub async fn get<F>(&self, key: K, load: F) -> Result<Arc<Vec<T>>>
    where
        F: Future<Output = Result<Vec<T>>>,
    {
        let cached = self
            .tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some(t) = cached {
            return Ok(t);
        }
        let t = Arc::new(load.await?);
        let mut cache = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.max {
            cache.clear();
        }
        cache.insert(key, t.clone());
        Ok(t)
    }
}
