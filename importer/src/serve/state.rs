//! The daemon's state directory: one JSON file per transfer (the request as it came, and the
//! transfer as `GET` last showed it), replaced atomically at every change of state, so that a
//! daemon killed at any moment finds its transfers again at the next start. Requests carry no
//! secret (credentials in a source URI are refused), so none is kept here.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use transfer_core::{Error, Result};

/// The largest record read back (a request is at most 1 MiB).
const MAX_RECORD: u64 = 4 << 20;

/// Where transfers are recorded.
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creating, mode 0700) the state directory `dir`.
    pub fn open(dir: &Path) -> Result<StateDir> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("--state-dir {}", dir.display()), e))?;
        Ok(StateDir {
            dir: dir.to_owned(),
        })
    }

    /// Records transfer `id`: its `request` and its `view`. A failure is logged, not fatal:
    /// the transfer goes on, it only would not be found after a restart.
    pub fn save(&self, id: &str, request: &Value, view: &Value) {
        let record = serde_json::json!({ "id": id, "request": request, "view": view });
        let path = self.dir.join(format!("{id}.json"));
        let tmp = self.dir.join(format!(".{id}.json.tmp"));
        let written = (|| -> std::io::Result<()> {
            let mut f = transfer_core::sys::create_nofollow(&tmp)?;
            f.write_all(record.to_string().as_bytes())?;
            f.sync_data()?;
            std::fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = written {
            tracing::warn!(transfer = id, error = %e, "cannot record the transfer in the state directory");
        }
    }

    /// Every record found, oldest first; unreadable ones are logged and skipped.
    pub fn load(&self) -> Vec<(u64, Value)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<(u64, Value)> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_owned();
                let n: u64 = name.strip_prefix('t')?.strip_suffix(".json")?.parse().ok()?;
                let path = e.path();
                let text = transfer_core::sys::read_small_file(&path, MAX_RECORD).ok();
                match text.and_then(|t| serde_json::from_slice::<Value>(&t).ok()) {
                    Some(v) if v["request"].is_object() && v["view"].is_object() => Some((n, v)),
                    _ => {
                        tracing::warn!(file = %path.display(), "skipping an unreadable transfer record");
                        None
                    }
                }
            })
            .collect();
        out.sort_by_key(|(n, _)| *n);
        out
    }

    /// Forgets transfer `id`.
    pub fn remove(&self, id: &str) {
        let _ = std::fs::remove_file(self.dir.join(format!("{id}.json")));
    }
}
