//! The shared watch cache: one reflector per watched kind, started once per process,
//! eventually consistent with the API server; a change signal per kind that controllers
//! wait on; and snapshots the pure compilers read. Controllers never call the API.
//!
//! watcher ([`watch`]) → trimmed objects ([`trim`]) → store → [`Changes`] signal →
//! [`Snapshot`]. The same [`Snapshot`] is filled from YAML by [`manifests`] for the
//! offline verbs.

/// A slim type of ours is watched and named as the API's type `$api` is.
macro_rules! watched_as {
    ($ours:ty, $api:ty) => {
        impl k8s_openapi::Resource for $ours {
            const API_VERSION: &'static str = <$api as k8s_openapi::Resource>::API_VERSION;
            const GROUP: &'static str = <$api as k8s_openapi::Resource>::GROUP;
            const KIND: &'static str = <$api as k8s_openapi::Resource>::KIND;
            const VERSION: &'static str = <$api as k8s_openapi::Resource>::VERSION;
            const URL_PATH_SEGMENT: &'static str =
                <$api as k8s_openapi::Resource>::URL_PATH_SEGMENT;
            type Scope = <$api as k8s_openapi::Resource>::Scope;
        }

        impl k8s_openapi::Metadata for $ours {
            type Ty = ObjectMeta;

            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

mod discovery;
mod endpoint_slice;
mod kind;
pub mod labels;
pub mod liveness;
pub mod manifests;
mod pod;
mod signal;
mod snapshot;
mod store;
mod strict;
mod trim;
mod watch;

pub use endpoint_slice::{Endpoint, EndpointSlice};
pub use kind::Kind;
pub use labels::Labels;
pub use pod::{Container, Pod, PodSpec, PodStatus};
pub use signal::{COALESCE_WINDOW, Changes};
pub use snapshot::Snapshot;
pub use trim::{
    trim_endpoint_slice, trim_network_policy, trim_node, trim_object, trim_pod, trim_service,
};
pub use watch::{Cache, SyncError};
