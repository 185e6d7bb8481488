//! The live cache: a kube-rs reflector per kind over one client. Each store is
//! eventually consistent with the API server; the watcher relists on 410 Gone and
//! reconnects with backoff when the server goes away, so the cache outlives restarts.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{NetworkPolicy, ServiceCIDR};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch as tokio_watch;

use super::trim::{trim_object, trim_pod};
use super::{Changes, Kind, Snapshot};
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

struct Stores {
    nodes: Store<Node>,
    namespaces: Store<Namespace>,
    pods: Store<Pod>,
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    network_policies: Store<NetworkPolicy>,
    service_cidrs: Store<ServiceCIDR>,
}

/// The shared cache. Cloning is cheap; every clone reads the same stores.
#[derive(Clone)]
pub struct Cache {
    stores: Arc<Stores>,
    kinds: Arc<Vec<(Kind, KindState)>>,
    tasks: Arc<Vec<tokio::task::JoinHandle<()>>>,
}

impl Cache {
    /// Starts one watcher per kind on `client`. Returns at once; see [`Cache::wait_synced`].
    pub fn start(client: Client, metrics: Metrics) -> Cache {
        let kinds: Arc<Vec<(Kind, KindState)>> = Arc::new(
            Kind::ALL
                .into_iter()
                .map(|kind| {
                    (
                        kind,
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
        };
        let stores = Stores {
            nodes: ctx.spawn(Kind::Node, trim_object, &mut tasks),
            namespaces: ctx.spawn(Kind::Namespace, trim_object, &mut tasks),
            pods: ctx.spawn(Kind::Pod, trim_pod, &mut tasks),
            services: ctx.spawn(Kind::Service, trim_object, &mut tasks),
            endpoint_slices: ctx.spawn(Kind::EndpointSlice, trim_object, &mut tasks),
            network_policies: ctx.spawn(Kind::NetworkPolicy, trim_object, &mut tasks),
            service_cidrs: ctx.spawn(Kind::ServiceCIDR, trim_object, &mut tasks),
        };
        Cache {
            stores: Arc::new(stores),
            kinds,
            tasks: Arc::new(tasks),
        }
    }

    /// Waits until every kind has completed its first list, or fails naming the kinds
    /// that did not within `timeout`.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), SyncError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let unsynced = self.unsynced();
            if unsynced.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SyncError {
                    timeout,
                    kinds: unsynced,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
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

    /// The current contents of every store.
    pub fn snapshot(&self) -> Snapshot {
        let s = &self.stores;
        Snapshot {
            nodes: s.nodes.state(),
            namespaces: s.namespaces.state(),
            pods: s.pods.state(),
            services: s.services.state(),
            endpoint_slices: s.endpoint_slices.state(),
            network_policies: s.network_policies.state(),
            service_cidrs: s.service_cidrs.state(),
        }
        .sorted()
    }

    /// Stops every watcher (the stores keep their last contents).
    pub fn stop(&self) {
        for task in self.tasks.iter() {
            task.abort();
        }
    }
}

struct WatchContext {
    client: Client,
    metrics: Metrics,
    kinds: Arc<Vec<(Kind, KindState)>>,
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
        let (reader, writer) = reflector::store::<K>();
        let api: Api<K> = Api::all(self.client.clone());
        let metrics = self.metrics.clone();
        let kinds = self.kinds.clone();
        let store = reader.clone();
        let stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(trim)
            .reflect(writer);
        tasks.push(tokio::spawn(async move {
            let Some((_, state)) = kinds.iter().find(|(k, _)| *k == kind) else {
                return;
            };
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(event) => {
                        let visible = match event {
                            Event::InitDone => {
                                state.synced.store(true, Ordering::Release);
                                true
                            }
                            Event::Apply(_) | Event::Delete(_) => true,
                            Event::Init | Event::InitApply(_) => false,
                        };
                        if visible {
                            state.generation.send_modify(|g| *g += 1);
                            metrics.set_cache_objects(kind, store.len());
                        }
                    }
                    Err(err) => {
                        metrics.watch_restarted(kind);
                        tracing::warn!(%kind, error = %err, "watch failed; retrying with backoff");
                    }
                }
            }
        }));
        reader
    }
}
