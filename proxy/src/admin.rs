//! The admin port: `/healthz`, `/readyz` (ready once a snapshot is loaded),
//! `/metrics` (Prometheus text format).

use crate::routing::Shared;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

pub struct Admin {
    pub shared: Arc<Shared>,
    /// The controller's stream, when that is the source.
    pub stream: Option<Arc<pier_stream::StreamStatus>>,
}

fn text(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .expect("static response parts are valid")
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/healthz" => text(200, "text/plain", b"ok\n".to_vec()),
            // Ready while a snapshot serves, even with the controller away;
            // the detail says whether the stream is live.
            "/readyz" => {
                let detail = self.stream.as_ref().map(|s| s.describe());
                let (status, head) = if self.shared.ready() {
                    (200, "ready")
                } else {
                    (503, "no snapshot loaded yet")
                };
                let body = match detail {
                    Some(d) => format!("{head}\n{d}\n"),
                    None => format!("{head}\n"),
                };
                text(status, "text/plain", body.into_bytes())
            }
            "/metrics" => {
                let mut body = self.shared.metrics.render();
                if let Some(s) = &self.stream {
                    body.extend_from_slice(s.render_metrics().as_bytes());
                }
                text(200, "text/plain; version=0.0.4", body)
            }
            _ => text(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
