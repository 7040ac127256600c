//! What each kind of subscriber may see of a publication.
//!
//! Every view is its own versioned snapshot (advanced with
//! `Snapshot::advance`), so a part a view leaves out never moves, and a change
//! to a Gateway a proxy does not serve never reaches it. Views are shared by
//! every subscriber of the same kind and scope, and computed once per
//! publication.
//!
//! - an agent sees L4 services, backends and policies; never routes or
//!   private keys;
//! - a proxy sees routes, backends and the certificates of what it serves:
//!   a proxy scoped to some Gateways gets a translation of only those, so it
//!   never receives another Gateway's private key.

use crate::hub::Publication;
use pier_snapshot::Snapshot;
use pier_stream::{ProxyScope, Subscriber};
use pier_translate::{translate, ClusterState, TranslateOptions};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ViewKey {
    Agent,
    Proxy(ProxyScope),
}

impl ViewKey {
    pub fn of(subscriber: &Subscriber) -> ViewKey {
        match subscriber {
            Subscriber::Agent { .. } => ViewKey::Agent,
            Subscriber::Proxy { scope, .. } => ViewKey::Proxy(scope.clone()),
        }
    }
}

struct ViewState {
    publication_seq: u64,
    state_generation: u64,
    current: Arc<Snapshot>,
}

pub struct Views {
    options: TranslateOptions,
    views: Mutex<HashMap<ViewKey, ViewState>>,
}

impl Views {
    pub fn new(options: TranslateOptions) -> Self {
        Views {
            options,
            views: Mutex::new(HashMap::new()),
        }
    }

    /// The view of `publication` for `key` (the same `Arc` for every
    /// subscriber of that view until the next publication).
    pub fn get(&self, key: &ViewKey, publication: &Publication) -> Arc<Snapshot> {
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = views.get(key) {
            if v.publication_seq == publication.seq {
                return v.current.clone();
            }
        }
        let previous = views.get(key);
        let next = self.compute(key, publication, previous);
        let mut current = previous.map_or_else(Snapshot::empty, |v| (*v.current).clone());
        current.advance(next);
        let current = Arc::new(current);
        views.insert(
            key.clone(),
            ViewState {
                publication_seq: publication.seq,
                state_generation: publication.state_generation,
                current: current.clone(),
            },
        );
        current
    }

    fn compute(
        &self,
        key: &ViewKey,
        publication: &Publication,
        previous: Option<&ViewState>,
    ) -> Snapshot {
        let full = &publication.snapshot;
        let mut view = Snapshot::empty();
        match key {
            ViewKey::Agent => {
                view.backends.data = full.backends.data.clone();
                view.services.data = full.services.data.clone();
                view.policies.data = full.policies.data.clone();
            }
            ViewKey::Proxy(scope) => {
                view.backends.data = full.backends.data.clone();
                if *scope == ProxyScope::default() {
                    view.routes.data = full.routes.data.clone();
                    view.certificates.data = full.certificates.data.clone();
                } else if let Some(prev) =
                    previous.filter(|p| p.state_generation == publication.state_generation)
                {
                    // Only endpoints moved: the scoped routes cannot have.
                    view.routes.data = prev.current.routes.data.clone();
                    view.certificates.data = prev.current.certificates.data.clone();
                } else {
                    let scoped = scoped_state(&publication.state, scope);
                    let t = translate(&scoped, &self.options);
                    view.routes.data = t.snapshot.routes.data;
                    view.certificates.data = t.snapshot.certificates.data;
                }
            }
        }
        view
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
