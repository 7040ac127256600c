//! TLS material. Keys never appear in Debug output or logs.

use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// PEM certificate chain, leaf first.
    pub chain_pem: String,
    pub private_key_pem: PrivateKeyPem,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("chain_pem_bytes", &self.chain_pem.len())
            .field("private_key_pem", &self.private_key_pem)
            .finish()
    }
}

/// A PEM private key. `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PrivateKeyPem(pub String);

impl std::fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for PrivateKeyPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let cert = Certificate {
            chain_pem: "-----BEGIN CERTIFICATE-----".into(),
            private_key_pem: PrivateKeyPem("-----BEGIN PRIVATE KEY----- secret".into()),
        };
        let shown = format!("{cert:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
