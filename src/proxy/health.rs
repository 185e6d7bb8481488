//! The proxy's health endpoints, as kube-proxy serves them:
//!
//! - one HTTP server per `healthCheckNodePort` (externalTrafficPolicy Local Services),
//!   on every address: 200 when this node has a ready (or serving) local endpoint of
//!   the Service, else 503, with the JSON body
//!   `{"service":{"namespace":…,"name":…},"localEndpoints":N,"serviceProxyHealthy":…}`
//!   — how a cloud load balancer learns which nodes to send to;
//! - the node's proxy health endpoint (`--healthz-bind-address`, `/healthz` and
//!   `/livez`): 200 once a sync succeeded and as long as the latest one did, else
//!   503, with `{"lastUpdated":…,"currentTime":…,"nodeEligible":true}`.
//!
//! A port that cannot be bound is logged (once per distinct error) and tried again on
//! the next sync. Only the Services that changed are read again ([`Claims`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use tokio::task::JoinHandle;

use super::model::ServiceMap;
use super::services::Changed;

/// What one healthCheckNodePort reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceHealth {
    /// `namespace/name`.
    pub service: String,
    /// Distinct local endpoint addresses.
    pub local_endpoints: usize,
}

/// Every healthCheckNodePort of `map` with what it reports; a port claimed by two
/// Services goes to the first (sorted) and the other is reported.
pub fn desired(map: &ServiceMap) -> (BTreeMap<u16, ServiceHealth>, Vec<String>) {
    let mut claims = Claims::default();
    claims.update(map, &Changed::All);
    let wanted = claims
        .by_port
        .keys()
        .filter_map(|port| Some((*port, claims.wanted(*port)?)))
        .collect();
    (wanted, claims.problems())
}

/// The healthCheckNodePorts Services claim, kept between syncs so a sync reads only
/// the changed Services.
#[derive(Debug, Default)]
pub struct Claims {
    /// Port → the Services claiming it, with their distinct local endpoint addresses.
    by_port: BTreeMap<u16, BTreeMap<String, usize>>,
    /// Service → the ports it claims.
    by_service: HashMap<String, Vec<u16>>,
    /// Ports claimed by more than one Service.
    conflicts: BTreeSet<u16>,
}

impl Claims {
    /// Reads the `changed` Services of `map` again; returns the ports whose answer
    /// may have changed.
    pub fn update(&mut self, map: &ServiceMap, changed: &Changed) -> BTreeSet<u16> {
        let mut touched = BTreeSet::new();
        let keys: Vec<String> = match changed.services() {
            Some(names) => names.iter().cloned().collect(),
            None => {
                touched.extend(self.by_port.keys().copied());
                self.by_port.clear();
                self.by_service.clear();
                self.conflicts.clear();
                let mut all: Vec<String> = map.ports.iter().map(|p| p.service.clone()).collect();
                all.dedup();
                all
            }
        };
        for key in keys {
            for port in self.by_service.remove(&key).unwrap_or_default() {
                if let Some(claimants) = self.by_port.get_mut(&port) {
                    claimants.remove(&key);
                    self.recheck(port);
                }
                touched.insert(port);
            }
            let mut local: BTreeMap<u16, BTreeSet<IpAddr>> = BTreeMap::new();
            for port in map.ports_of(&key) {
                if let Some(number) = port.health_check_node_port {
                    local
                        .entry(number)
                        .or_default()
                        .extend(port.local_endpoints.iter().map(SocketAddr::ip));
                }
            }
            if local.is_empty() {
                continue;
            }
            self.by_service
                .insert(key.clone(), local.keys().copied().collect());
            for (number, ips) in local {
                self.by_port
                    .entry(number)
                    .or_default()
                    .insert(key.clone(), ips.len());
                self.recheck(number);
                touched.insert(number);
            }
        }
        touched
    }

    fn recheck(&mut self, port: u16) {
        let claimants = self.by_port.get(&port).map_or(0, BTreeMap::len);
        if claimants == 0 {
            self.by_port.remove(&port);
        }
        if claimants > 1 {
            self.conflicts.insert(port);
        } else {
            self.conflicts.remove(&port);
        }
    }

    /// What `port` reports: its first (sorted) claimant's.
    pub fn wanted(&self, port: u16) -> Option<ServiceHealth> {
        let (service, local_endpoints) = self.by_port.get(&port)?.iter().next()?;
        Some(ServiceHealth {
            service: service.clone(),
            local_endpoints: *local_endpoints,
        })
    }

    /// One message per Service whose port another one holds.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for port in &self.conflicts {
            let Some(claimants) = self.by_port.get(port) else {
                continue;
            };
            let mut names = claimants.keys();
            let Some(owner) = names.next() else {
                continue;
            };
            for service in names {
                out.push(format!(
                    "Service {service}: spec.healthCheckNodePort {port} is already used by {owner}; ignored"
                ));
            }
        }
        out
    }
}

/// The state both kinds of server read.
#[derive(Debug, Default)]
struct State {
    /// The last successful sync.
    last_updated: Option<SystemTime>,
    /// Whether the latest sync succeeded.
    healthy: bool,
    services: BTreeMap<u16, ServiceHealth>,
}

/// The running servers.
#[derive(Default)]
pub struct HealthServers {
    state: Arc<Mutex<State>>,
    proxy: Option<JoinHandle<()>>,
    proxy_error: crate::runtime::ErrorOnce,
    services: BTreeMap<u16, JoinHandle<()>>,
    /// Wanted ports that could not be bound: tried again on the next sync.
    unbound: BTreeSet<u16>,
    service_errors: BTreeMap<u16, crate::runtime::ErrorOnce>,
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        self.proxy.iter().for_each(JoinHandle::abort);
        self.services.values().for_each(JoinHandle::abort);
    }
}

impl HealthServers {
    /// Starts the node's proxy health endpoint once (`None` = not wanted); a bind
    /// that fails is logged (once per distinct error) and tried again on the next
    /// call.
    pub fn start_proxy_healthz(&mut self, bind: Option<SocketAddr>) {
        let (Some(bind), None) = (bind, &self.proxy) else {
            return;
        };
        let listener = match bind_dual(bind) {
            Ok(listener) => listener,
            Err(err) => {
                self.proxy_error
                    .report(&format!("proxy health: cannot listen on {bind}: {err}"));
                return;
            }
        };
        self.proxy_error.clear();
        let state = self.state.clone();
        let handler = move || {
            let state = state.clone();
            async move { proxy_health(&state) }
        };
        let router = Router::new()
            .route("/healthz", get(handler.clone()))
            .route("/livez", get(handler));
        self.proxy = Some(tokio::spawn(serve(listener, router, bind, "proxy health")));
    }

    /// Records a sync's outcome.
    pub fn synced(&mut self, ok: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.healthy = ok;
        if ok {
            state.last_updated = Some(SystemTime::now());
        }
    }

    /// Serves exactly the healthCheckNodePorts `claims` want, looking at the
    /// `touched` ports (and those not bound yet) only.
    pub fn update_services(&mut self, claims: &Claims, touched: &BTreeSet<u16>) {
        let mut ports = touched.clone();
        ports.extend(self.unbound.iter().copied());
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for port in ports {
            let Some(wanted) = claims.wanted(port) else {
                if let Some(task) = self.services.remove(&port) {
                    task.abort();
                }
                self.unbound.remove(&port);
                self.service_errors.remove(&port);
                state.services.remove(&port);
                continue;
            };
            state.services.insert(port, wanted);
            if self.services.get(&port).is_some_and(|t| !t.is_finished()) {
                continue;
            }
            let bind = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
            let listener = match bind_dual(bind) {
                Ok(listener) => listener,
                Err(err) => {
                    self.unbound.insert(port);
                    self.service_errors
                        .entry(port)
                        .or_default()
                        .report(&format!(
                            "healthCheckNodePort: cannot listen on {bind}: {err}"
                        ));
                    continue;
                }
            };
            self.unbound.remove(&port);
            self.service_errors.remove(&port);
            let shared = self.state.clone();
            let router = Router::new().fallback(move || {
                let state = shared.clone();
                async move { service_health(&state, port) }
            });
            self.services.insert(
                port,
                tokio::spawn(serve(listener, router, bind, "healthCheckNodePort")),
            );
        }
    }
}

/// Serves until aborted.
async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    bind: SocketAddr,
    what: &'static str,
) {
    if let Err(err) = axum::serve(listener, router).await {
        tracing::warn!(%bind, "{what}: {err}");
    }
}

/// Binds `bind`; `[::]` also takes IPv4 (dual stack), and falls back to `0.0.0.0`
/// on a node without IPv6.
fn bind_dual(bind: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let open = |addr: SocketAddr| -> std::io::Result<tokio::net::TcpListener> {
        let socket = if addr.is_ipv6() {
            tokio::net::TcpSocket::new_v6()?
        } else {
            tokio::net::TcpSocket::new_v4()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(128)
    };
    match open(bind) {
        Err(_) if bind.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) => {
            open(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), bind.port()))
        }
        other => other,
    }
}

fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    crate::proxy::time::format_rfc3339(secs)
}

fn proxy_health(state: &Mutex<State>) -> axum::response::Response {
    let state = state.lock().unwrap_or_else(|e| e.into_inner());
    let healthy = state.healthy && state.last_updated.is_some();
    let body = json!({
        "lastUpdated": state.last_updated.map(rfc3339).unwrap_or_default(),
        "currentTime": rfc3339(SystemTime::now()),
        "nodeEligible": true,
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, body)
}

fn service_health(state: &Mutex<State>, port: u16) -> axum::response::Response {
    let state = state.lock().unwrap_or_else(|e| e.into_inner());
    let Some(service) = state.services.get(&port) else {
        return json_response(StatusCode::SERVICE_UNAVAILABLE, json!({}));
    };
    let (namespace, name) = service
        .service
        .split_once('/')
        .unwrap_or(("", service.service.as_str()));
    let body = json!({
        "service": {"namespace": namespace, "name": name},
        "localEndpoints": service.local_endpoints,
        "serviceProxyHealthy": state.healthy,
    });
    let status = if service.local_endpoints > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, body)
}

fn json_response(status: StatusCode, body: serde_json::Value) -> axum::response::Response {
    (
        status,
        [
            ("content-type", "application/json"),
            ("x-content-type-options", "nosniff"),
        ],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_health_check_node_port_counting_local_endpoints() {
        let snapshot = crate::proxy::services::tests_support::snapshot(serde_json::json!([
            {"kind": "Node", "metadata": {"name": "n1"},
             "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}},
            {"kind": "Service", "metadata": {"name": "a", "namespace": "x"},
             "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "externalTrafficPolicy": "Local",
                      "healthCheckNodePort": 32000,
                      "ports": [{"name": "http", "port": 80, "nodePort": 30080}, {"name": "https", "port": 443, "nodePort": 30443}]}},
            {"kind": "EndpointSlice", "metadata": {"name": "a-1", "namespace": "x", "labels": {"kubernetes.io/service-name": "a"}},
             "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}, {"name": "https", "port": 8443}],
             "endpoints": [{"addresses": ["10.244.1.10"], "nodeName": "n1"}, {"addresses": ["10.244.1.11"], "nodeName": "n1"},
                           {"addresses": ["10.244.2.10"], "nodeName": "n2"}]},
            {"kind": "Service", "metadata": {"name": "b", "namespace": "x"},
             "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.11", "externalTrafficPolicy": "Local",
                      "healthCheckNodePort": 32001, "ports": [{"port": 80, "nodePort": 30081}]}},
            {"kind": "Service", "metadata": {"name": "c", "namespace": "x"},
             "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.12", "externalTrafficPolicy": "Cluster",
                      "healthCheckNodePort": 32002, "ports": [{"port": 80, "nodePort": 30082}]}},
            {"kind": "Service", "metadata": {"name": "d", "namespace": "x"},
             "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.13", "externalTrafficPolicy": "Local",
                      "healthCheckNodePort": 32001, "ports": [{"port": 80, "nodePort": 30083}]}},
        ]));
        let map =
            crate::proxy::services::build(&snapshot, "n1", &["10.96.0.0/16".parse().unwrap()]);
        let (wanted, problems) = desired(&map);
        let got: Vec<(u16, &str, usize)> = wanted
            .iter()
            .map(|(p, h)| (*p, h.service.as_str(), h.local_endpoints))
            .collect();
        assert_eq!(got, [(32000, "x/a", 2), (32001, "x/b", 0)]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .starts_with("Service x/d: spec.healthCheckNodePort 32001 is already used by x/b")
        );
    }

    #[test]
    fn claims_kept_per_service_answer_as_a_fresh_read() {
        let service = |name: &str, port: u16, local: &[&str]| {
            let endpoints: Vec<serde_json::Value> = local
                .iter()
                .map(|ip| serde_json::json!({"addresses": [ip], "nodeName": "n1"}))
                .collect();
            [
                serde_json::json!({"kind": "Service", "metadata": {"name": name, "namespace": "x"},
                 "spec": {"type": "LoadBalancer", "clusterIP": format!("10.96.0.{}", port % 200),
                          "externalTrafficPolicy": "Local", "healthCheckNodePort": port,
                          "ports": [{"port": 80, "nodePort": 30000 + port % 1000}]}}),
                serde_json::json!({"kind": "EndpointSlice", "metadata": {"name": format!("{name}-1"), "namespace": "x",
                    "labels": {"kubernetes.io/service-name": name}},
                 "addressType": "IPv4", "ports": [{"port": 8080}], "endpoints": endpoints}),
            ]
        };
        let map = |services: Vec<[serde_json::Value; 2]>| {
            let mut objects = vec![
                serde_json::json!({"kind": "Node", "metadata": {"name": "n1"},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}}),
            ];
            objects.extend(services.into_iter().flatten());
            let snapshot =
                crate::proxy::services::tests_support::snapshot(serde_json::Value::Array(objects));
            crate::proxy::services::build(&snapshot, "n1", &["10.96.0.0/16".parse().unwrap()])
        };
        let steps = [
            map(vec![
                service("a", 32000, &["10.244.1.1"]),
                service("b", 32001, &[]),
            ]),
            // b takes a's port: a conflict, a keeps it
            map(vec![
                service("a", 32000, &["10.244.1.1"]),
                service("b", 32000, &["10.244.1.2"]),
            ]),
            // a goes: b has the port alone
            map(vec![service("b", 32000, &["10.244.1.2", "10.244.1.3"])]),
        ];
        let mut claims = Claims::default();
        claims.update(&steps[0], &Changed::All);
        let all = |claims: &Claims| -> BTreeMap<u16, ServiceHealth> {
            [32000, 32001]
                .into_iter()
                .filter_map(|port| Some((port, claims.wanted(port)?)))
                .collect()
        };
        assert_eq!((all(&claims), claims.problems()), desired(&steps[0]));
        for (step, touched) in [(1, [32000, 32001]), (2, [32000, 32000])] {
            let changed = Changed::Services(["x/a".to_string(), "x/b".to_string()].into());
            let ports = claims.update(&steps[step], &changed);
            assert!(
                touched.iter().all(|p| ports.contains(p)),
                "{step}: {ports:?}"
            );
            assert_eq!(
                (all(&claims), claims.problems()),
                desired(&steps[step]),
                "{step}"
            );
        }
        assert_eq!(claims.problems(), Vec::<String>::new());
        assert_eq!(claims.wanted(32000).map(|h| h.local_endpoints), Some(2));
    }

    #[test]
    fn bodies_and_statuses_as_kube_proxy() {
        let state = Mutex::new(State::default());
        assert_eq!(
            proxy_health(&state).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        {
            let mut s = state.lock().unwrap();
            s.healthy = true;
            s.last_updated = Some(SystemTime::now());
            s.services.insert(
                32000,
                ServiceHealth {
                    service: "x/a".into(),
                    local_endpoints: 2,
                },
            );
            s.services.insert(
                32001,
                ServiceHealth {
                    service: "x/b".into(),
                    local_endpoints: 0,
                },
            );
        }
        assert_eq!(proxy_health(&state).status(), StatusCode::OK);
        assert_eq!(service_health(&state, 32000).status(), StatusCode::OK);
        assert_eq!(
            service_health(&state, 32001).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.lock().unwrap().healthy = false;
        assert_eq!(
            proxy_health(&state).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
