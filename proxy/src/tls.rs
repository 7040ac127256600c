//! TLS with rustls: certificates chosen per SNI from the current routing,
//! and the SNI remembered for the HTTP layer (421 detection).

use crate::routing::Shared;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::any::Any;
use std::sync::Arc;

/// Why a certificate could not be loaded. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("unreadable certificate PEM")]
    CertificatePem(#[source] std::io::Error),
    #[error("no certificate in PEM")]
    NoCertificate,
    #[error("unreadable private key PEM")]
    KeyPem(#[source] std::io::Error),
    #[error("no private key in PEM")]
    NoKey,
    #[error("unsupported private key type")]
    KeyType(#[source] rustls::Error),
    #[error("private key does not match the certificate")]
    Mismatch(#[source] rustls::Error),
}

/// Parses a PEM chain and key into a rustls certified key.
pub fn load_certified_key(
    chain_pem: &str,
    key_pem: &str,
) -> Result<CertifiedKey, CertificateError> {
    let chain: Vec<_> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(CertificateError::CertificatePem)?;
    if chain.is_empty() {
        return Err(CertificateError::NoCertificate);
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(CertificateError::KeyPem)?
        .ok_or(CertificateError::NoKey)?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(CertificateError::KeyType)?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(CertificateError::Mismatch)?;
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
        let map = routing.tls.sni.get(&self.port)?;
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
