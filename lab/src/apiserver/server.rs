//! The running server: the store behind a lock, a resourceVersion signal that wakes
//! watches, and the HTTP listener. Stopping it closes the listener and every watch;
//! its [`ApiState`] can be taken out and served again (a restart on the same port).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::kubeconfig;
use super::store::ApiState;
use kubewire::cache::manifests::ManifestObject;

/// How long a stop waits for open requests before it drops them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct ApiServerConfig {
    pub listen: SocketAddr,
    /// How many resourceVersions of watch history are kept; older ones get 410 Gone.
    pub history: usize,
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval: Duration,
    /// The objects the server starts with (ignored by [`ApiServer::start_with_state`]).
    pub seed: Vec<ManifestObject>,
}

/// What the HTTP handlers and watches share.
pub struct Shared {
    state: Mutex<ApiState>,
    /// The current resourceVersion; watches wake when it moves.
    pub versions: watch::Sender<u64>,
    /// Becomes `true` when the server stops; every watch then ends.
    pub shutdown: watch::Sender<bool>,
    /// `true` while the server is frozen (a fault for tests): connections are accepted
    /// and kept, nothing is answered, open watches deliver nothing.
    pub frozen: watch::Sender<bool>,
    pub bookmark_interval: Duration,
    pub addr: SocketAddr,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ApiState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn read<T>(&self, read: impl FnOnce(&ApiState) -> T) -> T {
        read(&self.lock())
    }

    /// Returns once the server is not frozen.
    pub async fn thawed(&self) {
        let mut frozen = self.frozen.subscribe();
        let _ = frozen.wait_for(|frozen| !*frozen).await;
    }

    /// Runs a write, then wakes the watches if the resourceVersion moved.
    pub fn write<T>(&self, write: impl FnOnce(&mut ApiState) -> T) -> T {
        let (out, rv) = {
            let mut state = self.lock();
            let out = write(&mut state);
            (out, state.resource_version())
        };
        self.versions.send_if_modified(|current| {
            let moved = *current != rv;
            *current = rv;
            moved
        });
        out
    }
}

pub struct ApiServer {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Seeds a store from `config.seed` and serves it.
    pub async fn start(mut config: ApiServerConfig) -> anyhow::Result<ApiServer> {
        let state = ApiState::seeded(std::mem::take(&mut config.seed), config.history)?;
        Self::start_with_state(config, state).await
    }

    /// Serves an existing store (e.g. from [`ApiServer::into_state`]); `config.seed`
    /// is ignored, `config.history` applies.
    pub async fn start_with_state(
        config: ApiServerConfig,
        mut state: ApiState,
    ) -> anyhow::Result<ApiServer> {
        state.set_history_limit(config.history);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("API server: listening on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let rv = state.resource_version();
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            versions: watch::channel(rv).0,
            shutdown: watch::channel(false).0,
            frozen: watch::channel(false).0,
            bookmark_interval: config.bookmark_interval,
            addr,
        });
        let router = super::http::router(shared.clone());
        let mut stopping = shared.shutdown.subscribe();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopping.wait_for(|down| *down).await;
                })
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "API server stopped");
            }
        });
        tracing::info!(url = %format!("http://{addr}"), resource_version = rv, "API server listening");
        Ok(ApiServer {
            shared,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A kubeconfig for this server (context `kubewire-lab`, no credentials).
    pub fn kubeconfig(&self) -> String {
        kubeconfig::kubeconfig(&self.url())
    }

    /// A kube-rs client built from [`ApiServer::kubeconfig`], as the agent builds one.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.kubeconfig())?;
        let options = kube::config::KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Reads the store (for tests and tools running beside the server).
    pub fn read<T>(&self, read: impl FnOnce(&ApiState) -> T) -> T {
        self.shared.read(read)
    }

    /// Changes the store directly, waking the watches (for tests and tools running
    /// beside the server; clients go through HTTP).
    pub fn write<T>(&self, write: impl FnOnce(&mut ApiState) -> T) -> T {
        self.shared.write(write)
    }

    /// Freezes the server as a hung kube-apiserver is: TCP connections are accepted
    /// and stay open, but no request gets an answer and no watch an event until
    /// [`ApiServer::thaw`]. Writes through [`ApiServer::write`] still happen.
    pub fn freeze(&self) {
        self.shared.frozen.send_replace(true);
        tracing::warn!("API server frozen");
    }

    /// Ends a [`ApiServer::freeze`]: held requests are answered, watches go on.
    pub fn thaw(&self) {
        self.shared.frozen.send_replace(false);
        tracing::info!("API server thawed");
    }

    /// Compacts the watch history to the last `keep` changes, as etcd compaction
    /// does: a watch from an older resourceVersion gets 410 Gone and must relist.
    pub fn compact(&self, keep: usize) {
        self.shared.write(|state| state.set_history_limit(keep));
    }

    /// Closes the listener and every open watch.
    pub async fn shutdown(mut self) {
        self.stop().await;
    }

    /// Stops the server and hands back its store, to serve again later.
    pub async fn into_state(mut self) -> ApiState {
        self.stop().await;
        let history = 0;
        std::mem::replace(&mut *self.shared.lock(), ApiState::new(history))
    }

    async fn stop(&mut self) {
        self.shared.shutdown.send_replace(true);
        let Some(mut task) = self.task.take() else {
            return;
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
            .await
            .is_err()
        {
            tracing::warn!("API server: open requests did not finish in time; dropping them");
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
