//! The one error type of ferry: a kind that callers (and retry logic) match on, a context that says
//! what was being done (operation, path, offset), and the underlying cause.
//!
//! Messages are one line and never contain secrets: contexts are built from sanitized descriptions
//! (URIs without credentials), never from raw request headers.

use std::fmt;
use std::io;

/// What kind of failure this is. Decisions (retry, exit status) match on this, never on text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The user asked for something malformed (bad URI, bad size, bad option).
    InvalidInput,
    /// A scheme, feature or option we do not support.
    Unsupported,
    /// Could not reach the server (connection refused, no such socket, DNS failure).
    Connect,
    /// The server does not know the export, image or ticket.
    NotFound,
    /// The peer broke the protocol (bad magic, unexpected reply, truncated message).
    Protocol,
    /// The server reported an error for a request (with its errno when known).
    Server,
    /// Local I/O failed (read, write, zero, flush).
    Io,
    /// The target is smaller than the source.
    TargetTooSmall,
    /// The target cannot be written.
    ReadOnly,
    /// The connection ended before the transfer did.
    Disconnected,
    /// Source and target differ (verify).
    Mismatch,
    /// The source allows no more connections right now (another handle may be tried later).
    Busy,
    /// The server refused the credentials or the request (HTTP 401/403, a refused login).
    Denied,
    /// The target's filesystem or device has no room for what is written (ENOSPC).
    NoSpace,
    /// An image file is damaged: its own structures (headers, tables, markers, checksums)
    /// contradict each other or end early. Reading it again gives the same answer.
    Damaged,
    /// The caller cancelled the transfer (its [`crate::job::CancelToken`]).
    Cancelled,
    /// The peer stopped answering: requests waited longer than the idle timeout without a
    /// byte from it (a frozen host, a half-open connection). A new connection may work.
    TimedOut,
}

/// What the caller can do about an error, for each front end to say in its own terms (a
/// command-line flag, an environment variable, an API field). The library's messages name no
/// front end's options; a front end adds the hint's words where it prints the error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Hint {
    /// Name which disk of a multi-disk image (an OVA) to read.
    ChooseDisk,
    /// The disk chosen (this index or name) is not in the image.
    DiskChoice(String),
    /// Read the file as it is, without detecting an image format.
    ReadAsRaw,
    /// Name the qemu dirty bitmap that holds an NBD export's changed ranges.
    DirtyBitmap,
    /// Name the checkpoint a delta starts from.
    PreviousCheckpoint,
    /// Name both checkpoints of a delta: the one it starts from and the one it reaches.
    DeltaCheckpoints,
    /// Pass the changed ranges in a file, for a source that cannot tell them.
    ChangedAreasFile,
    /// Name a state file for what cannot be kept beside a block device.
    StateFile,
    /// Give the password in a file or the environment, not in the URI.
    PasswordFile,
    /// Say that a plain HTTP(S) URL is an oVirt imageio ticket.
    ImageioKind,
    /// A checksum covers one file, and this image spans several.
    ChecksumOneFile,
    /// What was copied is kept: the same transfer run again with resume carries on.
    Resume,
}

impl ErrorKind {
    /// An error of this kind about `what`, saying `why`: the context `"{what}: {why}"`. The one
    /// constructor for the "what is wrong with which thing" errors of every module.
    pub fn about(self, what: impl fmt::Display, why: impl fmt::Display) -> Error {
        Error::new(self, format!("{what}: {why}"))
    }

    /// Whether trying again (after reconnecting) may succeed: network and server trouble, not
    /// refusals, missing objects, bad input, malformed answers or wrong data. (A connection
    /// cut in the middle of an answer is `Disconnected`, not `Protocol`.)
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Connect
                | ErrorKind::Server
                | ErrorKind::Io
                | ErrorKind::Disconnected
                | ErrorKind::Busy
                | ErrorKind::TimedOut
        )
    }
}

/// ferry's error: `kind` + `context` + optional `source`.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    context: String,
    hint: Option<Hint>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with a one-line `context`.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Error {
            kind,
            context: context.into(),
            hint: None,
            source: None,
        }
    }

    /// An error of `kind` caused by `source`.
    pub fn with_source(
        kind: ErrorKind,
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error {
            kind,
            context: context.into(),
            hint: None,
            source: Some(Box::new(source)),
        }
    }

    /// An I/O error, classified by its `io::ErrorKind` (read-only file systems and permission
    /// errors become [`ErrorKind::ReadOnly`], missing files [`ErrorKind::NotFound`]).
    pub fn io(context: impl Into<String>, err: io::Error) -> Self {
        let kind = match err.raw_os_error() {
            Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM) => ErrorKind::ReadOnly,
            Some(libc::ENOENT) => ErrorKind::NotFound,
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::NoSpace,
            _ => match err.kind() {
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted => ErrorKind::Disconnected,
                io::ErrorKind::TimedOut => ErrorKind::TimedOut,
                _ => ErrorKind::Io,
            },
        };
        Error::with_source(kind, context, err)
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The context line, without the cause.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// What the caller can do about it, if the library knows.
    pub fn hint(&self) -> Option<&Hint> {
        self.hint.as_ref()
    }

    /// The same error with `hint` attached.
    pub fn with_hint(mut self, hint: Hint) -> Self {
        self.hint = Some(hint);
        self
    }

    /// Prefix more context ("reading extents: " + existing).
    pub fn context_prefix(mut self, prefix: impl fmt::Display) -> Self {
        self.context = format!("{prefix}: {}", self.context);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)?;
        if let Some(src) = &self.source {
            write!(f, ": {src}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Characters of peer-controlled text a message carries at most ([`peer_text`]).
pub const PEER_TEXT_MAX: usize = 300;

/// Text a peer controls (a server's error message, a SOAP fault string, an API's `detail`),
/// fit for a one-line message, a log line and a termination message: control and
/// text-direction characters (newlines, terminal escapes) become spaces, runs of spaces one,
/// and at most [`PEER_TEXT_MAX`] characters are kept ("..." marks a cut).
pub fn peer_text(raw: &str) -> String {
    let mut out = String::new();
    let mut kept = 0;
    let mut after_space = true;
    for c in raw.chars() {
        let c = if c.is_control() || is_direction_mark(c) || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && after_space {
            continue;
        }
        if kept == PEER_TEXT_MAX {
            out.truncate(out.trim_end().len());
            out.push_str("...");
            return out;
        }
        after_space = c == ' ';
        out.push(c);
        kept += 1;
    }
    out.truncate(out.trim_end().len());
    out
}

/// Unicode's bidirectional overrides, embeddings and isolates: they reorder what a terminal
/// shows after them.
fn is_direction_mark(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Shorthand constructors used throughout the crate.
pub(crate) fn protocol(context: impl Into<String>) -> Error {
    Error::new(ErrorKind::Protocol, context)
}

pub(crate) fn invalid(context: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, context)
}

pub(crate) fn unsupported(context: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unsupported, context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_errno_maps_to_read_only_kind() {
        let e = Error::io("opening /x", io::Error::from_raw_os_error(libc::EROFS));
        assert_eq!(e.kind(), ErrorKind::ReadOnly);
        assert!(e.to_string().starts_with("opening /x: "));
    }

    #[test]
    fn eof_maps_to_disconnected() {
        let e = Error::io(
            "reading reply",
            io::Error::from(io::ErrorKind::UnexpectedEof),
        );
        assert_eq!(e.kind(), ErrorKind::Disconnected);
    }

    #[test]
    fn peer_text_is_one_bounded_line_without_control_characters() {
        assert_eq!(
            peer_text("  No such ticket\r\n  abc\t\x1b[31mred "),
            "No such ticket abc [31mred"
        );
        assert_eq!(peer_text("left\u{202e}right"), "left right");
        assert_eq!(peer_text(""), "");
        let long = "x".repeat(10 * PEER_TEXT_MAX);
        let t = peer_text(&long);
        assert_eq!(t.len(), PEER_TEXT_MAX + 3);
        assert!(t.ends_with("..."));
        let wide = "\u{00e9}".repeat(2 * PEER_TEXT_MAX);
        assert_eq!(peer_text(&wide).chars().count(), PEER_TEXT_MAX + 3);
    }
}
