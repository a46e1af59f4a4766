//! The checkpoint chain of a target: which checkpoints have been applied to it, in order, kept
//! in a small JSON file (next to a file target, or a path the caller names for a block device).
//!
//! A full copy starts a chain. A delta from checkpoint P to checkpoint C is applied only when the
//! last checkpoint applied is P, or when it is C itself, reached from P (the same delta run
//! again, e.g. after a crash: its writes are absolute, so running it twice gives the same
//! disk). Anything else is refused before a byte is written: applying a delta on top of the
//! wrong base silently corrupts the disk. The file is replaced atomically, and only after the
//! copy has been flushed.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::error::{Error, ErrorKind, Result};

/// One applied checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The checkpoint (a snapshot moref, a changeId, a bitmap or ticket name...).
    pub id: String,
    /// The checkpoint the delta started from; `None` for a full copy.
    pub previous: Option<String>,
    /// The source size then.
    pub size: u64,
    /// When it was applied (seconds since the Unix epoch).
    pub time: u64,
}

/// The chain recorded for one target.
#[derive(Debug, Clone)]
pub struct Chain {
    path: PathBuf,
    entries: Vec<Entry>,
}

/// Where the chain of a file target is kept by default: `TARGET.checkpoints.json`.
pub fn default_state_path(target: &Path) -> PathBuf {
    let mut p = target.as_os_str().to_owned();
    p.push(".checkpoints.json");
    PathBuf::from(p)
}

/// Removes the chain at `path`, if there is one (a full copy ends the old chain: it no longer
/// describes the target and must not let a later delta through).
pub fn forget(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            sync_dir(path);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(
            format!("removing the old checkpoint state {}", path.display()),
            e,
        )),
    }
}

/// Makes a rename or removal in `path`'s directory durable (best effort).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

impl Chain {
    /// Reads the chain at `path` (none yet: an empty chain).
    pub fn load(path: &Path) -> Result<Chain> {
        let body = match crate::sys::read_small_file(path, crate::engine::journal::MAX_STATE_FILE) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Chain {
                    path: path.to_owned(),
                    entries: Vec::new(),
                })
            }
            Err(e) => {
                return Err(Error::io(
                    format!("reading checkpoint state {}", path.display()),
                    e,
                ))
            }
        };
        Chain::parse(path, &body)
    }

    /// Reads the chain kept at `path` from its contents `body` (a state file, untrusted: it
    /// may be damaged or written by hand).
    pub fn parse(path: &Path, body: &[u8]) -> Result<Chain> {
        let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
            ErrorKind::InvalidInput.about(
                format_args!("checkpoint state {}", path.display()),
                format!("not JSON: {e}"),
            )
        })?;
        let list = v["checkpoints"].as_array().ok_or_else(|| {
            ErrorKind::InvalidInput.about(
                format_args!("checkpoint state {}", path.display()),
                "no 'checkpoints' list",
            )
        })?;
        let mut entries = Vec::with_capacity(list.len());
        for (i, e) in list.iter().enumerate() {
            let id = e["id"].as_str().filter(|s| !s.is_empty()).ok_or_else(|| {
                ErrorKind::InvalidInput.about(
                    format_args!("checkpoint state {}", path.display()),
                    format!("entry {i} has no 'id'"),
                )
            })?;
            let previous = match &e["previous"] {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s.clone()),
                _ => {
                    return Err(ErrorKind::InvalidInput.about(
                        format_args!("checkpoint state {}", path.display()),
                        format!("entry {i}: bad 'previous'"),
                    ))
                }
            };
            entries.push(Entry {
                id: id.to_owned(),
                previous,
                size: e["size"].as_u64().unwrap_or(0),
                time: e["time"].as_u64().unwrap_or(0),
            });
        }
        Ok(Chain {
            path: path.to_owned(),
            entries,
        })
    }

    /// The checkpoints applied, oldest first.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The last checkpoint applied.
    pub fn last(&self) -> Option<&Entry> {
        self.entries.last()
    }

    /// Checks that checkpoint `id` may be applied: as a full copy (`previous` = `None`, always)
    /// or as a delta from `previous`.
    pub fn check(&self, id: &str, previous: Option<&str>) -> Result<()> {
        let Some(prev) = previous else {
            return Ok(());
        };
        let refused = |why: String| {
            Err(Error::new(
                ErrorKind::InvalidInput,
                format!("delta {prev} -> {id} refused: {why}; a full copy is needed"),
            ))
        };
        if prev == id {
            return refused("a delta goes from one checkpoint to another".to_owned());
        }
        match self.last() {
            None => refused(format!(
                "no checkpoint has been applied to this target ({} has none)",
                self.path.display()
            )),
            Some(last) if last.id == prev => Ok(()),
            Some(last) if last.id == id && last.previous.as_deref() == Some(prev) => Ok(()),
            Some(last) => refused(format!(
                "the target's last checkpoint is {} (out of order)",
                last.id
            )),
        }
    }

    /// Records that checkpoint `id` was applied (after [`Chain::check`] and a flushed copy). A
    /// full copy starts the chain again; the same delta run twice is recorded once.
    pub fn record(&mut self, id: &str, previous: Option<&str>, size: u64) -> Result<()> {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let entry = Entry {
            id: id.to_owned(),
            previous: previous.map(str::to_owned),
            size,
            time,
        };
        match previous {
            None => self.entries = vec![entry],
            Some(_) if self.last().is_some_and(|l| l.id == id) => {
                *self.entries.last_mut().expect("a last entry") = entry
            }
            Some(_) => self.entries.push(entry),
        }
        self.save()
    }

    /// Writes the chain: a temporary file, synced, renamed over the old one.
    fn save(&self) -> Result<()> {
        let list: Vec<serde_json::Value> = self
            .entries
            .iter()
            .map(|e| json!({"id": e.id, "previous": e.previous, "size": e.size, "time": e.time}))
            .collect();
        let body = serde_json::to_vec_pretty(&json!({"version": 1, "checkpoints": list})).map_err(
            |e| {
                ErrorKind::InvalidInput
                    .about(format_args!("checkpoint state {}", &self.path.display()), e)
            },
        )?;
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let ctx = |what: &str| format!("{what} checkpoint state {}", self.path.display());
        let mut f = crate::sys::create_nofollow(&tmp).map_err(|e| Error::io(ctx("writing"), e))?;
        f.write_all(&body)
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io(ctx("writing"), e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| Error::io(ctx("replacing"), e))?;
        sync_dir(&self.path);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> (tempfile::TempDir, Chain) {
        let d = tempfile::tempdir().unwrap();
        let c = Chain::load(&d.path().join("t.checkpoints.json")).unwrap();
        (d, c)
    }

    #[test]
    fn deltas_follow_the_chain_in_order() {
        let (_d, mut c) = chain();
        assert!(c.check("s2", Some("s1")).is_err(), "no base yet");
        c.check("s1", None).unwrap();
        c.record("s1", None, 100).unwrap();
        c.check("s2", Some("s1")).unwrap();
        c.record("s2", Some("s1"), 100).unwrap();
        let e = c.check("s4", Some("s3")).unwrap_err();
        assert!(e.to_string().contains("last checkpoint is s2"), "{e}");
        assert!(c.check("s2", Some("s0")).is_err());
        assert!(c.check("s2", Some("s2")).is_err(), "a delta to itself");
        c.check("s3", Some("s2")).unwrap();
    }

    #[test]
    fn the_same_delta_may_run_again_and_is_recorded_once() {
        let (_d, mut c) = chain();
        c.record("s1", None, 100).unwrap();
        c.record("s2", Some("s1"), 100).unwrap();
        c.check("s2", Some("s1")).unwrap();
        c.record("s2", Some("s1"), 100).unwrap();
        assert_eq!(c.entries().len(), 2);
    }

    #[test]
    fn the_chain_survives_a_reload_and_a_full_copy_restarts_it() {
        let (d, mut c) = chain();
        c.record("s1", None, 100).unwrap();
        c.record("s2", Some("s1"), 200).unwrap();
        let again = Chain::load(&d.path().join("t.checkpoints.json")).unwrap();
        assert_eq!(again.entries(), c.entries());
        assert_eq!(again.last().unwrap().size, 200);
        c.record("s9", None, 300).unwrap();
        assert_eq!(c.entries().len(), 1);
    }

    #[test]
    fn a_damaged_state_file_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        for body in ["{", "{}", r#"{"checkpoints":[{"previous":null}]}"#] {
            std::fs::write(&p, body).unwrap();
            let e = Chain::load(&p).unwrap_err();
            assert!(e.to_string().contains("checkpoint state"), "{e}");
        }
    }

    #[test]
    fn the_default_state_path_sits_next_to_the_target() {
        assert_eq!(
            default_state_path(Path::new("/data/disk.img")),
            PathBuf::from("/data/disk.img.checkpoints.json")
        );
    }
}
