//! A folder of multi-document Kubernetes YAML → pier's [`ClusterState`].
//!
//! Parsing is strict: unknown kinds, unknown fields and wrongly typed values
//! are errors that name the file and line, so a typo never silently drops a
//! route. [`watch`] re-reads the folder when a file changes.

mod follow;
mod strict;
mod watch;

pub use follow::{follow_dir, FollowError, Update};
pub use watch::{watch, watch_with_settle, SETTLE};

use pier_translate::ClusterState;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct ManifestError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

/// All the errors of one load, so a user fixes them in one go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ManifestErrors(pub Vec<ManifestError>);

/// Reads every `*.yaml` / `*.yml` file under `dir` (recursively, in path order).
pub fn load_dir(dir: &Path) -> Result<ClusterState, ManifestErrors> {
    let mut files = Vec::new();
    collect_files(dir, &mut files).map_err(|e| {
        ManifestErrors(vec![ManifestError {
            file: dir.to_path_buf(),
            line: 0,
            message: format!("cannot read folder: {e}"),
        }])
    })?;
    files.sort();
    let mut state = ClusterState::default();
    let mut loader = Loader::default();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => loader.parse(&file, &text, &mut state),
            Err(e) => loader.errors.push(ManifestError {
                file: file.clone(),
                line: 0,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    loader.finish(state)
}

/// Parses one multi-document YAML text (as if it were the file `file`).
pub fn load_str(file: &Path, text: &str) -> Result<ClusterState, ManifestErrors> {
    let mut state = ClusterState::default();
    let mut loader = Loader::default();
    loader.parse(file, text, &mut state);
    loader.finish(state)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// A document of a multi-document file, with the line it starts on.
struct Document<'a> {
    text: &'a str,
    first_line: usize,
}

/// Splits on `---` lines, keeping line numbers (1-based) of each document.
fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "..." {
            docs.push(Document {
                text: &text[start_byte..offset],
                first_line: start_line,
            });
            start_byte = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push(Document {
        text: &text[start_byte..],
        first_line: start_line,
    });
    docs
}

#[derive(Default)]
struct Loader {
    errors: Vec<ManifestError>,
    /// (kind, namespace, name) → where it was first seen.
    seen: std::collections::HashMap<(String, String, String), (PathBuf, usize)>,
}

/// Rewrites "line N" in a parser message (relative to the document) to file lines.
fn shift_lines(message: &str, offset: usize) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("line ") {
        out.push_str(&rest[..at + 5]);
        rest = &rest[at + 5..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

fn line_of_key(doc: &Document<'_>, key: &str) -> usize {
    doc.text
        .lines()
        .position(|l| {
            l.trim_start()
                .trim_start_matches("- ")
                .starts_with(&format!("{key}:"))
        })
        .map_or(doc.first_line, |i| doc.first_line + i)
}

impl Loader {
    fn error(&mut self, file: &Path, line: usize, message: impl Into<String>) {
        self.errors.push(ManifestError {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        });
    }

    /// A parser error, with its line (and the lines it mentions) counted in the file.
    fn parse_error(
        &mut self,
        file: &Path,
        doc: &Document<'_>,
        what: &str,
        e: &serde_yaml_ng::Error,
    ) {
        let line = e
            .location()
            .map_or(doc.first_line, |l| doc.first_line + l.line() - 1);
        self.error(
            file,
            line,
            format!(
                "{what}: {}",
                shift_lines(&e.to_string(), doc.first_line - 1)
            ),
        );
    }

    fn parse(&mut self, file: &Path, text: &str, state: &mut ClusterState) {
        for doc in split_documents(text) {
            self.parse_document(file, &doc, state);
        }
    }

    fn parse_document(&mut self, file: &Path, doc: &Document<'_>, state: &mut ClusterState) {
        let value: serde_json::Value = match serde_yaml_ng::from_str(doc.text) {
            Ok(v) => v,
            Err(e) => {
                self.parse_error(file, doc, "invalid YAML", &e);
                return;
            }
        };
        if value.is_null() {
            return; // an empty document (comments only) is fine
        }
        let (Some(api_version), Some(kind)) = (
            value
                .get("apiVersion")
                .and_then(|v| v.as_str())
                .map(String::from),
            value.get("kind").and_then(|v| v.as_str()).map(String::from),
        ) else {
            self.error(file, doc.first_line, "document has no apiVersion and kind");
            return;
        };
        if kind == "List" {
            self.error(
                file,
                doc.first_line,
                "kind List is not supported: write one document per object",
            );
            return;
        }
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        macro_rules! take {
            ($field:ident, $ty:ty) => {
                self.typed::<$ty>(file, doc, &value, &kind)
                    .map(|o| state.$field.push(o))
            };
        }
        use gateway_api::experimental as gw;
        use k8s_openapi::api::{
            core::v1 as core, discovery::v1 as discovery, networking::v1 as net,
        };
        let known = match (group, kind.as_str()) {
            ("", "Namespace") => take!(namespaces, core::Namespace),
            ("", "Service") => take!(services, core::Service),
            ("", "Secret") => take!(secrets, core::Secret),
            ("", "Pod") => take!(pods, core::Pod),
            ("discovery.k8s.io", "EndpointSlice") => {
                take!(endpoint_slices, discovery::EndpointSlice)
            }
            ("networking.k8s.io", "Ingress") => take!(ingresses, net::Ingress),
            ("networking.k8s.io", "IngressClass") => take!(ingress_classes, net::IngressClass),
            ("networking.k8s.io", "NetworkPolicy") => take!(network_policies, net::NetworkPolicy),
            ("gateway.networking.k8s.io", "GatewayClass") => {
                take!(gateway_classes, gw::gatewayclasses::GatewayClass)
            }
            ("gateway.networking.k8s.io", "Gateway") => take!(gateways, gw::gateways::Gateway),
            ("gateway.networking.k8s.io", "HTTPRoute") => {
                take!(http_routes, gw::httproutes::HttpRoute)
            }
            ("gateway.networking.k8s.io", "GRPCRoute") => {
                take!(grpc_routes, gw::grpcroutes::GrpcRoute)
            }
            ("gateway.networking.k8s.io", "TLSRoute") => take!(tls_routes, gw::tlsroutes::TlsRoute),
            ("gateway.networking.k8s.io", "TCPRoute") => take!(tcp_routes, gw::tcproutes::TcpRoute),
            ("gateway.networking.k8s.io", "UDPRoute") => take!(udp_routes, gw::udproutes::UdpRoute),
            ("gateway.networking.k8s.io", "ReferenceGrant") => {
                take!(reference_grants, gw::referencegrants::ReferenceGrant)
            }
            _ => {
                let line = line_of_key(doc, "kind");
                self.error(file, line, format!("unknown kind {kind} ({api_version}); pier reads Namespace, Service, Secret, Pod, EndpointSlice, Ingress, IngressClass, NetworkPolicy and the Gateway API kinds"));
                return;
            }
        };
        let _ = known;
    }

    /// Deserialises one object strictly and records it; `None` after an error.
    fn typed<T: DeserializeOwned + serde::Serialize + ObjectMeta>(
        &mut self,
        file: &Path,
        doc: &Document<'_>,
        value: &serde_json::Value,
        kind: &str,
    ) -> Option<T> {
        let mut object: T = match serde_yaml_ng::from_str(doc.text) {
            Ok(o) => o,
            Err(e) => {
                self.parse_error(file, doc, &format!("invalid {kind}"), &e);
                return None;
            }
        };
        let round_trip = serde_json::to_value(&object).unwrap_or_default();
        if let Some(path) = strict::first_unknown_field(value, &round_trip) {
            let key = path
                .rsplit('.')
                .next()
                .unwrap_or(&path)
                .trim_end_matches(']');
            let line = line_of_key(doc, key.split('[').next().unwrap_or(key));
            self.error(file, line, format!("{kind}: unknown field `{path}`"));
            return None;
        }
        let meta = object.meta_mut();
        let Some(name) = meta.name.clone().filter(|n| !n.is_empty()) else {
            self.error(file, doc.first_line, format!("{kind} has no metadata.name"));
            return None;
        };
        let namespaced = !matches!(kind, "Namespace" | "IngressClass" | "GatewayClass");
        if namespaced && meta.namespace.is_none() {
            meta.namespace = Some("default".into());
        }
        let id = (
            kind.to_string(),
            meta.namespace.clone().unwrap_or_default(),
            name.clone(),
        );
        if let Some((first_file, first_line)) = self.seen.get(&id) {
            let message = format!(
                "duplicate {kind} {}{name}: first defined at {}:{first_line}",
                meta.namespace
                    .as_ref()
                    .map(|n| format!("{n}/"))
                    .unwrap_or_default(),
                first_file.display()
            );
            self.error(file, doc.first_line, message);
            return None;
        }
        self.seen.insert(id, (file.to_path_buf(), doc.first_line));
        Some(object)
    }

    fn finish(self, state: ClusterState) -> Result<ClusterState, ManifestErrors> {
        if self.errors.is_empty() {
            Ok(state)
        } else {
            Err(ManifestErrors(self.errors))
        }
    }
}

/// Access to `metadata` for every kind the loader reads.
trait ObjectMeta {
    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
}

macro_rules! object_meta {
    ($($ty:ty),*) => {$(
        impl ObjectMeta for $ty {
            fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &mut self.metadata
            }
        }
    )*};
}

object_meta!(
    k8s_openapi::api::core::v1::Namespace,
    k8s_openapi::api::core::v1::Service,
    k8s_openapi::api::core::v1::Secret,
    k8s_openapi::api::core::v1::Pod,
    k8s_openapi::api::discovery::v1::EndpointSlice,
    k8s_openapi::api::networking::v1::Ingress,
    k8s_openapi::api::networking::v1::IngressClass,
    k8s_openapi::api::networking::v1::NetworkPolicy,
    gateway_api::experimental::gatewayclasses::GatewayClass,
    gateway_api::experimental::gateways::Gateway,
    gateway_api::experimental::httproutes::HttpRoute,
    gateway_api::experimental::grpcroutes::GrpcRoute,
    gateway_api::experimental::tlsroutes::TlsRoute,
    gateway_api::experimental::tcproutes::TcpRoute,
    gateway_api::experimental::udproutes::UdpRoute,
    gateway_api::experimental::referencegrants::ReferenceGrant
);

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        load_str(Path::new("m.yaml"), text)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn reads_several_kinds_and_defaults_the_namespace() {
        let state = load_str(
            Path::new("m.yaml"),
            "# comment only\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: apps}\nspec: {}\n",
        )
        .unwrap();
        assert_eq!(state.services.len(), 1);
        assert_eq!(
            state.services[0].metadata.namespace.as_deref(),
            Some("default")
        );
        assert_eq!(
            state.http_routes[0].metadata.namespace.as_deref(),
            Some("apps")
        );
    }

    #[test]
    fn syntax_errors_name_the_line_of_the_document() {
        let e = errors("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: [unclosed\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("m.yaml:9: invalid YAML"), "{e:?}");
        assert!(e[0].contains("flow sequence at line 8 column 9"), "{e:?}");
    }

    #[test]
    fn unknown_kinds_and_fields_are_errors_with_lines() {
        let e = errors("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n");
        assert!(
            e[0].starts_with("m.yaml:6: unknown kind Deployment"),
            "{e:?}"
        );
        let e = errors("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n    targetPortt: 8080\n");
        assert!(
            e[0].starts_with("m.yaml:8: Service: unknown field `spec.ports[0].targetPortt`"),
            "{e:?}"
        );
    }

    #[test]
    fn wrong_types_and_duplicates_are_errors() {
        let e = errors("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: eighty\n");
        assert!(
            e[0].starts_with("m.yaml:") && e[0].contains("invalid Service"),
            "{e:?}"
        );
        let e = errors("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n");
        assert!(
            e[0].starts_with("m.yaml:5: duplicate Namespace a: first defined at m.yaml:1"),
            "{e:?}"
        );
    }
}
