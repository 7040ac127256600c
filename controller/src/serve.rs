//! `pier-controller serve`: the snapshot stream. Each data plane that
//! connects gets the full snapshot, then a delta per change; a data plane
//! that loses the stream keeps serving its last snapshot and reconnects.

use anyhow::{Context, Result};
use pier_snapshot::{make_delta, write_frame, Message, Snapshot};
use pier_translate::{translate, ClusterState, TranslateOptions};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

/// The current snapshot and everyone subscribed to its changes, under one
/// lock so a new subscriber never misses or doubles a delta.
#[derive(Default)]
struct Publisher {
    state: Mutex<(Snapshot, Vec<Sender<Message>>)>,
}

impl Publisher {
    fn subscribe(&self) -> std::sync::mpsc::Receiver<Message> {
        let (tx, rx) = channel();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let _ = tx.send(Message::Full(state.0.clone()));
        state.1.push(tx);
        rx
    }

    fn publish(&self, next: Snapshot) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut advanced = state.0.clone();
        if advanced.advance(next).is_empty() {
            return;
        }
        let delta = make_delta(&state.0, &advanced);
        state.0 = advanced;
        state
            .1
            .retain(|tx| tx.send(Message::Delta(delta.clone())).is_ok());
        tracing::info!(
            subscribers = state.1.len(),
            routes_version = state.0.routes.version,
            backends_version = state.0.backends.version,
            "snapshot published"
        );
    }
}

fn translated(state: &ClusterState, options: &TranslateOptions) -> Snapshot {
    translate(state, options).snapshot
}

pub fn serve(dir: &Path, listen: SocketAddr, options: TranslateOptions) -> Result<()> {
    let publisher = Arc::new(Publisher::default());
    let state = pier_manifests::load_dir(dir)
        .map_err(anyhow::Error::new)
        .context("cannot load manifests")?;
    publisher.publish(translated(&state, &options));
    let _watcher = {
        let publisher = publisher.clone();
        let options = options.clone();
        pier_manifests::watch(dir, move |loaded| match loaded {
            Ok(state) => publisher.publish(translated(&state, &options)),
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(file = %e.file.display(), line = e.line, message = %e.message, "manifest rejected; subscribers keep the last good snapshot");
                }
            }
        })
        .context("cannot watch the manifest folder")?
    };
    let listener =
        TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, "serving snapshots");
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let peer = conn.peer_addr().ok();
        let rx = publisher.subscribe();
        std::thread::spawn(move || {
            tracing::info!(?peer, "data plane connected");
            for message in rx {
                if let Err(e) = write_frame(&mut conn, &message) {
                    tracing::info!(?peer, error = %e, "data plane gone");
                    return;
                }
            }
        });
    }
    Ok(())
}
