//! Everything the firewall reads from one snapshot: the cluster view and the policies
//! that parsed, plus what did not (reported, never fatal). [`InputReader`] reads a
//! stream of snapshots, converting only the objects that changed.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::cache::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::cluster::{self, Cluster, ObjectError, PodEndpoint};
use super::policy::{self, Policy, PolicyError};
use crate::cache::Snapshot;
use crate::runtime::BadObject;

#[derive(Clone, Debug, Default)]
pub struct FirewallInput {
    pub cluster: Cluster,
    /// Shared with the previous read when no policy object changed, so comparing and
    /// dropping them costs nothing then.
    pub policies: Arc<Vec<Policy>>,
    /// What could not be used: policy fields (failed closed), object fields ignored.
    pub errors: Vec<BadObject>,
}

impl FirewallInput {
    pub fn from_snapshot(snapshot: &Snapshot) -> Self {
        let cluster = Cluster::from_snapshot(snapshot);
        let (policies, policy_errors) =
            policy::parse_all(snapshot.network_policies.iter().map(|p| p.as_ref()));
        let mut errors: Vec<BadObject> = cluster.errors.iter().map(object_error).collect();
        errors.extend(policy_errors.iter().map(policy_error));
        Self {
            cluster,
            policies: Arc::new(policies),
            errors,
        }
    }
}

/// An object's identity in the watch cache: the address of its `Arc` (kept alive by
/// the entry, so it cannot be reused while the entry exists).
type ObjectKey = usize;

/// A policy as read, with the fields of it that failed closed.
type ParsedPolicy = (Policy, Vec<PolicyError>);

type PodEntry = (Arc<Pod>, Option<Arc<PodEndpoint>>, Vec<ObjectError>);

/// Reads snapshot after snapshot, reusing the previous conversion of every pod and
/// policy whose object is the same (the watch cache hands out the same `Arc` for an
/// object that did not change), and the whole policy list when none changed.
#[derive(Default)]
pub struct InputReader {
    pods: ObjectMap<PodEntry>,
    policies: ObjectMap<(Arc<NetworkPolicy>, ParsedPolicy)>,
    /// The policy objects of the last read, in order, and what they gave.
    last_policies: Vec<ObjectKey>,
    last_read: (Arc<Vec<Policy>>, Vec<BadObject>),
}

type ObjectMap<V> = HashMap<ObjectKey, V, BuildHasherDefault<AddressHasher>>;

impl InputReader {
    pub fn read(&mut self, snapshot: &Snapshot) -> FirewallInput {
        let mut pods = ObjectMap::with_capacity_and_hasher(snapshot.pods.len(), Default::default());
        let cluster = Cluster::from_snapshot_with(snapshot, |pod| {
            let key = Arc::as_ptr(pod) as usize;
            let entry = match self.pods.remove(&key) {
                Some(entry) => entry,
                None => {
                    let mut errors = Vec::new();
                    let endpoint = cluster::pod_endpoint(pod, &mut errors).map(Arc::new);
                    (pod.clone(), endpoint, errors)
                }
            };
            let result = (entry.1.clone(), entry.2.clone());
            pods.insert(key, entry);
            result
        });
        self.pods = pods;
        let mut errors: Vec<BadObject> = cluster.errors.iter().map(object_error).collect();
        let keys: Vec<ObjectKey> = snapshot
            .network_policies
            .iter()
            .map(|p| Arc::as_ptr(p) as usize)
            .collect();
        if keys != self.last_policies {
            self.last_read = self.read_policies(snapshot);
            self.last_policies = keys;
        }
        errors.extend(self.last_read.1.iter().cloned());
        FirewallInput {
            cluster,
            policies: self.last_read.0.clone(),
            errors,
        }
    }

    /// Every policy, and the fields that did not parse.
    fn read_policies(&mut self, snapshot: &Snapshot) -> (Arc<Vec<Policy>>, Vec<BadObject>) {
        let mut policies = ObjectMap::with_capacity_and_hasher(
            snapshot.network_policies.len(),
            Default::default(),
        );
        let (mut good, mut errors) = (Vec::new(), Vec::new());
        for object in &snapshot.network_policies {
            let key = Arc::as_ptr(object) as usize;
            let entry = match self.policies.remove(&key) {
                Some(entry) => entry,
                None => (object.clone(), policy::parse(object)),
            };
            good.push(entry.1.0.clone());
            errors.extend(entry.1.1.iter().map(policy_error));
            policies.insert(key, entry);
        }
        self.policies = policies;
        (Arc::new(good), errors)
    }
}

fn object_error(error: &ObjectError) -> BadObject {
    BadObject::new(error.kind(), error.reason, error.to_string())
}

fn policy_error(error: &PolicyError) -> BadObject {
    BadObject::new("NetworkPolicy", error.reason, error.to_string())
}

/// Hashes object addresses (one `usize`) with a multiply and a rotate: they are
/// distinct already, and SipHash would cost more than the rest of a lookup.
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_usize(&mut self, value: usize) {
        self.0 = (self.0 ^ value as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::manifests;

    #[test]
    fn reader_agrees_with_a_fresh_read() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/netpol/cases");
        let mut reader = InputReader::default();
        for case in [
            "u22-ingress-from-updated-pod/1",
            "u22-ingress-from-updated-pod/2",
            "s15-bad-field-fails-closed/1",
        ] {
            let snapshot = manifests::load_snapshot(&root.join(case)).unwrap();
            let first = reader.read(&snapshot);
            assert!(
                Arc::ptr_eq(&first.policies, &reader.read(&snapshot).policies),
                "{case}: unchanged policies are shared"
            );
            for _ in 0..2 {
                let read = reader.read(&snapshot);
                let fresh = FirewallInput::from_snapshot(&snapshot);
                assert_eq!(read.cluster.pods, fresh.cluster.pods, "{case}");
                assert_eq!(read.policies, fresh.policies, "{case}");
                assert_eq!(read.errors, fresh.errors, "{case}");
            }
        }
    }
}
