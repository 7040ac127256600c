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
            "/readyz" if self.shared.ready() => text(200, "text/plain", b"ready\n".to_vec()),
            "/readyz" => text(503, "text/plain", b"no snapshot loaded yet\n".to_vec()),
            "/metrics" => text(
                200,
                "text/plain; version=0.0.4",
                self.shared.metrics.render(),
            ),
            _ => text(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
