//! TLS with rustls: certificates chosen per SNI from the current routing,
//! and the SNI remembered for the HTTP layer (421 detection).

use crate::routing::Shared;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::any::Any;
use std::sync::Arc;

/// Parses a PEM chain and key into a rustls certified key. Error messages
/// never include key material.
pub fn load_certified_key(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    let chain: Vec<_> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("unreadable certificate PEM: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in PEM".into());
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|_| "unreadable private key PEM".to_string())?
        .ok_or_else(|| "no private key in PEM".to_string())?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| "unsupported private key type".to_string())?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()
        .map_err(|_| "private key does not match the certificate".to_string())?;
    Ok(ck)
}

/// Picks the certificate for one TLS port from the live routing.
#[derive(Debug)]
pub struct SniResolver {
    pub port: u16,
    pub shared: Arc<Shared>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let routing = self.shared.routing.load_full()?;
        let map = routing.sni.get(&self.port)?;
        let name = hello.server_name().unwrap_or("").to_ascii_lowercase();
        map.lookup(&name)
            .and_then(|(_, certs)| certs.first().cloned())
    }
}

/// The SNI of a downstream TLS connection, stored in pingora's SslDigest.
pub struct ServerName(pub String);

pub struct SniCapture;

#[async_trait::async_trait]
impl TlsAccept for SniCapture {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        Some(Arc::new(ServerName(
            tls.server_name().unwrap_or("").to_ascii_lowercase(),
        )))
    }
}
