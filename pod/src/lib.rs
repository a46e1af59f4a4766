//! What ferry's pod entrypoints share, kept out of `transfer-core` so that an embedder of the
//! library compiles none of it: CDI's importer mode and Forklift's populators serve their
//! progress over HTTPS ([`metrics`]), stop on SIGTERM ([`cancel_on_sigterm`]), run an oVirt
//! engine's image transfer around an imageio download ([`ovirt`]), read Forklift's secret
//! from the environment ([`forklift`]) and drive storage arrays for copy offload ([`xcopy`]).

#![warn(missing_docs)]

pub mod forklift;
pub mod kube;
pub mod metrics;
pub mod ovirt;
pub mod xcopy;

use transfer_core::job::CancelToken;

/// A token that is cancelled when the process receives SIGTERM, which is how Kubernetes stops a
/// pod (never, if the handler cannot be installed). Must be called inside a tokio runtime.
pub fn cancel_on_sigterm() -> CancelToken {
    let token = CancelToken::new();
    let on_term = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut s) = signal(SignalKind::terminate()) {
            if s.recv().await.is_some() {
                on_term.cancel();
            }
        }
    });
    token
}

/// The multi-threaded tokio runtime every ferry binary runs on.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
