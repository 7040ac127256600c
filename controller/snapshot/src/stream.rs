//! Following a snapshot stream (std I/O only, no runtime): full snapshot on
//! connect, then deltas; on any break, reconnect with back-off and resync.
//! Data planes call this with their own way to connect and to install.

use crate::{apply_delta_in_place, read_frame, DeltaKeys, Message, Snapshot};
use std::io::Read;
use std::time::Duration;

const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Connects (retrying with back-off, calling `on_error` for each failure)
/// until the stream yields its first full snapshot.
pub fn first_snapshot<S: Read>(
    connect: &mut impl FnMut() -> std::io::Result<S>,
    on_error: &mut impl FnMut(&str),
) -> (Snapshot, S) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = connect().and_then(|mut s| match read_frame(&mut s)? {
            Some(Message::Full(snapshot)) => Ok((snapshot, s)),
            Some(Message::Delta(_)) => Err(std::io::Error::other("the stream began with a delta")),
            None => Err(std::io::Error::other("the stream closed before a snapshot")),
        });
        match attempt {
            Ok(first) => return first,
            Err(e) => {
                on_error(&format!("{e}; retrying in {} ms", backoff.as_millis()));
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Applies the stream forever, starting from `base` read from `stream`.
/// `install` sees every snapshot, with the keys the delta touched (`None`
/// after a full snapshot: anything may have changed); `base` follows the
/// producer even when the consumer rejects one, so later deltas still apply.
pub fn follow<S: Read>(
    mut connect: impl FnMut() -> std::io::Result<S>,
    mut install: impl FnMut(&Snapshot, Option<&DeltaKeys>),
    mut on_error: impl FnMut(&str),
    mut base: Snapshot,
    mut stream: S,
) -> ! {
    loop {
        let applied = match read_frame(&mut stream) {
            Ok(Some(Message::Delta(delta))) => {
                let keys = delta.keys();
                apply_delta_in_place(&mut base, delta)
                    .map(|()| Some(keys))
                    .map_err(|e| e.to_string())
            }
            Ok(Some(Message::Full(snapshot))) => {
                base = snapshot;
                Ok(None)
            }
            Ok(None) => Err("the stream closed".to_string()),
            Err(e) => Err(e.to_string()),
        };
        match applied {
            Ok(keys) => install(&base, keys.as_ref()),
            Err(e) => {
                on_error(&format!("{e}; keeping the last snapshot and resyncing"));
                (base, stream) = first_snapshot(&mut connect, &mut on_error);
                install(&base, None);
            }
        }
    }
}
