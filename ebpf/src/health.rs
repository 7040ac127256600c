//! healthCheckNodePort for `externalTrafficPolicy: Local` LoadBalancer
//! Services: HTTP 200 with the node's ready local endpoint count when there is
//! at least one, 503 otherwise — so cloud load balancers skip (and drain)
//! nodes without local endpoints.

use crate::plan::NodeInfo;
use pier_snapshot::Snapshot;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEAD: u64 = 8 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Health {
    namespace: String,
    name: String,
    local_endpoints: usize,
}

type Answers = Arc<Mutex<HashMap<u16, Health>>>;

/// Per port, what the health check answers; listeners start on first use.
pub struct HealthChecks {
    bind: IpAddr,
    answers: Answers,
    listening: Mutex<HashSet<u16>>,
}

impl HealthChecks {
    pub fn new(bind: IpAddr) -> Self {
        HealthChecks {
            bind,
            answers: Arc::default(),
            listening: Mutex::default(),
        }
    }

    /// Recomputes every answer from `snapshot` and opens listeners for new ports.
    pub fn update(&self, snapshot: &Snapshot, node: &NodeInfo) {
        let mut answers = HashMap::new();
        for svc in snapshot.services.data.values() {
            let Some(port) = svc.health_check_node_port else {
                continue;
            };
            // Ready only: a node whose local pods are all terminating must be drained.
            let local = snapshot.backends.data.get(&svc.backends).map_or(0, |set| {
                set.endpoints
                    .iter()
                    .filter(|e| e.ready && e.node_name.as_deref() == Some(node.name.as_str()))
                    .count()
            });
            answers.insert(
                port,
                Health {
                    namespace: svc.namespace.clone(),
                    name: svc.name.clone(),
                    local_endpoints: local,
                },
            );
        }
        let ports: Vec<u16> = answers.keys().copied().collect();
        *self.answers.lock().unwrap_or_else(|e| e.into_inner()) = answers;
        let mut listening = self.listening.lock().unwrap_or_else(|e| e.into_inner());
        for port in ports {
            // A port whose bind failed is tried again on the next update.
            if !listening.contains(&port) && self.listen(port) {
                listening.insert(port);
            }
        }
    }

    fn listen(&self, port: u16) -> bool {
        let addr = SocketAddr::new(self.bind, port);
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot open the health check node port");
                return false;
            }
        };
        let answers = self.answers.clone();
        std::thread::Builder::new()
            .name(format!("pier-health-{port}"))
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let answers = answers.clone();
                    // One thread per probe, with a deadline and a size cap: a
                    // silent or endless client cannot block the other probers.
                    let _ = std::thread::Builder::new()
                        .name("pier-health-probe".into())
                        .spawn(move || answer(conn, port, &answers));
                }
            })
            .is_ok()
    }
}

fn answer(mut conn: TcpStream, port: u16, answers: &Answers) {
    let _ = conn.set_read_timeout(Some(PROBE_TIMEOUT));
    let _ = conn.set_write_timeout(Some(PROBE_TIMEOUT));
    let Ok(clone) = conn.try_clone() else { return };
    let mut reader = BufReader::new(clone.take(MAX_HEAD));
    let mut line = String::new();
    // The answer does not depend on the request: read its head until the blank
    // line, the size cap, EOF or the deadline.
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
        line.clear();
    }
    let health = answers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&port)
        .cloned();
    let (status, body) = match health {
        Some(h) => (
            if h.local_endpoints > 0 { "200 OK" } else { "503 Service Unavailable" },
            format!(
                "{{\"service\":{{\"namespace\":\"{}\",\"name\":\"{}\"}},\"localEndpoints\":{},\"serviceProxyHealthy\":true}}\n",
                h.namespace, h.name, h.local_endpoints
            ),
        ),
        None => ("503 Service Unavailable", "{\"localEndpoints\":0}\n".to_string()),
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}
