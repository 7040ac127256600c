//! Command-line arguments, parsed and checked in one place.

use clap::{Parser, Subcommand, ValueEnum};
use pier_translate::TranslateOptions;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "pier-controller",
    version,
    about = "pier's control plane: Kubernetes objects in, snapshots and status out"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the snapshot and the statuses a folder of manifests translates to.
    Translate {
        #[command(flatten)]
        source: Source,
        #[arg(long, short, value_enum, default_value_t = Output::Yaml)]
        output: Output,
    },
    /// Say which listener, route, rule and backend a request would reach, and why the others did not.
    Explain {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Translate the folder and re-translate whenever a file in it changes.
    Watch {
        #[command(flatten)]
        source: Source,
    },
    /// Stream snapshots to data planes (full on connect, then deltas).
    Serve {
        #[command(flatten)]
        source: Source,
        /// Address data planes connect to.
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: std::net::SocketAddr,
    },
}

#[derive(clap::Args, Debug)]
pub struct Source {
    /// Folder of multi-document YAML manifests (standalone mode).
    #[arg(long, value_name = "DIR")]
    pub manifests: PathBuf,
    /// IngressClass name served when no IngressClass object names a controller.
    #[arg(long, default_value = "pier")]
    pub ingress_class: String,
    /// Port Ingress rules are served on over HTTP.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u16).range(1..))]
    pub ingress_http_port: u16,
    /// Port Ingress TLS hosts are served on.
    #[arg(long, default_value_t = 443, value_parser = clap::value_parser!(u16).range(1..))]
    pub ingress_https_port: u16,
}

impl Source {
    pub fn options(&self) -> TranslateOptions {
        TranslateOptions {
            ingress_class: self.ingress_class.clone(),
            ingress_http_port: self.ingress_http_port,
            ingress_https_port: self.ingress_https_port,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct RequestArgs {
    /// The request URL, e.g. https://app.example.com:8443/api?x=1
    #[arg(long)]
    pub url: String,
    /// A request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// The request method.
    #[arg(short = 'X', long = "method", default_value = "GET")]
    pub method: String,
    /// TLS server name, when it differs from the URL's host.
    #[arg(long)]
    pub sni: Option<String>,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("header {s:?} is not `name: value`"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("header {s:?} has an empty name"));
    }
    Ok((name.to_string(), value.trim().to_string()))
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Output {
    Yaml,
    Json,
}
