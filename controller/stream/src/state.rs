//! The last applied snapshot on disk, so a data plane restarted while the
//! controller is away starts from what it served before.

use crate::frame::{Frame, FrameError};
use pier_snapshot::{Message, Snapshot};
use std::io::Write;
use std::path::{Path, PathBuf};

const FILE: &str = "snapshot.pier";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a saved snapshot: {source}")]
    Corrupt { path: PathBuf, source: FrameError },
}

#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateDir { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The saved snapshot, `None` when nothing was saved yet.
    pub fn load(&self) -> Result<Option<Snapshot>, StateError> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let body = bytes.get(4..).unwrap_or_default();
        match Frame::decode(body) {
            Ok(Frame::Message(Message::Full(s))) => Ok(Some(s)),
            Ok(_) => Err(StateError::Corrupt {
                path,
                source: FrameError::Empty,
            }),
            Err(source) => Err(StateError::Corrupt { path, source }),
        }
    }

    /// Saves atomically (write, sync, rename), readable by the owner only:
    /// the snapshot holds private keys.
    pub fn save(&self, snapshot: &Snapshot) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: self.dir.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let bytes = Frame::Message(Message::Full(snapshot.clone())).encode();
        let write = |path: &Path| -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)?;
            f.write_all(&bytes)?;
            f.sync_all()
        };
        write(&tmp).map_err(io)?;
        std::fs::rename(&tmp, self.path()).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        assert!(state.load().unwrap().is_none());
        let mut s = Snapshot::empty();
        s.backends.version = 7;
        state.save(&s).unwrap();
        assert_eq!(state.load().unwrap(), Some(s));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(state.path(), b"garbage!").unwrap();
        assert!(matches!(state.load(), Err(StateError::Corrupt { .. })));
    }
}
