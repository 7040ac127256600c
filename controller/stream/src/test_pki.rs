//! A throwaway PKI for tests: one CA, a server certificate, client
//! certificates (valid, expired), written as PEM files into a folder.

use crate::tls::TlsFiles;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

pub struct TestCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    pub ca_pem: PathBuf,
}

impl TestCa {
    /// A new CA whose files live in `dir/name-*`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca_pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_pem, cert.pem()).expect("write CA");
        TestCa {
            dir: dir.to_owned(),
            issuer: Issuer::new(params, key),
            ca_pem,
        }
    }

    fn issue(&self, file: &str, names: &[&str], client: bool, expired: bool) -> TlsFiles {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, file);
        for name in names {
            params
                .subject_alt_names
                .push(match name.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName((*name).try_into().expect("DNS name")),
                });
        }
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let files = TlsFiles {
            ca: self.ca_pem.clone(),
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}-key.pem")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, file: &str, names: &[&str]) -> TlsFiles {
        self.issue(file, names, false, false)
    }

    pub fn client(&self, file: &str) -> TlsFiles {
        self.issue(file, &[], true, false)
    }

    /// A client certificate that expired in 2021.
    pub fn expired_client(&self, file: &str) -> TlsFiles {
        self.issue(file, &[], true, true)
    }
}

/// Client files that trust `server_ca` but present `client`'s certificate.
pub fn with_ca(client: &TlsFiles, server_ca: &Path) -> TlsFiles {
    TlsFiles {
        ca: server_ca.to_owned(),
        ..client.clone()
    }
}
