//! The process's one TLS context, which every HTTP client shares (trackers, web seeds, a
//! torrent's URL).
//!
//! Why one: building a TLS context loads and parses the system's root certificates, about
//! 60 ms of CPU. reqwest builds one per client, and a mount built four (three for trackers,
//! one for web seeds) before it could mount: 150-200 ms of a 256 MiB torrent's mount time.
//! Now it is built at the first https need (http:// trackers need none: `tracker::plain`),
//! on the blocking pool, never on the way to the mount.

use std::sync::OnceLock;

use tokio::sync::OnceCell;

/// The value in `cell`, built by `build` on the blocking pool at the first call (what holds a
/// TLS context: its build is tens of ms of CPU, which no async worker should spend). Callers
/// that come meanwhile wait for the same build; a failed build is tried again next time.
/// `lost`: the error for a build task that died (a panic, a runtime shutting down).
pub async fn built_once<T, E>(
    cell: &OnceCell<T>,
    build: impl FnOnce() -> Result<T, E> + Send + 'static,
    lost: impl FnOnce(String) -> E,
) -> Result<&T, E>
where
    T: Send + 'static,
    E: Send + 'static,
{
    cell.get_or_try_init(|| async move {
        tokio::task::spawn_blocking(build)
            .await
            .map_err(|e| lost(format!("HTTP client set-up: {e}")))?
    })
    .await
}

/// A reqwest builder on the shared TLS context; the context is built at the first call.
pub fn client_builder() -> Result<reqwest::ClientBuilder, String> {
    Ok(reqwest::Client::builder().tls_backend_preconfigured(connector()?))
}

/// The shared context: the system's roots, reqwest's defaults (SNI, certificates and host
/// names verified).
fn connector() -> Result<native_tls::TlsConnector, String> {
    static CONNECTOR: OnceLock<Result<native_tls::TlsConnector, String>> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            native_tls::TlsConnector::new().map_err(|e| format!("cannot set up TLS: {e}"))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn built_once_for_every_caller_and_again_after_a_failure() {
        let cell = Arc::new(OnceCell::<u32>::new());
        let builds = Arc::new(AtomicUsize::new(0));
        let fail = {
            let builds = builds.clone();
            move || {
                builds.fetch_add(1, Ordering::SeqCst);
                Err::<u32, String>("no roots".into())
            }
        };
        assert_eq!(
            built_once(&cell, fail, |e| e).await,
            Err("no roots".to_string())
        );
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (cell, builds) = (cell.clone(), builds.clone());
            callers.spawn(async move {
                let build = move || {
                    builds.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    Ok::<u32, String>(7)
                };
                *built_once(&cell, build, |e| e).await.unwrap()
            });
        }
        while let Some(got) = callers.join_next().await {
            assert_eq!(got.unwrap(), 7);
        }
        assert_eq!(
            builds.load(Ordering::SeqCst),
            2,
            "the failure, then one build"
        );
    }
}
