//! The controllers one agent can run, each built from its own configuration.

use super::AgentArgs;
use crate::cache::{Kind, Snapshot};
use crate::cni::CniController;
use crate::firewall::FirewallController;
use crate::proxy::ProxyController;
use crate::routing::RoutingController;
use crate::runtime::{Controller, SyncReason, Synced};
use crate::telemetry::Metrics;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControllerKind {
    Routing,
    Firewall,
    Proxy,
    Cni,
}

impl ControllerKind {
    pub const ALL: [ControllerKind; 4] = [
        ControllerKind::Cni,
        ControllerKind::Routing,
        ControllerKind::Firewall,
        ControllerKind::Proxy,
    ];

    /// Service NAT first, the bridge and routes last.
    pub const CLEANUP_ORDER: [ControllerKind; 4] = [
        ControllerKind::Proxy,
        ControllerKind::Firewall,
        ControllerKind::Routing,
        ControllerKind::Cni,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ControllerKind::Routing => "routing",
            ControllerKind::Firewall => "firewall",
            ControllerKind::Proxy => "proxy",
            ControllerKind::Cni => "cni",
        }
    }

    pub fn enabled(self, args: &AgentArgs) -> bool {
        match self {
            ControllerKind::Routing => args.run_router,
            ControllerKind::Firewall => args.run_firewall,
            ControllerKind::Proxy => args.run_service_proxy,
            ControllerKind::Cni => args.run_cni,
        }
    }
}

/// One of the controllers, so that the agent can hold them in one list.
pub enum AnyController {
    Routing(RoutingController),
    Firewall(Box<FirewallController>),
    Proxy(ProxyController),
    Cni(CniController),
}

impl AnyController {
    /// Builds `kind` from the flags, each controller from its own configuration and
    /// the node's network.
    pub fn build(
        kind: ControllerKind,
        args: &AgentArgs,
        node: &str,
        metrics: &Metrics,
    ) -> anyhow::Result<AnyController> {
        let network = args.network.config();
        Ok(match kind {
            ControllerKind::Routing => AnyController::Routing(
                RoutingController::new(node.to_string(), args.routing.config(&network), metrics)?
                    .with_bgp(args.routing.bgp_config()?, metrics),
            ),
            ControllerKind::Firewall => AnyController::Firewall(Box::new(FirewallController::new(
                args.firewall.config(node),
                metrics,
            ))),
            ControllerKind::Proxy => AnyController::Proxy(ProxyController::new(
                node.to_string(),
                network.service_cidrs.clone(),
                &args.proxy,
                metrics,
            )?),
            ControllerKind::Cni => AnyController::Cni(CniController::new(
                node.to_string(),
                args.cni.config(&network),
                metrics,
            )),
        })
    }
}

impl Controller for AnyController {
    fn name(&self) -> &'static str {
        match self {
            AnyController::Routing(c) => c.name(),
            AnyController::Firewall(c) => c.name(),
            AnyController::Proxy(c) => c.name(),
            AnyController::Cni(c) => c.name(),
        }
    }

    fn kinds(&self) -> &'static [Kind] {
        match self {
            AnyController::Routing(c) => c.kinds(),
            AnyController::Firewall(c) => c.kinds(),
            AnyController::Proxy(c) => c.kinds(),
            AnyController::Cni(c) => c.kinds(),
        }
    }

    async fn sync(&mut self, snapshot: &Snapshot, reason: SyncReason) -> anyhow::Result<Synced> {
        match self {
            AnyController::Routing(c) => c.sync(snapshot, reason).await,
            AnyController::Firewall(c) => c.sync(snapshot, reason).await,
            AnyController::Proxy(c) => c.sync(snapshot, reason).await,
            AnyController::Cni(c) => c.sync(snapshot, reason).await,
        }
    }

    async fn cleanup(&mut self) -> anyhow::Result<()> {
        match self {
            AnyController::Routing(c) => c.cleanup().await,
            AnyController::Firewall(c) => c.cleanup().await,
            AnyController::Proxy(c) => c.cleanup().await,
            AnyController::Cni(c) => c.cleanup().await,
        }
    }
}
