//! Frames on the stream: `u32` little-endian length, one kind byte, payload.
//!
//! The controller sends snapshot messages (`pier_snapshot::encode`, which
//! carries its own magic and schema version) and heartbeats; a data plane
//! sends one `Hello` saying who it is, then heartbeats. Either side that hears
//! nothing for a few heartbeat intervals drops the connection.

use pier_snapshot::{decode, decode_value, encode, encode_value, Message, WireError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bumped when the framing or the hello changes incompatibly.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame a reader accepts (a full snapshot of a large cluster fits).
pub const MAX_FRAME: usize = 256 * 1024 * 1024;

const KIND_MESSAGE: u8 = 0;
const KIND_HEARTBEAT: u8 = 1;
const KIND_HELLO: u8 = 2;

/// Who is subscribing, and so what it may receive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub subscriber: Subscriber,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Subscriber {
    /// pier-agent on a node: L4 services, backends, policies; never routes or
    /// certificates.
    Agent { node: String },
    /// pier-proxy: routes, backends and the certificates of what it serves.
    Proxy { name: String, scope: ProxyScope },
}

/// What a proxy serves.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProxyScope {
    /// `namespace/name` of the Gateways served; `None` = every Gateway of pier's class.
    pub gateways: Option<Vec<String>>,
    /// Whether Ingresses of pier's IngressClass are served.
    pub ingress: bool,
}

impl Default for ProxyScope {
    fn default() -> Self {
        ProxyScope {
            gateways: None,
            ingress: true,
        }
    }
}

impl Subscriber {
    /// A short label for logs and metrics.
    pub fn label(&self) -> String {
        match self {
            Subscriber::Agent { node } => format!("agent/{node}"),
            Subscriber::Proxy { name, .. } => format!("proxy/{name}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
// Frames are built once and written at once: the size spread costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Frame {
    Message(Message),
    Heartbeat,
    Hello(Hello),
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("undecodable frame: {0}")]
    Decode(#[from] WireError),
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload) = match self {
            Frame::Message(m) => (KIND_MESSAGE, encode(m)),
            Frame::Heartbeat => (KIND_HEARTBEAT, Vec::new()),
            Frame::Hello(h) => (KIND_HELLO, encode_value(h)),
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.extend_from_slice(&(payload.len() as u32 + 1).to_le_bytes());
        out.push(kind);
        out.extend_from_slice(&payload);
        out
    }

    pub fn decode(body: &[u8]) -> Result<Frame, FrameError> {
        let (&kind, payload) = body.split_first().ok_or(FrameError::Empty)?;
        match kind {
            KIND_MESSAGE => Ok(Frame::Message(decode(payload)?)),
            KIND_HEARTBEAT => Ok(Frame::Heartbeat),
            KIND_HELLO => Ok(Frame::Hello(decode_value(payload)?)),
            other => Err(FrameError::UnknownKind(other)),
        }
    }
}

/// Writes one frame (and flushes: TLS buffers otherwise).
pub async fn write_frame<W: AsyncWrite + Unpin>(out: &mut W, frame: &Frame) -> std::io::Result<()> {
    let bytes = frame.encode();
    if bytes.len() - 4 > MAX_FRAME {
        return Err(std::io::Error::other(FrameError::TooLarge(bytes.len())));
    }
    out.write_all(&bytes).await?;
    out.flush().await
}

/// Writes a frame already encoded with [`Frame::encode`] (one encoding
/// shared by many subscribers).
pub async fn write_encoded<W: AsyncWrite + Unpin>(
    out: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    out.write_all(bytes).await?;
    out.flush().await
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(input: &mut R) -> Result<Option<Frame>, FrameError> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    input.read_exact(&mut body).await?;
    Frame::decode(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pier_snapshot::Snapshot;

    #[tokio::test]
    async fn frames_round_trip() {
        let frames = [
            Frame::Message(Message::Full(Snapshot::empty())),
            Frame::Heartbeat,
            Frame::Hello(Hello {
                protocol: PROTOCOL_VERSION,
                subscriber: Subscriber::Proxy {
                    name: "p".into(),
                    scope: ProxyScope {
                        gateways: Some(vec!["ns/gw".into()]),
                        ingress: false,
                    },
                },
            }),
        ];
        let mut bytes = Vec::new();
        for f in &frames {
            write_frame(&mut bytes, f).await.unwrap();
        }
        let mut input = bytes.as_slice();
        for f in &frames {
            assert_eq!(read_frame(&mut input).await.unwrap().as_ref(), Some(f));
        }
        assert!(read_frame(&mut input).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &[1u8, 0, 0, 0, 9][..],
            &[0xff, 0xff, 0xff, 0xff],
            &[3, 0, 0, 0, 0, 1, 2],
            &[0, 0, 0, 0],
            // Truncated: announces 10 bytes, carries 3.
            &[10, 0, 0, 0, 0, 1, 2],
        ] {
            let mut input = bytes;
            assert!(read_frame(&mut input).await.is_err(), "{bytes:?}");
        }
    }
}
