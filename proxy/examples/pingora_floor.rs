//! The floor of the framework: the smallest pingora proxy (one fixed peer, no
//! routing, no filters, no metrics), with the same server settings as
//! pier-proxy. `bench/` compares it with pier-proxy and NGINX to tell pier's
//! own per-request cost from pingora's.
//!
//! Run: cargo run --release -p pier-proxy --example pingora_floor -- LISTEN UPSTREAM

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Floor {
    upstream: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18080".into());
    let upstream = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:19000".into())
        .parse()
        .expect("upstream address");
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 1024,
        ..Default::default()
    };
    let mut server = pingora::server::Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Floor { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
