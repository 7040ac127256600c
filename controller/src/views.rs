//! What each kind of subscriber may see of a publication, and the frames
//! that bring it there.
//!
//! - an agent sees L4 services, backends and policies; never routes or
//!   private keys;
//! - a proxy sees routes, backends and certificates. A proxy scoped to some
//!   Gateways (or without Ingresses) gets routes and certificates from a
//!   translation of only what it serves (an *overlay*, with versions of its
//!   own), so it never receives another Gateway's private key.
//!
//! Views are never materialised per subscriber: a subscriber's position is
//! the publication (and overlay) it was last sent. Frames are encoded once
//! per (view, from, to) and shared by every subscriber in the same place,
//! so a change fans out to many data planes at the cost of one.

use crate::hub::Publication;
use pier_snapshot::{make_delta_parts, Message, Parts, Snapshot};
use pier_stream::{Frame, ProxyScope, Subscriber};
use pier_translate::{translate, ClusterState, TranslateOptions};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ViewKey {
    Agent,
    Proxy(ProxyScope),
}

const AGENT: Parts = Parts {
    routes: false,
    backends: true,
    services: true,
    policies: true,
    certificates: false,
};
const PROXY: Parts = Parts {
    routes: true,
    backends: true,
    services: false,
    policies: false,
    certificates: true,
};
const BACKENDS: Parts = Parts {
    routes: false,
    backends: true,
    services: false,
    policies: false,
    certificates: false,
};
const OVERLAY: Parts = Parts {
    routes: true,
    backends: false,
    services: false,
    policies: false,
    certificates: true,
};

impl ViewKey {
    pub fn of(subscriber: &Subscriber) -> ViewKey {
        match subscriber {
            Subscriber::Agent { .. } => ViewKey::Agent,
            Subscriber::Proxy { scope, .. } => ViewKey::Proxy(scope.clone()),
        }
    }

    fn scope(&self) -> Option<&ProxyScope> {
        match self {
            ViewKey::Proxy(scope) if *scope != ProxyScope::default() => Some(scope),
            _ => None,
        }
    }

    /// The parts taken from the publication itself.
    fn shared_parts(&self) -> Parts {
        match self {
            ViewKey::Agent => AGENT,
            ViewKey::Proxy(_) if self.scope().is_some() => BACKENDS,
            ViewKey::Proxy(_) => PROXY,
        }
    }
}

/// Where a subscriber stands: the publication it was last sent, and for a
/// scoped proxy the overlay.
#[derive(Clone)]
pub struct Position {
    pub publication: Arc<Publication>,
    pub overlay: Option<Arc<Snapshot>>,
}

struct Overlay {
    state_generation: u64,
    current: Arc<Snapshot>,
}

type FrameKey = (ViewKey, Option<u64>, u64);

pub struct Views {
    options: TranslateOptions,
    overlays: Mutex<HashMap<ProxyScope, Overlay>>,
    frames: Mutex<HashMap<FrameKey, Option<Arc<Vec<u8>>>>>,
}

impl Views {
    pub fn new(options: TranslateOptions) -> Self {
        Views {
            options,
            overlays: Mutex::new(HashMap::new()),
            frames: Mutex::new(HashMap::new()),
        }
    }

    /// Where a subscriber of `key` stands once sent `publication`.
    pub fn position(&self, key: &ViewKey, publication: &Arc<Publication>) -> Position {
        Position {
            publication: publication.clone(),
            overlay: key.scope().map(|scope| self.overlay(scope, publication)),
        }
    }

    /// The encoded frame that brings a subscriber of `key` from `from`
    /// (`None`: nothing yet, a full snapshot) to `to`; `None` when nothing it
    /// sees changed.
    pub fn frame(
        &self,
        key: &ViewKey,
        from: Option<&Position>,
        to: &Position,
    ) -> Option<Arc<Vec<u8>>> {
        let id = (
            key.clone(),
            from.map(|p| p.publication.seq),
            to.publication.seq,
        );
        if let Some(frame) = self
            .frames
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return frame.clone();
        }
        let frame = self
            .build(key, from, to)
            .map(|m| Arc::new(Frame::Message(m).encode()));
        let mut frames = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        // Only frames towards the newest publication are useful again.
        frames.retain(|(_, _, seq), _| *seq >= to.publication.seq);
        frames.insert(id, frame.clone());
        frame
    }

    fn build(&self, key: &ViewKey, from: Option<&Position>, to: &Position) -> Option<Message> {
        let shared = key.shared_parts();
        let Some(from) = from else {
            let mut full = to.publication.snapshot.project(shared);
            if let Some(overlay) = &to.overlay {
                full.routes = overlay.routes.clone();
                full.certificates = overlay.certificates.clone();
            }
            return Some(Message::Full(full));
        };
        let (a, b) = (&from.publication, &to.publication);
        let mut delta = match &b.delta {
            // Up to date: the hub's delta, computed once for everyone.
            Some(delta) if b.seq == a.seq + 1 => delta.restricted(shared),
            _ => make_delta_parts(&a.snapshot, &b.snapshot, shared),
        };
        if let (Some(old), Some(new)) = (&from.overlay, &to.overlay) {
            if !Arc::ptr_eq(old, new) {
                let d = make_delta_parts(old, new, OVERLAY);
                delta.routes = d.routes;
                delta.certificates = d.certificates;
            }
        }
        (!delta.is_empty()).then_some(Message::Delta(delta))
    }

    /// The routes and certificates of what `scope` serves, translated once
    /// per change of the cluster state (endpoint changes keep it).
    fn overlay(&self, scope: &ProxyScope, publication: &Publication) -> Arc<Snapshot> {
        let mut overlays = self.overlays.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = overlays.get(scope) {
            if o.state_generation == publication.state_generation {
                return o.current.clone();
            }
        }
        let scoped = scoped_state(&publication.state, scope);
        let t = translate(&scoped, &self.options).snapshot;
        let mut next = Snapshot::empty();
        next.routes.data = t.routes.data;
        next.certificates.data = t.certificates.data;
        let mut current = overlays
            .get(scope)
            .map_or_else(Snapshot::empty, |o| (*o.current).clone());
        current.advance(next);
        let current = Arc::new(current);
        overlays.insert(
            scope.clone(),
            Overlay {
                state_generation: publication.state_generation,
                current: current.clone(),
            },
        );
        current
    }
}

/// The cluster state with only the Gateways (and Ingresses) a proxy serves.
fn scoped_state(state: &ClusterState, scope: &ProxyScope) -> ClusterState {
    let mut scoped = state.clone();
    if let Some(gateways) = &scope.gateways {
        scoped.gateways.retain(|g| {
            let id = format!(
                "{}/{}",
                g.metadata.namespace.as_deref().unwrap_or("default"),
                g.metadata.name.as_deref().unwrap_or_default()
            );
            gateways.contains(&id)
        });
    }
    if !scope.ingress {
        scoped.ingresses.clear();
    }
    scoped
}
