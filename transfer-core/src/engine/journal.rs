//! The resume journal: which work items of a copy are on the target for sure. The engine marks
//! an item when all of its writes have returned, and persists the marks only after a flush of
//! the target that covers them, so a mark never claims data a crash could lose. A restarted
//! copy with the same identity (source, size, plan) skips the marked items; any difference
//! starts over. The file is removed only after the final flush.
//!
//! The file is small JSON (the marks are a hex bitmap, 2 KiB for 1 TiB of 64 MiB items),
//! replaced atomically: written to a temporary file, synced, renamed, and the directory synced.
//! Parsing is apart from I/O ([`parse`], [`render`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};

/// The journal format's version.
const VERSION: u64 = 1;
/// The largest plan a journal describes (16 M items: 1 PiB of 64 MiB items).
const MAX_ITEMS: u64 = 1 << 24;

/// Largest state file ferry reads (a journal, a checkpoint chain, a changed-areas list): a
/// journal of the largest plan (16 M items) fits with room to spare.
pub const MAX_STATE_FILE: u64 = 256 << 20;

/// What a journal file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalState {
    /// Who wrote it: the source and the plan (see [`Journal::open`]).
    pub identity: String,
    /// Work items in the plan.
    pub items: usize,
    /// Which items are on the target.
    pub done: Vec<bool>,
}

/// Reads a journal file's bytes (`path` names it in messages).
pub fn parse(bytes: &[u8], path: &str) -> Result<JournalState> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| ErrorKind::Protocol.about(format_args!("resume journal {}", path), e))?;
    if v["ferry_journal"].as_u64() != Some(VERSION) {
        return Err(ErrorKind::Protocol.about(
            format_args!("resume journal {}", path),
            "not a ferry journal of version 1",
        ));
    }
    let identity = v["identity"]
        .as_str()
        .ok_or_else(|| {
            ErrorKind::Protocol.about(format_args!("resume journal {}", path), "no identity")
        })?
        .to_owned();
    let items = v["items"]
        .as_u64()
        .filter(|n| *n <= MAX_ITEMS)
        .ok_or_else(|| {
            ErrorKind::Protocol.about(
                format_args!("resume journal {}", path),
                "no item count, or an impossible one",
            )
        })? as usize;
    let hex = v["done"].as_str().ok_or_else(|| {
        ErrorKind::Protocol.about(format_args!("resume journal {}", path), "no done map")
    })?;
    if hex.len() != items.div_ceil(8) * 2 {
        return Err(ErrorKind::Protocol.about(
            format_args!("resume journal {}", path),
            "the done map does not match the item count",
        ));
    }
    let mut done = Vec::with_capacity(items);
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let byte = std::str::from_utf8(pair)
            .ok()
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or_else(|| {
                ErrorKind::Protocol.about(
                    format_args!("resume journal {}", path),
                    "the done map is not hex",
                )
            })?;
        for bit in 0..8 {
            if i * 8 + bit < items {
                done.push(byte & (1 << bit) != 0);
            } else if byte & (1 << bit) != 0 {
                return Err(ErrorKind::Protocol.about(
                    format_args!("resume journal {}", path),
                    "the done map marks items past the plan",
                ));
            }
        }
    }
    Ok(JournalState {
        identity,
        items,
        done,
    })
}

/// The identity of a copy of `source` restricted to `delta` when there is one: what a journal
/// must match to be resumed. It holds the source's description and size, a digest of `uri`
/// (the whole source URI, query included, without its password) and of what the source knows
/// of its content's version ([`BlockSource::fingerprint`](crate::source::BlockSource::fingerprint)),
/// and a digest of the delta's ranges. `name` replaces description and URI when the caller
/// knows a steadier one (an oVirt disk id rather than a ticket URL that changes each time).
pub fn identity(
    source: &dyn crate::source::BlockSource,
    uri: Option<&str>,
    name: Option<&str>,
    delta: Option<&crate::delta::DeltaSet>,
) -> String {
    use sha2::Digest;
    let digest = |parts: &mut dyn Iterator<Item = Vec<u8>>| {
        let mut h = sha2::Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let mut id = match name {
        Some(n) => n.to_owned(),
        None => {
            let mut what = source.describe();
            if let Some(u) = uri {
                what.push_str(" uri ");
                what.push_str(&digest(&mut std::iter::once(
                    without_password(u).into_bytes(),
                )));
            }
            what
        }
    };
    id.push_str(&format!(" size {}", source.size()));
    if let Some(f) = source.fingerprint() {
        id.push_str(" version ");
        id.push_str(&digest(&mut std::iter::once(f.into_bytes())));
    }
    match delta {
        None => id.push_str(" full"),
        Some(d) => {
            let mut ranges = d.ranges().iter().map(|(o, l)| {
                let mut b = o.to_le_bytes().to_vec();
                b.extend_from_slice(&l.to_le_bytes());
                b
            });
            id.push_str(" delta ");
            id.push_str(&digest(&mut ranges));
        }
    }
    id
}

/// `uri` without the password of its user part (a path stays as it is).
fn without_password(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => uri.to_owned(),
    }
}

/// A journal file's bytes.
pub fn render(state: &JournalState) -> Vec<u8> {
    let mut hex = String::with_capacity(state.items.div_ceil(8) * 2);
    for chunk in state.done.chunks(8) {
        let byte = chunk
            .iter()
            .enumerate()
            .fold(0u8, |b, (i, &d)| if d { b | 1 << i } else { b });
        hex.push_str(&format!("{byte:02x}"));
    }
    let v = serde_json::json!({
        "ferry_journal": VERSION,
        "identity": state.identity,
        "items": state.items,
        "done": hex,
    });
    let mut out = v.to_string().into_bytes();
    out.push(b'\n');
    out
}

/// A copy's journal: the persisted marks and the ones waiting for a flush.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    identity: String,
    inner: Mutex<Marks>,
}

#[derive(Debug, Default)]
struct Marks {
    /// Items of the plan (0 until the engine binds the journal to its plan).
    items: usize,
    /// Marks from the file, trusted for skipping.
    resumed: Vec<bool>,
    /// Items complete on the target (resumed ones included), persisted or not.
    done: Vec<bool>,
    /// Whether `done` has marks the file does not have yet.
    dirty: bool,
}

impl Journal {
    /// Opens the journal at `path` for a copy of `identity` (a description of the source and
    /// what is copied from it: a change there must start over). Returns it and whether it
    /// resumes an earlier copy (its file exists with the same identity); a file for another
    /// copy, or an unreadable one, is replaced.
    pub fn open(path: &Path, identity: &str) -> Result<(Journal, bool)> {
        let shown = path.display().to_string();
        let resumed = match crate::sys::read_small_file(path, MAX_STATE_FILE) {
            Ok(bytes) => match parse(&bytes, &shown) {
                Ok(s) if s.identity == identity => Some(s),
                Ok(_) => {
                    tracing::info!("resume journal {shown} is for another copy: starting over");
                    None
                }
                Err(e) => {
                    tracing::warn!("{e}: starting over");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(format!("reading resume journal {shown}"), e)),
        };
        let resuming = resumed.is_some();
        let marks = match resumed {
            Some(s) => Marks {
                items: s.items,
                resumed: s.done.clone(),
                done: s.done,
                dirty: false,
            },
            None => Marks::default(),
        };
        Ok((
            Journal {
                path: path.to_owned(),
                identity: identity.to_owned(),
                inner: Mutex::new(marks),
            },
            resuming,
        ))
    }

    /// Binds the journal to a plan of `items` work items; returns which are already done. A
    /// journal written for another plan is forgotten (everything is copied again).
    pub fn bind(&self, items: usize) -> Vec<bool> {
        let mut m = self.lock();
        if m.items != items || m.resumed.len() != items {
            if m.resumed.iter().any(|d| *d) {
                tracing::info!(
                    "resume journal {} describes another plan: starting over",
                    self.path.display()
                );
            }
            *m = Marks {
                items,
                resumed: vec![false; items],
                done: vec![false; items],
                dirty: true,
            };
        }
        m.resumed.clone()
    }

    /// Forgets every mark (the target was found not to hold what they claim): everything is
    /// copied again, and the file says so at its next update.
    pub fn start_over(&self) {
        let mut m = self.lock();
        let items = m.items;
        *m = Marks {
            items,
            resumed: vec![false; items],
            done: vec![false; items],
            dirty: true,
        };
    }

    /// Marks item `i` as written (all its writes returned; not yet flushed).
    pub fn complete(&self, i: usize) {
        let mut m = self.lock();
        if let Some(d) = m.done.get_mut(i) {
            *d = true;
            m.dirty = true;
        }
    }

    /// The marks to persist once a flush has covered them: call before the flush, then
    /// [`Journal::persist`] with the result after it.
    pub fn snapshot(&self) -> Option<Vec<bool>> {
        let m = self.lock();
        m.dirty.then(|| m.done.clone())
    }

    /// Writes `done` (from [`Journal::snapshot`], taken before a flush of the target that
    /// has completed since) to the file, atomically.
    pub fn persist(&self, done: Vec<bool>) -> Result<()> {
        let state = JournalState {
            identity: self.identity.clone(),
            items: done.len(),
            done,
        };
        {
            let mut m = self.lock();
            if m.done == state.done {
                m.dirty = false;
            }
        }
        write_atomically(&self.path, &render(&state))
    }

    /// Removes the file: the copy is complete and flushed.
    pub fn finish(&self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(
                format!("removing resume journal {}", self.path.display()),
                e,
            )),
        }
    }

    /// Whether any item is marked done (persisted or not).
    pub fn has_progress(&self) -> bool {
        self.lock().done.iter().any(|d| *d)
    }

    /// The journal's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Marks> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The journal of a copy into the file `target`, kept beside it (`TARGET.ferry-journal`), as
/// the pod modes keep one (they always resume: a pod restarted after an eviction carries on).
/// None for a block device, which has no room beside it. A journal whose target is gone is
/// dropped first. Returns the journal and whether it resumes an earlier copy.
pub fn beside(target: &Path, identity: &str) -> Result<Option<(Journal, bool)>> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(target).ok();
    if meta
        .as_ref()
        .is_some_and(|m| m.file_type().is_block_device())
    {
        return Ok(None);
    }
    let mut path = target.as_os_str().to_owned();
    path.push(".ferry-journal");
    let path = PathBuf::from(path);
    if meta.is_none() {
        let _ = std::fs::remove_file(&path);
    }
    Journal::open(&path, identity).map(Some)
}

/// Cleans up after a failed copy into `target`: a target this run `created` is removed (with
/// its journal) unless the journal records work on it, which is kept for a resume. Returns
/// whether the target was kept for that reason.
pub fn after_failure(target: &Path, created: bool, journal: Option<&Journal>) -> bool {
    let kept = journal.is_some_and(Journal::has_progress);
    if created && !kept {
        let _ = std::fs::remove_file(target);
        if let Some(j) = journal {
            let _ = j.finish();
        }
    }
    kept
}

/// Replaces `path` with `bytes`: a synced temporary file renamed over it, then the directory
/// synced, so a crash leaves the old journal or the new one, never a torn one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let shown = path.display();
    let tmp = path.with_extension("journal-tmp");
    let io = |what: &str, e| Error::io(format!("{what} resume journal {shown}"), e);
    let mut f = crate::sys::create_nofollow(&tmp).map_err(|e| io("writing", e))?;
    f.write_all(bytes).map_err(|e| io("writing", e))?;
    f.sync_data().map_err(|e| io("syncing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("replacing", e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_the_uri_is_left_out_of_the_identity() {
        assert_eq!(
            without_password("http://u:secret@h/d.img?x=1"),
            "http://u@h/d.img?x=1"
        );
        assert_eq!(without_password("/var/disk.img"), "/var/disk.img");
    }

    #[test]
    fn a_journal_survives_its_round_trip() {
        let s = JournalState {
            identity: "nbd://h/x 1073741824".into(),
            items: 11,
            done: vec![
                true, false, true, true, false, false, false, false, true, false, true,
            ],
        };
        let bytes = render(&s);
        assert_eq!(parse(&bytes, "j").unwrap(), s);
    }

    #[test]
    fn malformed_journals_are_refused() {
        for bad in [
            &b"{}"[..],
            br#"{"ferry_journal":2,"identity":"x","items":1,"done":"01"}"#,
            br#"{"ferry_journal":1,"identity":"x","items":9,"done":"01"}"#,
            br#"{"ferry_journal":1,"identity":"x","items":2,"done":"zz"}"#,
            br#"{"ferry_journal":1,"identity":"x","items":2,"done":"ff"}"#,
            br#"{"ferry_journal":1,"identity":"x","items":99999999999,"done":""}"#,
            b"not json",
        ] {
            assert!(parse(bad, "j").is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn marks_persist_and_a_reopen_skips_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.journal");
        let (j, resumed) = Journal::open(&path, "src A").unwrap();
        assert!(!resumed);
        assert_eq!(j.bind(4), vec![false; 4]);
        j.complete(1);
        j.complete(3);
        let snap = j.snapshot().unwrap();
        j.persist(snap).unwrap();
        assert!(j.snapshot().is_none(), "nothing new to persist");

        let (again, resumed) = Journal::open(&path, "src A").unwrap();
        assert!(resumed);
        assert_eq!(again.bind(4), vec![false, true, false, true]);
        let (other, resumed) = Journal::open(&path, "src B").unwrap();
        assert!(!resumed);
        assert_eq!(other.bind(4), vec![false; 4]);
        let (replanned, _) = Journal::open(&path, "src A").unwrap();
        assert_eq!(
            replanned.bind(5),
            vec![false; 5],
            "another plan starts over"
        );
        again.finish().unwrap();
        assert!(!path.exists());
    }
}
