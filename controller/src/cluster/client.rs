//! The one shared API client, and who this replica is.

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::path::Path;

/// `--kubeconfig` when given, else KUBECONFIG / ~/.kube/config, else the in-cluster config.
pub async fn client(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<Client> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .with_context(|| format!("invalid kubeconfig {}", path.display()))?
        }
        None if context.is_some() => Config::from_kubeconfig(&options)
            .await
            .context("cannot load the kubeconfig")?,
        None => Config::infer().await.context(
            "no kubeconfig (--kubeconfig, KUBECONFIG, ~/.kube/config) and not in a cluster",
        )?,
    };
    Client::try_from(config).context("cannot build the Kubernetes client")
}

const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The Lease's namespace: the flag, else POD_NAMESPACE, else the service account's, else `default`.
pub fn lease_namespace(flag: Option<&str>) -> String {
    if let Some(ns) = flag {
        return ns.to_string();
    }
    if let Some(ns) = std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|s| !s.is_empty())
    {
        return ns;
    }
    std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// This replica's identity: the flag, else POD_NAME, else the hostname.
pub fn identity(flag: Option<&str>) -> String {
    if let Some(id) = flag {
        return id.to_string();
    }
    if let Some(id) = std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()) {
        return id;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("pier-controller-{}", std::process::id()))
}
