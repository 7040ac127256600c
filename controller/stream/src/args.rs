//! The data planes' stream flags, parsed in one place for both binaries.

use crate::follower::{ClientTls, FollowerConfig};
use crate::frame::Subscriber;
use crate::state::StateDir;
use crate::tls::{client_config, server_name, TlsError, TlsFiles};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct StreamClientArgs {
    /// The controller's snapshot stream, `HOST:PORT` (instead of --manifests).
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "manifests")]
    pub controller: Option<String>,
    /// CA that issued the controller's certificate (PEM); with
    /// --controller-tls-cert and --controller-tls-key turns on mutual TLS.
    #[arg(long, value_name = "PEM", requires_all = ["controller_tls_cert", "controller_tls_key", "controller"])]
    pub controller_tls_ca: Option<PathBuf>,
    /// This data plane's client certificate chain (PEM).
    #[arg(long, value_name = "PEM", requires = "controller_tls_ca")]
    pub controller_tls_cert: Option<PathBuf>,
    /// This data plane's client private key (PEM).
    #[arg(long, value_name = "PEM", requires = "controller_tls_ca")]
    pub controller_tls_key: Option<PathBuf>,
    /// Name the controller's certificate must carry (default: the host of --controller).
    #[arg(long, value_name = "NAME", requires = "controller_tls_ca")]
    pub controller_server_name: Option<String>,
    /// Folder where the last applied snapshot is kept, to start from it when
    /// the controller is unreachable.
    #[arg(long, value_name = "DIR", requires = "controller")]
    pub state_dir: Option<PathBuf>,
    /// Seconds between heartbeats; a controller silent for three is presumed gone.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub heartbeat_seconds: u64,
}

impl StreamClientArgs {
    /// The follower's configuration, `None` without --controller. TLS files
    /// are read here so a bad one fails at start-up.
    pub fn follower_config(
        &self,
        subscriber: Subscriber,
    ) -> Result<Option<FollowerConfig>, TlsError> {
        let Some(controller) = &self.controller else {
            return Ok(None);
        };
        let tls = match (
            &self.controller_tls_ca,
            &self.controller_tls_cert,
            &self.controller_tls_key,
        ) {
            (Some(ca), Some(cert), Some(key)) => {
                let host = controller
                    .rsplit_once(':')
                    .map_or(controller.as_str(), |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = self.controller_server_name.as_deref().unwrap_or(host);
                Some(ClientTls {
                    config: client_config(&TlsFiles {
                        ca: ca.clone(),
                        cert: cert.clone(),
                        key: key.clone(),
                    })?,
                    server_name: server_name(name)?,
                })
            }
            _ => None,
        };
        Ok(Some(FollowerConfig {
            controller: controller.clone(),
            tls,
            subscriber,
            heartbeat: Duration::from_secs(self.heartbeat_seconds),
            state_dir: self.state_dir.clone().map(StateDir::new),
        }))
    }
}
