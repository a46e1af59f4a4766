//! The library's error hints in the words of each front end: flags for the command line,
//! environment variables for CDI's importer pod.

use transfer_core::error::Hint;
use transfer_core::Error;

/// `e` as one line, with its hint in command-line terms.
pub fn cli(e: &Error) -> String {
    let hint = match e.hint() {
        Some(Hint::DiskChoice(d)) => return format!("{e} (--disk {d})"),
        Some(Hint::ChooseDisk) => " with --disk INDEX|NAME, or copy them all with copy-ova",
        Some(Hint::ReadAsRaw) => " (--format raw copies the file as it is)",
        Some(Hint::DirtyBitmap) => " (name it: --dirty-bitmap NAME)",
        Some(Hint::PreviousCheckpoint) => " (--previous-checkpoint CHANGE_ID or SNAPSHOT)",
        Some(Hint::DeltaCheckpoints) => " (--checkpoint ID and --previous-checkpoint ID)",
        Some(Hint::ChangedAreasFile) => " (otherwise pass them in a file: --changed-areas FILE)",
        Some(Hint::StateFile) => " (name a file for it: --state-file PATH)",
        Some(Hint::PasswordFile) => " (use --password-file or VDDK_PASSWORD)",
        Some(Hint::ImageioKind) => " (imageio+https:// or --source-kind imageio)",
        Some(Hint::Resume) => " (what was copied is kept: run the copy again with --resume)",
        _ => "",
    };
    format!("{e}{hint}")
}

/// `e` as one line, with its hint in the terms of CDI's environment.
pub fn cdi(e: &Error) -> String {
    let hint = match e.hint() {
        Some(Hint::DeltaCheckpoints | Hint::PreviousCheckpoint) => {
            " (IMPORTER_CURRENT_CHECKPOINT and IMPORTER_PREVIOUS_CHECKPOINT)"
        }
        Some(Hint::Resume) => " (what was copied is kept for the next import pod)",
        _ => "",
    };
    format!("{e}{hint}")
}
