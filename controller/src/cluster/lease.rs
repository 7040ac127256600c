//! Leader election on a coordination.k8s.io/v1 Lease, the client-go way:
//! the holder renews every retry period; another replica takes the Lease
//! once it has seen no renewal for the lease duration (measured on its own
//! clock, so clock skew between nodes does not matter); a leader that cannot
//! renew within the renew deadline stops acting as leader. Every replica
//! watches and translates; only the leader writes status.

use crate::metrics::Metrics;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// The last Lease record seen and when this replica first saw it.
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    at: Instant,
}

struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<Observed>,
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

impl Elector {
    /// One attempt: Some(true) when this replica holds the Lease afterwards,
    /// Some(false) when another does, None when a concurrent write won (undecided).
    async fn try_acquire_or_renew(&mut self) -> Result<Option<bool>, kube::Error> {
        let me = &self.config.identity;
        let duration = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Some(true)),
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(None),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let seen_before = self
            .observed
            .as_ref()
            .is_some_and(|o| o.holder == holder && o.renew_time == spec.renew_time);
        if !seen_before {
            self.observed = Some(Observed {
                holder: holder.clone(),
                renew_time: spec.renew_time.clone(),
                at: Instant::now(),
            });
        }
        let held_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.lease_duration, Duration::from_secs);
        let mine = holder.as_deref() == Some(me.as_str());
        let expired = holder.is_none()
            || self
                .observed
                .as_ref()
                .is_some_and(|o| o.at.elapsed() > held_for);
        if !mine && !expired {
            return Ok(Some(false));
        }
        let next = Lease {
            metadata: lease.metadata.clone(),
            spec: Some(LeaseSpec {
                holder_identity: Some(me.clone()),
                lease_duration_seconds: Some(duration),
                acquire_time: if mine { spec.acquire_time } else { Some(now()) },
                renew_time: Some(now()),
                lease_transitions: Some(
                    spec.lease_transitions.unwrap_or(0) + if mine { 0 } else { 1 },
                ),
                ..Default::default()
            }),
        };
        // The resourceVersion in `metadata` makes this a compare-and-swap.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(Some(true)),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up so another replica need not wait for it to expire.
    async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        let next = Lease {
            metadata: lease.metadata.clone(),
            spec: Some(LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                renew_time: Some(now()),
                acquire_time: spec.acquire_time,
                lease_transitions: spec.lease_transitions,
                ..Default::default()
            }),
        };
        self.api
            .replace(&self.config.name, &PostParams::default(), &next)
            .await
            .map(|_| ())
    }
}

/// Runs the election until `shutdown`, publishing whether this replica
/// leads; on shutdown a leader releases the Lease.
pub async fn run(
    client: Client,
    config: LeaseConfig,
    leader: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut elector = Elector {
        api: Api::namespaced(client, &config.namespace),
        config: config.clone(),
        observed: None,
    };
    let mut last_renewed: Option<Instant> = None;
    let set = |value: bool| {
        leader.send_if_modified(|current| {
            if *current == value {
                return false;
            }
            *current = value;
            metrics.leader.set(i64::from(value));
            metrics.leader_transitions.inc();
            if value {
                tracing::info!(identity = %config.identity, lease = %config.name, "became the leader");
            } else {
                tracing::warn!(identity = %config.identity, lease = %config.name, "no longer the leader");
            }
            true
        });
    };
    loop {
        let outcome = elector.try_acquire_or_renew().await;
        match outcome {
            Ok(Some(true)) => {
                last_renewed = Some(Instant::now());
                set(true);
            }
            Ok(Some(false)) => {
                last_renewed = None;
                set(false);
            }
            Ok(None) | Err(_) => {
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, lease = %config.name, "cannot read or renew the Lease");
                }
                // Stop writing before another replica may take over.
                if last_renewed.is_none_or(|t| t.elapsed() >= config.renew_deadline) {
                    last_renewed = None;
                    set(false);
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(config.retry_period) => {}
            () = shutdown.cancelled() => break,
        }
    }
    let was_leader = *leader.borrow();
    set(false);
    if was_leader {
        match elector.release().await {
            Ok(()) => tracing::info!(lease = %config.name, "released the Lease"),
            Err(e) => tracing::warn!(error = %e, "cannot release the Lease; it expires on its own"),
        }
    }
}
