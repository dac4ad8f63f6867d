//! Serving the API on its listener, plainly or over TLS. Each request carries its peer
//! address (`ConnectInfo`) for the audit log either way.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::serve::ListenerExt;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Serves `app` until the task is aborted.
pub async fn serve(listener: TcpListener, app: Router, tls: Option<tokio_rustls::TlsAcceptor>) {
    let Some(acceptor) = tls else {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(
            listener.tap_io(|tcp| {
                // Small answers leave at once instead of waiting for a delayed ACK.
                let _ = tcp.set_nodelay(true);
            }),
            service,
        )
        .await
        {
            tracing::error!(error = %e, "API server stopped");
        }
        return;
    };
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %e, "accepting an API connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "API TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let service = TowerToHyperService::new(app.layer(axum::Extension(ConnectInfo(peer))));
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "API connection ended");
            }
        });
    }
}
