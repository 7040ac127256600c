//! Structural checks a data plane runs before it swaps a snapshot in.
//! A snapshot that fails is rejected whole; the last good one keeps serving.

use crate::{
    BackendRef, HttpFilter, L4Route, PathMatch, RouteAction, Snapshot, SniAction, WeightedBackend,
    SCHEMA_VERSION,
};
use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid snapshot: {}", .problems.join("; "))]
pub struct ValidationError {
    pub problems: Vec<String>,
}

impl Snapshot {
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut problems = Vec::new();
        if self.schema != SCHEMA_VERSION {
            problems.push(format!("schema {} is not {}", self.schema, SCHEMA_VERSION));
        }
        let mut seen = BTreeSet::new();
        let mut last = None;
        for listener in &self.routes.data.listeners {
            let key = (listener.port, listener.protocol);
            if listener.port == 0 {
                problems.push("listener on port 0".into());
            }
            if !seen.insert(key) {
                problems.push(format!("two listeners for {key:?}"));
            }
            if last.is_some_and(|l| l > key) {
                problems.push(format!("listeners not sorted at {key:?}"));
            }
            last = Some(key);
            let at = format!("port {}", listener.port);
            for sni in &listener.tls {
                match &sni.action {
                    SniAction::TerminateHttp { certificates } => {
                        self.check_certs(&at, certificates, &mut problems)
                    }
                    SniAction::TerminateTcp {
                        certificates,
                        route,
                    } => {
                        self.check_certs(&at, certificates, &mut problems);
                        self.check_l4(&at, route, &mut problems);
                    }
                    SniAction::Passthrough { route } => self.check_l4(&at, route, &mut problems),
                }
            }
            if let Some(route) = &listener.l4 {
                self.check_l4(&at, route, &mut problems);
            }
            for vhost in &listener.virtual_hosts {
                for entry in &vhost.routes {
                    let at = format!("{at} host {} {}", vhost.hostname, entry.source);
                    match &entry.matcher.path {
                        PathMatch::Exact(p) | PathMatch::Prefix(p) if !p.starts_with('/') => {
                            problems.push(format!("{at}: path {p:?} does not start with /"))
                        }
                        _ => {}
                    }
                    if let RouteAction::Forward(backends) = &entry.action {
                        self.check_weighted(&at, backends, &mut problems);
                    }
                    for filter in &entry.filters {
                        if let HttpFilter::Mirror { backend, .. } = filter {
                            self.check_ref(&at, backend, &mut problems);
                        }
                    }
                }
            }
        }
        for (key, service) in &self.services.data {
            if !self.backends.data.contains_key(&service.backends) {
                problems.push(format!(
                    "service {key} points at missing backend set {}",
                    service.backends
                ));
            }
        }
        for (key, cert) in &self.certificates.data {
            if !cert.chain_pem.contains("-----BEGIN CERTIFICATE-----") {
                problems.push(format!("certificate {key} has no PEM certificate"));
            }
            if !cert.private_key_pem.0.contains("PRIVATE KEY-----") {
                problems.push(format!("certificate {key} has no PEM private key"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ValidationError { problems })
        }
    }

    fn check_certs(&self, at: &str, certs: &[String], problems: &mut Vec<String>) {
        if certs.is_empty() {
            problems.push(format!("{at}: TLS termination without a certificate"));
        }
        for cert in certs {
            if !self.certificates.data.contains_key(cert) {
                problems.push(format!("{at}: missing certificate {cert}"));
            }
        }
    }

    fn check_l4(&self, at: &str, route: &L4Route, problems: &mut Vec<String>) {
        self.check_weighted(&format!("{at} {}", route.source), &route.backends, problems);
    }

    fn check_weighted(&self, at: &str, backends: &[WeightedBackend], problems: &mut Vec<String>) {
        if backends.iter().map(|b| u64::from(b.weight)).sum::<u64>() == 0 {
            problems.push(format!("{at}: no backend with a positive weight"));
        }
        for b in backends {
            self.check_ref(at, &b.backend, problems);
        }
    }

    fn check_ref(&self, at: &str, backend: &BackendRef, problems: &mut Vec<String>) {
        if let BackendRef::Service(key) = backend {
            if !self.backends.data.contains_key(key) {
                problems.push(format!("{at}: missing backend set {key}"));
            }
        }
    }
}
