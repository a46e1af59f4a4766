//! What the pod entrypoints (CDI's importer mode, Forklift's populators) share.

/// Resolves when the process receives SIGTERM, which is how Kubernetes stops a pod (never, if
/// the handler cannot be installed).
pub async fn sigterm() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}
