//! Serving the router: plain HTTP, or HTTPS (rustls) when the config names
//! a certificate and a key (`--tls-cert`, `--tls-key`), until the shutdown.

use super::*;

/// How long open connections get to finish after the shutdown (HTTPS).
const GRACE: Duration = Duration::from_secs(5);

/// The TLS config of `cfg`, loaded now so a bad file fails the start.
pub(super) async fn tls_config(
    cfg: &SidecarConfig,
) -> Result<Option<axum_server::tls_rustls::RustlsConfig>, Error> {
    match (&cfg.tls_cert, &cfg.tls_key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
            .await
            .map(Some)
            .map_err(|e| {
                Error::Config(format!(
                    "TLS certificate {} / key {}: {e}",
                    cert.display(),
                    key.display()
                ))
            }),
        _ => Err(Error::Config("--tls-cert and --tls-key go together".into())),
    }
}

/// Serves until `shutdown`, then lets open requests finish.
pub(super) async fn serve_until(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    shutdown: Shutdown,
) {
    let Some(tls) = tls else {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
        return;
    };
    let server = match listener
        .into_std()
        .and_then(|l| axum_server::from_tcp_rustls(l, tls))
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve HTTPS");
            return;
        }
    };
    let handle = axum_server::Handle::new();
    let serve = server
        .handle(handle.clone())
        .serve(router.into_make_service());
    tokio::pin!(serve);
    tokio::select! {
        _ = &mut serve => {}
        _ = shutdown.wait() => {
            handle.graceful_shutdown(Some(GRACE));
            let _ = serve.await;
        }
    }
}
