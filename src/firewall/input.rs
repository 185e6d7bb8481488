//! Everything the firewall reads from one snapshot: the cluster view and the policies
//! that parsed, plus what did not (reported, never fatal).

use super::cluster::Cluster;
use super::policy::{self, Policy};
use crate::cache::Snapshot;

#[derive(Clone, Debug, Default)]
pub struct FirewallInput {
    pub cluster: Cluster,
    pub policies: Vec<Policy>,
    /// Human-readable problems: policies left out, object fields ignored.
    pub errors: Vec<String>,
}

impl FirewallInput {
    pub fn from_snapshot(snapshot: &Snapshot) -> Self {
        let cluster = Cluster::from_snapshot(snapshot);
        let (policies, policy_errors) =
            policy::parse_all(snapshot.network_policies.iter().map(|p| p.as_ref()));
        let mut errors: Vec<String> = cluster.errors.iter().map(|e| e.to_string()).collect();
        errors.extend(policy_errors.iter().map(|e| e.to_string()));
        Self {
            cluster,
            policies,
            errors,
        }
    }
}
