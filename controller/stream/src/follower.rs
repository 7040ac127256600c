//! A data plane's side of the stream: connect (mutual TLS when configured),
//! say who it is, apply the full snapshot then deltas, answer heartbeats,
//! and on any break keep serving the last snapshot while it reconnects with
//! back-off and resyncs. The last applied snapshot is saved to the state dir
//! (at most once a second) and installed from there at start.

use crate::frame::{
    read_frame, write_frame, Frame, FrameError, Hello, Subscriber, PROTOCOL_VERSION,
};
use crate::state::StateDir;
use pier_snapshot::{apply_delta_in_place, DeltaKeys, Message, Snapshot, WireError};
use rustls::pki_types::ServerName;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

const MAX_BACKOFF: Duration = Duration::from_secs(10);
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// TLS towards the controller.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

#[derive(Clone)]
pub struct FollowerConfig {
    /// `host:port` of the controller's stream.
    pub controller: String,
    pub tls: Option<ClientTls>,
    pub subscriber: Subscriber,
    /// How often each side sends a heartbeat; silence for three intervals
    /// means the connection is dead.
    pub heartbeat: Duration,
    pub state_dir: Option<StateDir>,
}

impl FollowerConfig {
    pub fn new(controller: impl Into<String>, subscriber: Subscriber) -> Self {
        FollowerConfig {
            controller: controller.into(),
            tls: None,
            subscriber,
            heartbeat: Duration::from_secs(5),
            state_dir: None,
        }
    }
}

/// Where the snapshot being served came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Nothing,
    StateDir,
    Controller,
}

/// What a data plane reports about its stream (`/readyz` detail, metrics).
pub struct StreamStatus {
    connected: AtomicBool,
    connects: AtomicU64,
    breaks: AtomicU64,
    last_frame_unix_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    origin: Mutex<Origin>,
    installed: Condvar,
}

impl Default for StreamStatus {
    fn default() -> Self {
        StreamStatus {
            connected: AtomicBool::new(false),
            connects: AtomicU64::new(0),
            breaks: AtomicU64::new(0),
            last_frame_unix_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
            origin: Mutex::new(Origin::Nothing),
            installed: Condvar::new(),
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl StreamStatus {
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    /// Successful connections (the first full snapshot arrived) so far.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }
    /// Connections lost or refused so far.
    pub fn breaks(&self) -> u64 {
        self.breaks.load(Ordering::Relaxed)
    }
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub fn origin(&self) -> Origin {
        *self.origin.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Seconds since the controller last said anything (`None`: never).
    pub fn silence(&self) -> Option<Duration> {
        let last = self.last_frame_unix_ms.load(Ordering::Relaxed);
        (last != 0).then(|| Duration::from_millis(unix_ms().saturating_sub(last)))
    }

    /// One line for `/readyz`: where the snapshot came from and whether the
    /// stream is live.
    pub fn describe(&self) -> String {
        let origin = match self.origin() {
            Origin::Nothing => "no snapshot yet",
            Origin::StateDir => "serving the snapshot saved in the state dir",
            Origin::Controller => "serving the controller's snapshot",
        };
        if self.connected() {
            format!("{origin}; stream connected")
        } else {
            let why = self.last_error().unwrap_or_else(|| "connecting".into());
            format!("{origin}; stream DISCONNECTED ({why}), keeping the last snapshot")
        }
    }

    /// Blocks until a snapshot is installed (from the state dir or the
    /// controller), or the timeout passes; returns whether one is.
    pub fn wait_installed(&self, timeout: Duration) -> bool {
        let origin = self.origin.lock().unwrap_or_else(|e| e.into_inner());
        let (origin, _) = self
            .installed
            .wait_timeout_while(origin, timeout, |o| *o == Origin::Nothing)
            .unwrap_or_else(|e| e.into_inner());
        *origin != Origin::Nothing
    }

    fn set_origin(&self, origin: Origin) {
        *self.origin.lock().unwrap_or_else(|e| e.into_inner()) = origin;
        self.installed.notify_all();
    }

    fn heard(&self) {
        self.last_frame_unix_ms.store(unix_ms(), Ordering::Relaxed);
    }

    fn broke(&self, error: String) {
        self.connected.store(false, Ordering::Relaxed);
        self.breaks.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr}: {source}")]
    Handshake {
        addr: String,
        source: std::io::Error,
    },
    #[error("stream: {0}")]
    Frame(#[from] FrameError),
    #[error("sending: {0}")]
    Send(std::io::Error),
    #[error("nothing heard from the controller for {0:?}")]
    Silent(Duration),
    #[error("the controller closed the stream")]
    Closed,
    #[error("the stream began with a delta")]
    DeltaFirst,
    #[error("the controller sent a hello")]
    UnexpectedHello,
    #[error("delta does not apply: {0}")]
    Delta(#[from] WireError),
}

/// Starts following on its own thread. `install` sees every snapshot with
/// the keys the delta touched (`None` after a full snapshot). Returns at once;
/// use [`StreamStatus::wait_installed`] to wait for the first snapshot.
pub fn spawn_follower<F>(config: FollowerConfig, install: F) -> std::io::Result<Arc<StreamStatus>>
where
    F: FnMut(&Snapshot, Option<&DeltaKeys>) + Send + 'static,
{
    let status = Arc::new(StreamStatus::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let s = status.clone();
    std::thread::Builder::new()
        .name("pier-snapshot-stream".into())
        .spawn(move || runtime.block_on(follow(config, install, s)))?;
    Ok(status)
}

struct Follower<F> {
    config: FollowerConfig,
    install: F,
    status: Arc<StreamStatus>,
    base: Option<Snapshot>,
    dirty: bool,
    saved_at: Option<Instant>,
}

async fn follow<F>(config: FollowerConfig, install: F, status: Arc<StreamStatus>)
where
    F: FnMut(&Snapshot, Option<&DeltaKeys>),
{
    let mut f = Follower {
        config,
        install,
        status,
        base: None,
        dirty: false,
        saved_at: None,
    };
    f.start_from_state_dir();
    let mut backoff = Duration::from_millis(100);
    loop {
        let error = match f.session().await {
            Ok(()) => SessionError::Closed,
            Err(e) => e,
        };
        f.save_if_dirty(true);
        let was_connected = f.status.connected();
        f.status.broke(error.to_string());
        if was_connected {
            backoff = Duration::from_millis(100);
        }
        tracing::warn!(controller = %f.config.controller, error = %error, retry_ms = backoff.as_millis() as u64, "snapshot stream lost; keeping the last snapshot");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

impl<F: FnMut(&Snapshot, Option<&DeltaKeys>)> Follower<F> {
    fn start_from_state_dir(&mut self) {
        let Some(dir) = &self.config.state_dir else {
            return;
        };
        match dir.load() {
            Ok(Some(snapshot)) => {
                tracing::info!(path = %dir.path().display(), routes_version = snapshot.routes.version, backends_version = snapshot.backends.version, "starting from the saved snapshot");
                (self.install)(&snapshot, None);
                self.base = Some(snapshot);
                self.status.set_origin(Origin::StateDir);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "saved snapshot ignored"),
        }
    }

    fn save_if_dirty(&mut self, now: bool) {
        let (Some(dir), Some(base)) = (&self.config.state_dir, &self.base) else {
            return;
        };
        if !self.dirty || (!now && self.saved_at.is_some_and(|t| t.elapsed() < SAVE_EVERY)) {
            return;
        }
        match dir.save(base) {
            Ok(()) => {
                self.dirty = false;
                self.saved_at = Some(Instant::now());
            }
            Err(e) => tracing::warn!(error = %e, "snapshot not saved"),
        }
    }

    async fn session(&mut self) -> Result<(), SessionError> {
        let addr = self.config.controller.clone();
        let deadline = self.config.heartbeat * 3;
        let tcp = tokio::time::timeout(deadline, TcpStream::connect(&addr))
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            .map_err(|source| SessionError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        match self.config.tls.clone() {
            None => self.run(tcp, deadline).await,
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(tls.config);
                let stream =
                    tokio::time::timeout(deadline, connector.connect(tls.server_name, tcp))
                        .await
                        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
                        .map_err(|source| SessionError::Handshake { addr, source })?;
                self.run(stream, deadline).await
            }
        }
    }

    async fn run<S>(&mut self, stream: S, deadline: Duration) -> Result<(), SessionError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let hello = Frame::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            subscriber: self.config.subscriber.clone(),
        });
        write_frame(&mut wr, &hello)
            .await
            .map_err(SessionError::Send)?;
        // Heartbeats go out from their own task: installing a big snapshot
        // must not look like silence to the controller.
        let heartbeat = self.config.heartbeat;
        let beats = tokio::spawn(async move {
            loop {
                tokio::time::sleep(heartbeat).await;
                let sent =
                    tokio::time::timeout(heartbeat * 3, write_frame(&mut wr, &Frame::Heartbeat))
                        .await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
            }
        });
        let result = self.read_loop(&mut rd, deadline).await;
        beats.abort();
        result
    }

    async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        deadline: Duration,
    ) -> Result<(), SessionError> {
        let mut synced = false;
        loop {
            let frame = tokio::time::timeout(deadline, read_frame(rd))
                .await
                .map_err(|_| SessionError::Silent(deadline))??;
            self.status.heard();
            match frame {
                None => return Err(SessionError::Closed),
                Some(Frame::Heartbeat) => {}
                Some(Frame::Hello(_)) => return Err(SessionError::UnexpectedHello),
                Some(Frame::Message(Message::Full(snapshot))) => {
                    (self.install)(&snapshot, None);
                    self.base = Some(snapshot);
                    self.dirty = true;
                    if !synced {
                        synced = true;
                        self.status.connected.store(true, Ordering::Relaxed);
                        self.status.connects.fetch_add(1, Ordering::Relaxed);
                        self.status.set_origin(Origin::Controller);
                        tracing::info!(controller = %self.config.controller, "snapshot stream connected");
                    }
                }
                Some(Frame::Message(Message::Delta(delta))) => {
                    let base = match (&mut self.base, synced) {
                        (Some(base), true) => base,
                        _ => return Err(SessionError::DeltaFirst),
                    };
                    let keys = delta.keys();
                    apply_delta_in_place(base, delta)?;
                    (self.install)(base, Some(&keys));
                    self.dirty = true;
                }
            }
            self.save_if_dirty(false);
        }
    }
}

impl StreamStatus {
    /// The stream's state in the Prometheus text format, appended by the data
    /// planes to their own `/metrics`.
    pub fn render_metrics(&self) -> String {
        let silence = self.silence().map_or(-1.0, |d| d.as_secs_f64());
        let origin = match self.origin() {
            Origin::Nothing => 0,
            Origin::StateDir => 1,
            Origin::Controller => 2,
        };
        format!(
            "# HELP pier_stream_connected Whether the snapshot stream to the controller is live.\n\
             # TYPE pier_stream_connected gauge\n\
             pier_stream_connected {}\n\
             # HELP pier_stream_connects_total Connections that delivered a full snapshot.\n\
             # TYPE pier_stream_connects_total counter\n\
             pier_stream_connects_total {}\n\
             # HELP pier_stream_breaks_total Connections lost or refused.\n\
             # TYPE pier_stream_breaks_total counter\n\
             pier_stream_breaks_total {}\n\
             # HELP pier_stream_silence_seconds Time since the controller last sent a frame (-1: never).\n\
             # TYPE pier_stream_silence_seconds gauge\n\
             pier_stream_silence_seconds {silence}\n\
             # HELP pier_stream_snapshot_origin Where the served snapshot came from: 0 none, 1 state dir, 2 controller.\n\
             # TYPE pier_stream_snapshot_origin gauge\n\
             pier_stream_snapshot_origin {origin}\n",
            u8::from(self.connected()),
            self.connects(),
            self.breaks(),
        )
    }
}
