//! The live cache: a kube-rs watcher and a [`Store`] per kind the enabled
//! controllers read, over one client. Each store is eventually consistent with the
//! API server; the watcher relists on 410 Gone and reconnects with backoff when the
//! server goes away, so the cache outlives restarts; the API server probe
//! ([`super::liveness`]) can restart every stream when a hang makes their connections
//! suspect. A kind the API server does not serve (ServiceCIDR before Kubernetes 1.33)
//! is not watched: it reads as empty and counts as synced.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::networking::v1::{NetworkPolicy, ServiceCIDR};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch as tokio_watch;

use super::liveness::{Restart, RestartRequest, WatchRestarts};
use super::store::{Store, Writer};
use super::trim::{
    trim_endpoint_slice, trim_network_policy, trim_node, trim_object, trim_pod, trim_service,
};
use super::{Changes, EndpointSlice, Kind, Pod, Snapshot};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
#[error("the watch cache did not sync within {timeout:?}: no complete list of {}", kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", "))]
pub struct SyncError {
    pub timeout: Duration,
    pub kinds: Vec<Kind>,
}

struct KindState {
    generation: tokio_watch::Sender<u64>,
    synced: AtomicBool,
}

impl KindState {
    /// Returns once the kind's first list has completed.
    async fn listed(&self) {
        // Subscribed before looking: the list completing in between still wakes it.
        let mut changes = self.generation.subscribe();
        while !self.synced.load(Ordering::Acquire) {
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// One store per kind; `None` for a kind that is not watched.
struct Stores {
    nodes: Option<Store<Node>>,
    namespaces: Option<Store<Namespace>>,
    pods: Option<Store<Pod>>,
    services: Option<Store<Service>>,
    endpoint_slices: Option<Store<EndpointSlice>>,
    network_policies: Option<Store<NetworkPolicy>>,
    service_cidrs: Option<Store<ServiceCIDR>>,
}

/// The shared cache. Cloning is cheap; every clone reads the same stores.
#[derive(Clone)]
pub struct Cache {
    stores: Arc<Stores>,
    kinds: Arc<Vec<(Kind, KindState)>>,
    tasks: Arc<Vec<tokio::task::JoinHandle<()>>>,
}

impl Cache {
    /// Starts one watcher for each of `kinds` that the API server serves (asking it
    /// for at most `discovery_timeout`). Returns once the watchers are started; see
    /// [`Cache::wait_synced`].
    pub async fn start(
        client: Client,
        kinds: &[Kind],
        metrics: Metrics,
        discovery_timeout: Duration,
    ) -> Cache {
        let never = WatchRestarts::default();
        Self::start_restartable(client, kinds, metrics, discovery_timeout, &never).await
    }

    /// [`Cache::start`], with each watch stream restarted (a new connection and a
    /// relist; the store keeps its contents until the list completes) when `restarts`
    /// asks.
    pub async fn start_restartable(
        client: Client,
        kinds: &[Kind],
        metrics: Metrics,
        discovery_timeout: Duration,
        restarts: &WatchRestarts,
    ) -> Cache {
        let served = super::discovery::served(&client, kinds, discovery_timeout).await;
        let watched: Vec<Kind> = kinds
            .iter()
            .copied()
            .filter(|k| served.contains(k))
            .collect();
        let kinds: Arc<Vec<(Kind, KindState)>> = Arc::new(
            watched
                .iter()
                .map(|kind| {
                    (
                        *kind,
                        KindState {
                            generation: tokio_watch::channel(0).0,
                            synced: AtomicBool::new(false),
                        },
                    )
                })
                .collect(),
        );
        let mut tasks = Vec::new();
        let ctx = WatchContext {
            client,
            metrics,
            kinds: kinds.clone(),
            restarts: restarts.clone(),
        };
        let spawn = |kind| watched.contains(&kind).then_some(kind);
        let stores = Stores {
            nodes: spawn(Kind::Node).map(|k| ctx.spawn(k, trim_node, &mut tasks)),
            namespaces: spawn(Kind::Namespace).map(|k| ctx.spawn(k, trim_object, &mut tasks)),
            pods: spawn(Kind::Pod).map(|k| ctx.spawn(k, trim_pod, &mut tasks)),
            services: spawn(Kind::Service).map(|k| ctx.spawn(k, trim_service, &mut tasks)),
            endpoint_slices: spawn(Kind::EndpointSlice)
                .map(|k| ctx.spawn(k, trim_endpoint_slice, &mut tasks)),
            network_policies: spawn(Kind::NetworkPolicy)
                .map(|k| ctx.spawn(k, trim_network_policy, &mut tasks)),
            service_cidrs: spawn(Kind::ServiceCIDR).map(|k| ctx.spawn(k, trim_object, &mut tasks)),
        };
        Cache {
            stores: Arc::new(stores),
            kinds,
            tasks: Arc::new(tasks),
        }
    }

    /// Waits until every watched kind's store has its first complete list, or fails
    /// naming the kinds that did not within `timeout`.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), SyncError> {
        let ready = futures::future::join_all(self.kinds.iter().map(|(_, state)| state.listed()));
        match tokio::time::timeout(timeout, ready).await {
            Ok(_) => Ok(()),
            Err(_) => Err(SyncError {
                timeout,
                kinds: self.unsynced(),
            }),
        }
    }

    /// Kinds whose first list has not completed.
    pub fn unsynced(&self) -> Vec<Kind> {
        self.kinds
            .iter()
            .filter(|(_, state)| !state.synced.load(Ordering::Acquire))
            .map(|(kind, _)| *kind)
            .collect()
    }

    /// A subscription to changes of `kinds`.
    pub fn subscribe(&self, kinds: &[Kind]) -> Changes {
        Changes::new(
            self.kinds
                .iter()
                .filter(|(kind, _)| kinds.contains(kind))
                .map(|(kind, state)| (*kind, state.generation.subscribe()))
                .collect(),
        )
    }

    /// The current contents of every store (empty for kinds not watched).
    pub fn snapshot(&self) -> Snapshot {
        let s = &self.stores;
        Snapshot {
            nodes: state(&s.nodes),
            namespaces: state(&s.namespaces),
            pods: state(&s.pods),
            services: state(&s.services),
            endpoint_slices: state(&s.endpoint_slices),
            network_policies: state(&s.network_policies),
            service_cidrs: state(&s.service_cidrs),
        }
        .sorted()
    }

    /// The kinds being watched.
    pub fn watched(&self) -> Vec<Kind> {
        self.kinds.iter().map(|(kind, _)| *kind).collect()
    }

    /// Stops every watcher (the stores keep their last contents).
    pub fn stop(&self) {
        for task in self.tasks.iter() {
            task.abort();
        }
    }
}

fn state<K: Resource>(store: &Option<Store<K>>) -> Vec<Arc<K>> {
    store.as_ref().map(Store::state).unwrap_or_default()
}

struct WatchContext {
    client: Client,
    metrics: Metrics,
    kinds: Arc<Vec<(Kind, KindState)>>,
    restarts: WatchRestarts,
}

impl WatchContext {
    fn spawn<K>(
        &self,
        kind: Kind,
        trim: fn(&mut K),
        tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    ) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let mut writer = Writer::<K>::new();
        let reader = writer.store();
        let mut api: Api<K> = Api::all(self.client.clone());
        let metrics = self.metrics.clone();
        let kinds = self.kinds.clone();
        let store = reader.clone();
        let mut restarts = Some(self.restarts.subscribe());
        tasks.push(tokio::spawn(async move {
            let Some((_, state)) = kinds.iter().find(|(k, _)| *k == kind) else {
                return;
            };
            loop {
                // A new watcher starts with a list; the writer swaps it in whole.
                let stream = watcher::watcher(api.clone(), watcher::Config::default())
                    .default_backoff()
                    .modify(trim);
                let mut stream = std::pin::pin!(stream);
                let mut listed = false;
                loop {
                    let item = tokio::select! {
                        item = stream.next() => item,
                        request = restart_requested(&mut restarts) => {
                            if request.which == Restart::Every || !listed {
                                if let Some(client) = request.client {
                                    api = Api::all(client);
                                }
                                break;
                            }
                            continue;
                        }
                    };
                    let Some(item) = item else { return };
                    match item {
                        Ok(event) => {
                            let done = matches!(event, Event::InitDone);
                            let visible =
                                done || matches!(event, Event::Apply(_) | Event::Delete(_));
                            writer.apply(event);
                            if done {
                                listed = true;
                                state.synced.store(true, Ordering::Release);
                            }
                            if visible {
                                state.generation.send_modify(|g| *g += 1);
                                metrics.set_cache_objects(kind.as_str(), store.len());
                            }
                        }
                        Err(err) => {
                            metrics.watch_restarted(kind.as_str());
                            tracing::warn!(%kind, error = %err, "watch failed; retrying with backoff");
                        }
                    }
                }
                metrics.watch_restarted(kind.as_str());
                tracing::info!(%kind, "restarting the watch (new connection, relist)");
            }
        }));
        reader
    }
}

/// The next restart request; never, once nobody can request one.
async fn restart_requested(
    restarts: &mut Option<tokio_watch::Receiver<RestartRequest>>,
) -> RestartRequest {
    if let Some(receiver) = restarts
        && receiver.changed().await.is_ok()
    {
        return receiver.borrow_and_update().clone();
    }
    *restarts = None;
    std::future::pending().await
}
