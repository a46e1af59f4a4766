//! The command-line side of `vddk://` sources: `--vddk KEY=VALUE` parameters, the password from
//! a file or `VDDK_PASSWORD` (never from argv), and re-executing the program with VDDK's
//! `lib64` directory on `LD_LIBRARY_PATH`, which the dynamic loader reads only at start.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use clap::Args;
use transfer_core::open::{vddk_params, VddkOptions};
use transfer_core::source::vddk::{library_path_for, Secret};
use transfer_core::{Error, ErrorKind};

/// The environment variable a VDDK password may come from.
pub const PASSWORD_ENV: &str = "VDDK_PASSWORD";

#[derive(Args, Default)]
pub struct VddkArgs {
    /// A vddk:// parameter KEY=VALUE, overriding the URL's (repeatable): server, user, port,
    /// nfchostport, thumbprint, vm (or uuid), snapshot, file, transports, config, libdir,
    /// max-request, connections.
    #[arg(long = "vddk", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// File holding the password of a vddk:// source's user (default: $VDDK_PASSWORD).
    #[arg(long, value_name = "PATH")]
    password_file: Option<PathBuf>,
}

/// Whether `uri` names a VDDK source.
pub fn is_vddk(uri: &str) -> bool {
    uri.get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("vddk://"))
}

impl VddkArgs {
    fn pairs(&self, thumbprint: Option<&str>) -> transfer_core::Result<Vec<(String, String)>> {
        let mut v = Vec::new();
        // --thumbprint names the server certificate for every source kind.
        if let Some(t) = thumbprint {
            v.push(("thumbprint".to_owned(), t.to_owned()));
        }
        for p in &self.params {
            let (k, val) = p.split_once('=').ok_or_else(|| {
                // Not echoed: a mistyped argument could be a secret.
                Error::new(
                    ErrorKind::InvalidInput,
                    "--vddk expects KEY=VALUE (no '=' found)",
                )
            })?;
            v.push((k.trim().to_owned(), val.to_owned()));
        }
        Ok(v)
    }

    /// The options of a vddk:// source `uri`; the password is read only for such a source.
    pub fn options(
        &self,
        uri: &str,
        thumbprint: Option<&str>,
    ) -> transfer_core::Result<VddkOptions> {
        if !is_vddk(uri) {
            return Ok(VddkOptions::default());
        }
        let password = match &self.password_file {
            Some(p) => {
                let s = std::fs::read_to_string(p)
                    .map_err(|e| Error::io(format!("reading password file {}", p.display()), e))?;
                Some(Secret::new(&s))
            }
            None => std::env::var(PASSWORD_ENV).ok().map(|s| Secret::new(&s)),
        };
        Ok(VddkOptions {
            params: self.pairs(thumbprint)?,
            password,
            changed_since: None,
            timeout: None,
            sessions: None,
        })
    }

    /// When `uri` is a vddk:// source whose VDDK needs its `lib64` directory on
    /// `LD_LIBRARY_PATH` and the variable lacks it, runs this program again with it set (the
    /// call returns only on failure). The loop ends because the new process has it.
    pub fn reexec_for_library_path(&self, uri: &str) -> transfer_core::Result<()> {
        if !is_vddk(uri) {
            return Ok(());
        }
        let opts = VddkOptions {
            params: self.pairs(None)?,
            ..VddkOptions::default()
        };
        let url = url::Url::parse(uri).map_err(|e| {
            transfer_core::Error::new(
                transfer_core::ErrorKind::InvalidInput,
                format!("invalid source URI: {e}"),
            )
        })?;
        let libdir = vddk_params(&url, &opts)?.libdir;
        reexec_with_library_path(&libdir)
    }
}

/// Runs this program again with `libdir`'s `lib64` on `LD_LIBRARY_PATH` when it is missing
/// there (returns only when nothing needs doing, or on failure).
pub fn reexec_with_library_path(libdir: &std::path::Path) -> transfer_core::Result<()> {
    let Some(path) = library_path_for(libdir) else {
        return Ok(());
    };
    let exe = std::env::current_exe()
        .map_err(|e| Error::io("finding this program to run it with VDDK's libraries", e))?;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("LD_LIBRARY_PATH", path)
        .exec();
    Err(Error::io(
        "running again with VDDK's lib64 on LD_LIBRARY_PATH",
        err,
    ))
}
