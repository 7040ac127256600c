//! `--admin ADDR`: `/healthz` (the process runs), `/readyz` (initial lists
//! in and the first snapshot published), `/metrics` (Prometheus text) and
//! `/debug/snapshot` (the published snapshot as JSON, private keys redacted).

use super::watch::Shared;
use crate::hub::Hub;
use crate::metrics::Metrics;
use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub shared: Arc<Shared>,
    pub ready: Arc<AtomicBool>,
    pub hub: Arc<Hub>,
    /// Serve `/debug/snapshot` (off by default: it shows every route and
    /// certificate chain to whoever reaches the admin port).
    pub debug_snapshot: bool,
}

/// The latest publication as JSON, with every private key replaced.
fn snapshot_json(hub: &Hub) -> Option<String> {
    let publication = hub.latest()?;
    let mut value = serde_json::to_value(&*publication.snapshot).ok()?;
    if let Some(certs) = value
        .pointer_mut("/certificates/data")
        .and_then(|c| c.as_object_mut())
    {
        for cert in certs.values_mut() {
            if let Some(key) = cert.get_mut("private_key_pem") {
                *key = serde_json::Value::String("<redacted>".into());
            }
        }
    }
    serde_json::to_string_pretty(&value).ok()
}

fn text(status: StatusCode, body: String, content_type: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

impl Admin {
    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        const PLAIN: &str = "text/plain; charset=utf-8";
        match req.uri().path() {
            "/healthz" | "/livez" => text(StatusCode::OK, "ok\n".into(), PLAIN),
            "/readyz" => {
                if self.ready.load(Ordering::SeqCst) {
                    text(StatusCode::OK, "ok\n".into(), PLAIN)
                } else {
                    let pending = self.shared.pending();
                    let why = if pending.is_empty() {
                        "no snapshot published yet\n".to_string()
                    } else {
                        format!("waiting for the initial lists of {}\n", pending.join(", "))
                    };
                    text(StatusCode::SERVICE_UNAVAILABLE, why, PLAIN)
                }
            }
            "/metrics" => text(
                StatusCode::OK,
                self.metrics.render(),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            "/debug/snapshot" if self.debug_snapshot => match snapshot_json(&self.hub) {
                Some(json) => text(StatusCode::OK, json, "application/json"),
                None => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "nothing published yet\n".into(),
                    PLAIN,
                ),
            },
            _ => text(StatusCode::NOT_FOUND, "not found\n".into(), PLAIN),
        }
    }

    /// Binds now (so a bad address fails at start) and serves until `shutdown`.
    pub async fn bind(
        self,
        addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --admin {addr}"))?;
        tracing::info!(admin = %listener.local_addr().unwrap_or(addr), "admin server listening");
        Ok(tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    () = shutdown.cancelled() => return,
                    conn = listener.accept() => conn,
                };
                let Ok((stream, _)) = conn else { continue };
                let admin = self.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let response = admin.handle(&req);
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }))
    }
}
