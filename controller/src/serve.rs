//! The snapshot stream server. Each data plane connects (mutual TLS when
//! configured), says who it is, gets the full snapshot of its view, then one
//! delta per change.
//!
//! Memory per subscriber is bounded: a subscriber holds only the last view it
//! was sent, and follows the hub's latest publication, so one that falls
//! behind gets a single delta covering everything it missed, never a queue.
//! A write that does not finish within the write timeout, or a subscriber
//! silent for three heartbeat intervals, is dropped.

use crate::hub::Hub;
use crate::views::{Position, ViewKey, Views};
use anyhow::{bail, Context, Result};
use pier_stream::{read_frame, write_encoded, Frame, Hello, PROTOCOL_VERSION};
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

#[derive(Clone, Debug)]
pub struct StreamOptions {
    pub listen: SocketAddr,
    /// Mutual TLS; without it only a loopback address may be served.
    pub tls: Option<pier_stream::TlsFiles>,
    pub heartbeat: Duration,
    pub write_timeout: Duration,
}

/// Stream metrics, registered in the controller's registry.
#[derive(Clone)]
pub struct StreamMetrics {
    pub subscribers: IntGauge,
    /// Publications the subscriber has not been sent yet, per subscriber.
    pub lag: IntGaugeVec,
    pub dropped: IntCounterVec,
    pub frames: IntCounterVec,
}

impl StreamMetrics {
    pub fn new(registry: &Registry) -> Result<Self> {
        let m = StreamMetrics {
            subscribers: IntGauge::new(
                "pier_stream_subscribers",
                "Data planes connected to the snapshot stream",
            )?,
            lag: IntGaugeVec::new(
                Opts::new(
                    "pier_stream_subscriber_lag",
                    "Publications not yet sent to a subscriber",
                ),
                &["subscriber"],
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "pier_stream_dropped_total",
                    "Subscribers dropped or refused, by reason",
                ),
                &["reason"],
            )?,
            frames: IntCounterVec::new(
                Opts::new("pier_stream_frames_total", "Frames sent, by kind"),
                &["kind"],
            )?,
        };
        registry.register(Box::new(m.subscribers.clone()))?;
        registry.register(Box::new(m.lag.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        registry.register(Box::new(m.frames.clone()))?;
        Ok(m)
    }
}

/// A heartbeat frame, encoded once.
static HEARTBEAT: std::sync::LazyLock<Vec<u8>> =
    std::sync::LazyLock::new(|| Frame::Heartbeat.encode());

pub struct StreamServer {
    hub: Arc<Hub>,
    views: Arc<Views>,
    options: StreamOptions,
    tls: Option<tokio_rustls::TlsAcceptor>,
    metrics: StreamMetrics,
}

impl StreamServer {
    /// Checks the options (a plaintext stream off loopback is refused: it
    /// carries private keys) and loads the TLS material.
    pub fn new(
        hub: Arc<Hub>,
        views: Arc<Views>,
        options: StreamOptions,
        metrics: StreamMetrics,
    ) -> Result<Self> {
        let tls = match &options.tls {
            Some(files) => Some(tokio_rustls::TlsAcceptor::from(
                pier_stream::server_config(files).context("stream TLS")?,
            )),
            None if options.listen.ip().is_loopback() => None,
            None => bail!(
                "the snapshot stream on {} would be plaintext off loopback: give --stream-tls-ca, --stream-tls-cert and --stream-tls-key, or listen on 127.0.0.1",
                options.listen
            ),
        };
        Ok(StreamServer {
            hub,
            views,
            options,
            tls,
            metrics,
        })
    }

    pub async fn bind(&self) -> Result<TcpListener> {
        TcpListener::bind(self.options.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.options.listen))
    }

    /// Accepts data planes forever.
    pub async fn run(self: Arc<Self>, listener: TcpListener) -> Result<()> {
        tracing::info!(listen = %self.options.listen, tls = self.tls.is_some(), "serving snapshots");
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let server = self.clone();
            tokio::spawn(async move {
                let result = match &server.tls {
                    None => server.session(tcp, peer).await,
                    Some(acceptor) => {
                        let accepted =
                            tokio::time::timeout(server.deadline(), acceptor.accept(tcp)).await;
                        match accepted {
                            Ok(Ok(stream)) => server.session(stream, peer).await,
                            Ok(Err(e)) => {
                                server.metrics.dropped.with_label_values(&["tls"]).inc();
                                Err(anyhow::anyhow!("TLS handshake refused: {e}"))
                            }
                            Err(_) => {
                                server.metrics.dropped.with_label_values(&["tls"]).inc();
                                Err(anyhow::anyhow!("TLS handshake timed out"))
                            }
                        }
                    }
                };
                if let Err(e) = result {
                    tracing::info!(%peer, error = %e, "data plane gone");
                }
            });
        }
    }

    fn deadline(&self) -> Duration {
        self.options.heartbeat * 3
    }

    async fn session<S>(&self, stream: S, peer: SocketAddr) -> Result<()>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let hello = match tokio::time::timeout(self.deadline(), read_frame(&mut rd)).await {
            Ok(Ok(Some(Frame::Hello(h)))) => h,
            Ok(Ok(_)) => {
                self.metrics.dropped.with_label_values(&["no_hello"]).inc();
                bail!("the first frame was not a hello")
            }
            Ok(Err(e)) => {
                self.metrics.dropped.with_label_values(&["no_hello"]).inc();
                bail!("reading the hello: {e}")
            }
            Err(_) => {
                self.metrics.dropped.with_label_values(&["no_hello"]).inc();
                bail!("no hello within {:?}", self.deadline())
            }
        };
        let Hello {
            protocol,
            subscriber,
        } = hello;
        if protocol != PROTOCOL_VERSION {
            self.metrics.dropped.with_label_values(&["protocol"]).inc();
            bail!("stream protocol {protocol}, this controller speaks {PROTOCOL_VERSION}");
        }
        let label = subscriber.label();
        tracing::info!(%peer, subscriber = %label, "data plane connected");
        self.metrics.subscribers.inc();
        let _gone = scopeguard(|| self.metrics.subscribers.dec());
        let lag = self.metrics.lag.with_label_values(&[label.as_str()]);
        let _lag_gone = scopeguard(|| {
            let _ = self.metrics.lag.remove_label_values(&[label.as_str()]);
        });

        // The data plane's heartbeats: silence means the connection is dead
        // even when TCP has not noticed.
        let deadline = self.deadline();
        let mut reader = tokio::spawn(async move {
            loop {
                match tokio::time::timeout(deadline, read_frame(&mut rd)).await {
                    Ok(Ok(Some(Frame::Heartbeat))) => {}
                    Ok(Ok(Some(_))) => return "unexpected frame",
                    Ok(Ok(None)) => return "closed",
                    Ok(Err(_)) => return "read error",
                    Err(_) => return "silent",
                }
            }
        });

        let stop_reader = reader.abort_handle();
        let _reader_gone = scopeguard(move || stop_reader.abort());

        let key = ViewKey::of(&subscriber);
        let mut publications = self.hub.subscribe();
        let mut sent: Option<Position> = None;
        let mut beat = tokio::time::interval(self.options.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending = true;
        loop {
            if pending {
                pending = false;
                let publication = publications.borrow_and_update().clone();
                if let Some(publication) = publication {
                    let to = self.views.position(&key, &publication);
                    let frame = self.views.frame(&key, sent.as_ref(), &to);
                    if let Some(bytes) = frame {
                        let kind = if sent.is_none() { "full" } else { "delta" };
                        self.send(&mut wr, &bytes, kind).await?;
                        // Only a frame sent counts as a sign of life.
                        beat.reset();
                    }
                    sent = Some(to);
                    let latest = publications.borrow().as_ref().map_or(0, |p| p.seq);
                    lag.set(latest.saturating_sub(publication.seq) as i64);
                }
            }
            tokio::select! {
                changed = publications.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    pending = true;
                }
                _ = beat.tick() => self.send(&mut wr, &HEARTBEAT, "heartbeat").await?,
                why = &mut reader => {
                    let why = why.unwrap_or("reader failed");
                    self.metrics.dropped.with_label_values(&[why]).inc();
                    bail!("{label}: {why}");
                }
            }
        }
    }

    async fn send<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut W,
        bytes: &[u8],
        kind: &str,
    ) -> Result<()> {
        match tokio::time::timeout(self.options.write_timeout, write_encoded(wr, bytes)).await {
            Ok(Ok(())) => {
                self.metrics.frames.with_label_values(&[kind]).inc();
                Ok(())
            }
            Ok(Err(e)) => {
                self.metrics
                    .dropped
                    .with_label_values(&["write_error"])
                    .inc();
                Err(e.into())
            }
            Err(_) => {
                self.metrics
                    .dropped
                    .with_label_values(&["write_timeout"])
                    .inc();
                bail!(
                    "write not done within {:?}: subscriber dropped",
                    self.options.write_timeout
                )
            }
        }
    }
}

/// Runs `f` when dropped (however the session ends).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f()
            }
        }
    }
    Guard(Some(f))
}

/// Standalone mode: serve the translation of a folder of manifests,
/// re-published on every change of the folder.
pub fn serve_manifests(
    dir: &std::path::Path,
    options: pier_translate::TranslateOptions,
    stream: StreamOptions,
) -> Result<()> {
    let hub = Arc::new(Hub::default());
    let publisher = hub.clone();
    let _watcher =
        pier_manifests::follow_dir(dir, options.clone(), pier_manifests::SETTLE, move |u| {
            publisher.publish(u.snapshot.clone(), Some(Arc::new(u.state)));
        })?;
    let server = Arc::new(StreamServer::new(
        hub,
        Arc::new(Views::new(options)),
        stream,
        StreamMetrics::new(&Registry::new())?,
    )?);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = server.bind().await?;
            server.run(listener).await
        })
}

/// A plaintext stream server on a free loopback port, running on a runtime
/// of its own (for tests and benches): its address, metrics and runtime.
pub fn serve_on_loopback(
    hub: Arc<Hub>,
    heartbeat: Duration,
    write_timeout: Duration,
) -> Result<(SocketAddr, StreamMetrics, tokio::runtime::Runtime)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let metrics = StreamMetrics::new(&Registry::new())?;
    let server = Arc::new(StreamServer::new(
        hub,
        Arc::new(Views::new(Default::default())),
        StreamOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
            heartbeat,
            write_timeout,
        },
        metrics.clone(),
    )?);
    let listener = runtime.block_on(server.bind())?;
    let addr = listener.local_addr()?;
    runtime.spawn(server.run(listener));
    Ok((addr, metrics, runtime))
}

/// A subscriber that says hello and keeps sending heartbeats but never
/// reads (for tests and benches); it stops when the returned flag is set.
pub fn stalled_subscriber(addr: SocketAddr) -> std::io::Result<Arc<std::sync::atomic::AtomicBool>> {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut conn = std::net::TcpStream::connect(addr)?;
    let hello = Frame::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        subscriber: pier_stream::Subscriber::Agent {
            node: "stalled".into(),
        },
    });
    conn.write_all(&hello.encode())?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        while !stopped.load(Ordering::Relaxed) && conn.write_all(&HEARTBEAT).is_ok() {
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    Ok(stop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pier_snapshot::{AppProtocol, BackendSet, Endpoint, LoadBalancing, Snapshot};
    use pier_stream::{FollowerConfig, Subscriber};

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Change `i`: one backend set of 300 endpoints (a ~10 KiB delta).
    fn snapshot(i: u32) -> Snapshot {
        let mut s = Snapshot::empty();
        let endpoints = (0..300u32)
            .map(|n| Endpoint {
                address: std::net::Ipv4Addr::from(0xC612_0000 + i * 300 + n).into(),
                port: 8080,
                ready: true,
                serving: true,
                terminating: false,
                zone: Some("zone-a".into()),
                node_name: Some(format!("node-{n}")),
            })
            .collect();
        s.backends.data.insert(
            "default/app:80".into(),
            BackendSet {
                protocol: AppProtocol::default(),
                external_name: None,
                port: 80,
                endpoints,
                load_balancing: LoadBalancing::default(),
            },
        );
        s
    }

    #[test]
    fn a_stalled_subscriber_costs_bounded_memory_and_is_dropped_while_others_keep_up() {
        let hub = Arc::new(Hub::default());
        hub.publish(snapshot(0), None);
        let (addr, metrics, _runtime) =
            serve_on_loopback(hub.clone(), Duration::from_secs(1), Duration::from_secs(2)).unwrap();

        // The stalled one: says hello, keeps sending heartbeats, never reads.
        let _stalled = stalled_subscriber(addr).unwrap();
        // A healthy one, through the data planes' own follower.
        // The view has versions of its own: follow the content.
        let last = Arc::new(std::sync::Mutex::new(None));
        let l = last.clone();
        let mut config =
            FollowerConfig::new(addr.to_string(), Subscriber::Agent { node: "ok".into() });
        config.heartbeat = Duration::from_secs(1);
        let status = pier_stream::spawn_follower(config, move |s, _| {
            *l.lock().unwrap() = s.backends.data.get("default/app:80").cloned();
        })
        .unwrap();
        assert!(status.wait_installed(Duration::from_secs(10)));
        let start = std::time::Instant::now();
        while metrics.subscribers.get() < 2 {
            assert!(start.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(10));
        }

        let before = rss_kib();
        for i in 1..=10_000 {
            hub.publish(snapshot(i), None);
        }
        let grown_mib = rss_kib().saturating_sub(before) / 1024;
        eprintln!("rss grew {grown_mib} MiB");
        let target = snapshot(10_000)
            .backends
            .data
            .get("default/app:80")
            .cloned();
        let start = std::time::Instant::now();
        while *last.lock().unwrap() != target {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the healthy subscriber fell behind"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // 10,000 queued deltas of ~10 KiB would be ~100 MiB.
        assert!(grown_mib < 40, "RSS grew by {grown_mib} MiB");
        let start = std::time::Instant::now();
        while metrics.dropped.with_label_values(&["write_timeout"]).get() < 1 {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the stalled subscriber was not dropped"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(status.connected());
        // The gauge drops when the session ends, just after the counter.
        let start = std::time::Instant::now();
        while metrics.subscribers.get() != 1 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "subscribers: {}",
                metrics.subscribers.get()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_subscriber_whose_view_does_not_move_still_hears_heartbeats() {
        let hub = Arc::new(Hub::default());
        hub.publish(snapshot(0), None);
        let (addr, _metrics, _runtime) = serve_on_loopback(
            hub.clone(),
            Duration::from_millis(300),
            Duration::from_secs(2),
        )
        .unwrap();
        let mut config =
            FollowerConfig::new(addr.to_string(), Subscriber::Agent { node: "n".into() });
        config.heartbeat = Duration::from_millis(300);
        let status = pier_stream::spawn_follower(config, |_, _| {}).unwrap();
        assert!(status.wait_installed(Duration::from_secs(10)));
        // Routes move every 100 ms for 3 s: nothing an agent sees.
        for i in 0..30u16 {
            let mut s = snapshot(0);
            s.routes.data.listeners.push(pier_snapshot::PortListener {
                port: 1000 + i,
                protocol: pier_snapshot::PortProtocol::Http,
                sources: Vec::new(),
                tls: Vec::new(),
                virtual_hosts: Vec::new(),
                l4: None,
            });
            hub.publish(s, None);
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(status.connected(), "{}", status.describe());
        assert_eq!(status.breaks(), 0, "{}", status.describe());
    }
}
