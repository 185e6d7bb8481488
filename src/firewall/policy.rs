//! NetworkPolicy v1 read into a validated form with every default applied: a policy
//! that parses has a meaning, and that meaning is exactly the API's. A field that does
//! not parse is reported (naming the policy and the field) and fails closed: a bad
//! peer or port matches nothing while the policy still isolates the pods it selects,
//! a bad podSelector selects the whole namespace, an unknown policy type isolates both
//! directions. Leaving the policy out instead would open its pods to everyone.
//!
//! Defaults applied here: `policyTypes` absent means Ingress, plus Egress when the
//! policy has at least one egress rule; `podSelector` absent means every pod of the
//! namespace; a rule without `from`/`to` admits every peer, without `ports` every
//! port; a port's protocol defaults to TCP.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::cluster::Protocol;
use super::selector::Selector;

/// Traffic direction as seen by the policed pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// The peer list's field name in a rule of this direction.
    pub fn peers_field(self) -> &'static str {
        match self {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One validated NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    /// `None`: the policy does not isolate selected pods for ingress. `Some(rules)`:
    /// it does, and the rules (possibly none) say what is admitted.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// One entry of `spec.ingress` or `spec.egress`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `None`: every peer.
    pub peers: Option<Vec<Peer>>,
    /// `None`: every port of every protocol.
    pub ports: Option<Vec<PortMatch>>,
}

/// One entry of `from`/`to`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Pods selected by `pods` in the namespaces of `namespaces`.
    Pods {
        namespaces: NamespaceScope,
        pods: Selector,
    },
    IpBlock(IpBlockMatch),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NamespaceScope {
    /// The policy's own namespace (a peer with a podSelector only).
    Policy(String),
    Matching(Selector),
}

/// `ipBlock`: `cidr` minus every `except`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlockMatch {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl IpBlockMatch {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

/// One entry of `ports`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortMatch {
    pub protocol: Protocol,
    pub port: PortSpec,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortSpec {
    /// No `port`: every port of the protocol.
    Any,
    /// `port`, or `port`..=`endPort`.
    Range(u16, u16),
    /// A container port name, resolved on the destination pod.
    Named(String),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Pods {
                namespaces: NamespaceScope::Policy(ns),
                pods,
            } => write!(f, "pods {pods} in namespace {ns}"),
            Peer::Pods {
                namespaces: NamespaceScope::Matching(namespaces),
                pods,
            } => write!(f, "pods {pods} in namespaces {namespaces}"),
            Peer::IpBlock(block) => write!(f, "{block}"),
        }
    }
}

impl fmt::Display for IpBlockMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ipBlock {}", self.cidr)?;
        if !self.except.is_empty() {
            let except: Vec<String> = self.except.iter().map(|e| e.to_string()).collect();
            write!(f, " except {}", except.join(", "))?;
        }
        Ok(())
    }
}

impl fmt::Display for PortMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortSpec::Any => write!(f, "any {} port", self.protocol),
            PortSpec::Range(a, b) if a == b => write!(f, "{a}/{}", self.protocol),
            PortSpec::Range(a, b) => write!(f, "{a}-{b}/{}", self.protocol),
            PortSpec::Named(name) => write!(f, "port named {name}/{}", self.protocol),
        }
    }
}

/// A field of a policy that did not parse, and how the policy fails closed around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// `namespace/name`.
    pub policy: String,
    pub field: String,
    pub message: String,
    /// What the policy does instead: always at least as strict as any valid reading.
    pub outcome: String,
    /// The metric label: `invalid_peer`, `invalid_port`, `invalid_pod_selector`,
    /// `invalid_policy_type`.
    pub reason: &'static str,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NetworkPolicy {}: {}: {}; {}",
            self.policy, self.field, self.message, self.outcome
        )
    }
}

impl std::error::Error for PolicyError {}

/// What a peer or port that does not parse becomes: nothing, while the policy still
/// isolates the pods it selects (leaving the policy out would open them to everyone).
const MATCHES_NOTHING: &str = "it matches nothing (the policy still isolates the pods it selects)";

/// Reads every policy; the fields that did not parse come back as errors.
pub fn parse_all<'a>(
    policies: impl IntoIterator<Item = &'a NetworkPolicy>,
) -> (Vec<Policy>, Vec<PolicyError>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for policy in policies {
        let (policy, errors) = parse(policy);
        good.push(policy);
        bad.extend(errors);
    }
    (good, bad)
}

/// Reads one policy. A field that does not parse never widens what the policy admits:
/// a bad peer or port matches nothing, a bad `podSelector` selects every pod of the
/// namespace and an unknown policy type isolates both directions. Each is reported.
pub fn parse(policy: &NetworkPolicy) -> (Policy, Vec<PolicyError>) {
    let namespace = policy.namespace().unwrap_or_else(|| "default".into());
    let name = policy.name_any();
    let mut errors = Vec::new();
    let mut error = |reason: &'static str, field: String, message: String, outcome: String| {
        errors.push(PolicyError {
            policy: format!("{namespace}/{name}"),
            field,
            message,
            outcome,
            reason,
        })
    };
    let spec = policy.spec.clone().unwrap_or_default();
    let pod_selector = match &spec.pod_selector {
        Some(selector) => Selector::parse(selector).unwrap_or_else(|e| {
            error(
                "invalid_pod_selector",
                format!("spec.podSelector.{}", e.field),
                e.message,
                format!("the policy selects every pod of namespace {namespace} (fails closed)"),
            );
            Selector::everything()
        }),
        None => Selector::everything(),
    };
    let ingress_rules = spec.ingress.unwrap_or_default();
    let egress_rules = spec.egress.unwrap_or_default();
    let (mut isolates_ingress, mut isolates_egress) = (true, !egress_rules.is_empty());
    if let Some(types) = &spec.policy_types {
        isolates_ingress = false;
        isolates_egress = false;
        for (i, policy_type) in types.iter().enumerate() {
            match policy_type.as_str() {
                "Ingress" => isolates_ingress = true,
                "Egress" => isolates_egress = true,
                other => {
                    error(
                        "invalid_policy_type",
                        format!("spec.policyTypes[{i}]"),
                        format!("unknown policy type `{other}` (Ingress, Egress)"),
                        "the policy isolates both directions (fails closed)".into(),
                    );
                    isolates_ingress = true;
                    isolates_egress = true;
                }
            }
        }
    }
    let mut field_errors = Vec::new();
    let ingress: Vec<Rule> = ingress_rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let field = format!("spec.ingress[{i}]");
            let (peers, ports) = (rule.from.as_deref(), rule.ports.as_deref());
            parse_rule(&namespace, peers, ports, &field, "from", &mut field_errors)
        })
        .collect();
    let egress: Vec<Rule> = egress_rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let field = format!("spec.egress[{i}]");
            let (peers, ports) = (rule.to.as_deref(), rule.ports.as_deref());
            parse_rule(&namespace, peers, ports, &field, "to", &mut field_errors)
        })
        .collect();
    for (reason, (field, message)) in field_errors {
        error(reason, field, message, MATCHES_NOTHING.into());
    }
    let policy = Policy {
        namespace: namespace.clone(),
        name: name.clone(),
        pod_selector,
        ingress: isolates_ingress.then_some(ingress),
        egress: isolates_egress.then_some(egress),
    };
    (policy, errors)
}

type FieldError = (String, String);

/// One rule; a peer or port that does not parse is left out of its list (and
/// reported in `errors`), so a list of only bad entries admits nothing.
fn parse_rule(
    namespace: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    field: &str,
    peers_field: &str,
    errors: &mut Vec<(&'static str, FieldError)>,
) -> Rule {
    // An empty list means the same as an absent one: no restriction.
    let peers = match peers {
        None | Some([]) => None,
        Some(peers) => Some(
            peers
                .iter()
                .enumerate()
                .filter_map(|(j, peer)| {
                    parse_peer(namespace, peer, &format!("{field}.{peers_field}[{j}]"))
                        .map_err(|e| errors.push(("invalid_peer", e)))
                        .ok()
                })
                .collect(),
        ),
    };
    let ports = match ports {
        None | Some([]) => None,
        Some(ports) => Some(
            ports
                .iter()
                .enumerate()
                .filter_map(|(k, port)| {
                    parse_port(port, &format!("{field}.ports[{k}]"))
                        .map_err(|e| errors.push(("invalid_port", e)))
                        .ok()
                })
                .collect(),
        ),
    };
    Rule { peers, ports }
}

fn parse_peer(namespace: &str, peer: &NetworkPolicyPeer, field: &str) -> Result<Peer, FieldError> {
    let selector = |selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
                    name: &str| {
        Selector::parse(selector).map_err(|e| (format!("{field}.{name}.{}", e.field), e.message))
    };
    match (&peer.pod_selector, &peer.namespace_selector, &peer.ip_block) {
        (None, None, None) => Err((
            field.to_string(),
            "must specify podSelector, namespaceSelector or ipBlock".into(),
        )),
        (_, _, Some(_)) if peer.pod_selector.is_some() || peer.namespace_selector.is_some() => {
            Err((
                format!("{field}.ipBlock"),
                "may not be combined with podSelector or namespaceSelector".into(),
            ))
        }
        (_, _, Some(block)) => {
            parse_ip_block(block, &format!("{field}.ipBlock")).map(Peer::IpBlock)
        }
        (pods, None, None) => Ok(Peer::Pods {
            namespaces: NamespaceScope::Policy(namespace.to_string()),
            pods: match pods {
                Some(pods) => selector(pods, "podSelector")?,
                None => Selector::everything(),
            },
        }),
        (pods, Some(namespaces), None) => Ok(Peer::Pods {
            namespaces: NamespaceScope::Matching(selector(namespaces, "namespaceSelector")?),
            pods: match pods {
                Some(pods) => selector(pods, "podSelector")?,
                None => Selector::everything(),
            },
        }),
    }
}

fn parse_ip_block(block: &IPBlock, field: &str) -> Result<IpBlockMatch, FieldError> {
    let parse = |text: &str, field: String| -> Result<IpNet, FieldError> {
        text.parse::<IpNet>().map(|net| net.trunc()).map_err(|_| {
            (
                field,
                format!("`{text}` is not a CIDR (like 10.0.0.0/8 or fd00::/64)"),
            )
        })
    };
    let cidr = parse(&block.cidr, format!("{field}.cidr"))?;
    let mut except = Vec::new();
    for (i, text) in block.except.iter().flatten().enumerate() {
        let except_field = format!("{field}.except[{i}]");
        let net = parse(text, except_field.clone())?;
        if net.addr().is_ipv4() != cidr.addr().is_ipv4() {
            return Err((
                except_field,
                format!("`{text}` is not of the family of cidr {cidr}"),
            ));
        }
        if !cidr.contains(&net) || net.prefix_len() <= cidr.prefix_len() {
            return Err((
                except_field,
                format!("`{text}` must be strictly within cidr {cidr}"),
            ));
        }
        except.push(net);
    }
    except.sort();
    except.dedup();
    Ok(IpBlockMatch { cidr, except })
}

fn parse_port(port: &NetworkPolicyPort, field: &str) -> Result<PortMatch, FieldError> {
    let protocol_text = port.protocol.as_deref().unwrap_or("TCP");
    let protocol = Protocol::parse(protocol_text).ok_or_else(|| {
        (
            format!("{field}.protocol"),
            format!("unknown protocol `{protocol_text}` (TCP, UDP, SCTP)"),
        )
    })?;
    let number = |value: i32, name: &str| {
        u16::try_from(value).ok().filter(|n| *n > 0).ok_or_else(|| {
            (
                format!("{field}.{name}"),
                format!("{value} is not a port number (1-65535)"),
            )
        })
    };
    let spec = match (&port.port, port.end_port) {
        (None, None) => PortSpec::Any,
        (None, Some(_)) => {
            return Err((
                format!("{field}.endPort"),
                "may not be set without port".into(),
            ));
        }
        (Some(IntOrString::Int(start)), end) => {
            let start = number(*start, "port")?;
            let end = match end {
                Some(end) => number(end, "endPort")?,
                None => start,
            };
            if end < start {
                return Err((
                    format!("{field}.endPort"),
                    format!("{end} is less than port {start}"),
                ));
            }
            PortSpec::Range(start, end)
        }
        (Some(IntOrString::String(name)), None) => match name.parse::<i32>() {
            // The API stores `port: "80"` as a string; kubectl and clients treat it as a number.
            Ok(value) => {
                let value = number(value, "port")?;
                PortSpec::Range(value, value)
            }
            Err(_) if name.is_empty() => {
                return Err((format!("{field}.port"), "must not be empty".into()));
            }
            Err(_) => PortSpec::Named(name.clone()),
        },
        (Some(IntOrString::String(_)), Some(_)) => {
            return Err((
                format!("{field}.endPort"),
                "may not be used with a named port".into(),
            ));
        }
    };
    Ok(PortMatch {
        protocol,
        port: spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(spec: serde_json::Value) -> Result<Policy, PolicyError> {
        let (policy, mut errors) = parse_with_errors(spec);
        match errors.is_empty() {
            true => Ok(policy),
            false => Err(errors.remove(0)),
        }
    }

    fn parse_with_errors(spec: serde_json::Value) -> (Policy, Vec<PolicyError>) {
        parse(
            &serde_json::from_value(json!({
                "metadata": {"name": "p", "namespace": "x"},
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn policy_types_default_like_the_api() {
        // (spec, isolates ingress, isolates egress)
        let cases = [
            (json!({"podSelector": {}}), true, false),
            (json!({"podSelector": {}, "egress": []}), true, false),
            (json!({"podSelector": {}, "egress": [{}]}), true, true),
            (
                json!({"podSelector": {}, "policyTypes": ["Egress"]}),
                false,
                true,
            ),
            (
                json!({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}),
                false,
                true,
            ),
            (json!({"policyTypes": ["Ingress", "Egress"]}), true, true),
        ];
        for (spec, ingress, egress) in cases {
            let parsed = policy(spec.clone()).unwrap();
            assert_eq!(parsed.ingress.is_some(), ingress, "{spec}");
            assert_eq!(parsed.egress.is_some(), egress, "{spec}");
        }
    }

    #[test]
    fn peers_and_ports() {
        let parsed = policy(json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{
                "from": [
                    {"podSelector": {"matchLabels": {"pod": "b"}}},
                    {"namespaceSelector": {}},
                    {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {}},
                    {"ipBlock": {"cidr": "10.0.0.1/8", "except": ["10.1.0.0/16"]}},
                ],
                "ports": [
                    {"port": 80},
                    {"protocol": "UDP", "port": 1000, "endPort": 2000},
                    {"port": "http"},
                    {"port": "81"},
                    {"protocol": "SCTP"},
                ],
            }, {}],
        }))
        .unwrap();
        let rules = parsed.ingress.unwrap();
        let peers = rules[0].peers.as_ref().unwrap();
        assert_eq!(peers[0].to_string(), "pods pod=b in namespace x");
        assert_eq!(peers[1].to_string(), "pods {} in namespaces {}");
        assert_eq!(peers[2].to_string(), "pods {} in namespaces ns=y");
        assert_eq!(
            peers[3].to_string(),
            "ipBlock 10.0.0.0/8 except 10.1.0.0/16"
        );
        let ports: Vec<String> = rules[0]
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            ports,
            [
                "80/TCP",
                "1000-2000/UDP",
                "port named http/TCP",
                "81/TCP",
                "any SCTP port"
            ]
        );
        assert_eq!(
            rules[1],
            Rule {
                peers: None,
                ports: None
            }
        );
        assert!(parsed.egress.is_none());
    }

    #[test]
    fn errors_name_policy_and_field() {
        let cases = [
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
                "spec.ingress[0].from[0].ipBlock.cidr",
            ),
            (
                json!({"egress": [{}, {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]}),
                "spec.egress[1].to[0].ipBlock.except[0]",
            ),
            (
                json!({"ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}]}]}),
                "spec.ingress[0].from[0].podSelector.matchExpressions[0].operator",
            ),
            (
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
                "spec.podSelector.matchExpressions[0].values",
            ),
            (
                json!({"ingress": [{"ports": [{"protocol": "ICMP"}]}]}),
                "spec.ingress[0].ports[0].protocol",
            ),
            (
                json!({"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                json!({"ingress": [{"ports": [{"port": "http", "endPort": 80}]}]}),
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                json!({"ingress": [{"ports": [{"port": 70000}]}]}),
                "spec.ingress[0].ports[0].port",
            ),
            (
                json!({"ingress": [{"from": [{}]}]}),
                "spec.ingress[0].from[0]",
            ),
            (json!({"policyTypes": ["Sideways"]}), "spec.policyTypes[0]"),
        ];
        for (spec, field) in cases {
            let err = policy(spec.clone()).unwrap_err();
            assert_eq!(err.policy, "x/p");
            assert_eq!(err.field, field, "{spec}: {err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("NetworkPolicy x/p: {field}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn a_field_that_does_not_parse_fails_closed() {
        // A bad peer matches nothing; the good peer beside it still does, and the
        // policy still isolates ingress.
        let (parsed, errors) = parse_with_errors(json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [
                {"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}, {"podSelector": {}}]},
                {"from": [{"ipBlock": {"cidr": "nonsense"}}]},
                {"ports": [{"port": 70000}]},
            ],
        }));
        let rules = parsed.ingress.expect("still isolates ingress");
        assert_eq!(rules[0].peers.as_ref().map(Vec::len), Some(1));
        assert_eq!(
            rules[1].peers,
            Some(vec![]),
            "a rule of bad peers admits nothing"
        );
        assert_eq!(
            (rules[2].peers.clone(), rules[2].ports.clone()),
            (None, Some(vec![]))
        );
        let fields: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.field.as_str(), e.reason))
            .collect();
        assert_eq!(
            fields,
            [
                ("spec.ingress[0].from[0].ipBlock.cidr", "invalid_peer"),
                ("spec.ingress[1].from[0].ipBlock.cidr", "invalid_peer"),
                ("spec.ingress[2].ports[0].port", "invalid_port"),
            ]
        );
        assert!(
            errors[0].to_string().contains("matches nothing"),
            "{}",
            errors[0]
        );
        // A bad podSelector selects the whole namespace; a bad type isolates both ways.
        let (parsed, errors) = parse_with_errors(json!({
            "podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]},
            "policyTypes": ["Egres"],
        }));
        assert_eq!(parsed.pod_selector, Selector::everything());
        assert_eq!(
            (parsed.ingress, parsed.egress),
            (Some(vec![]), Some(vec![]))
        );
        let reasons: Vec<&str> = errors.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, ["invalid_pod_selector", "invalid_policy_type"]);
    }

    #[test]
    fn ip_block_except() {
        let block = IpBlockMatch {
            cidr: "10.0.0.0/8".parse().unwrap(),
            except: vec!["10.1.0.0/16".parse().unwrap()],
        };
        assert!(block.contains("10.2.0.1".parse().unwrap()));
        assert!(!block.contains("10.1.0.1".parse().unwrap()));
        assert!(!block.contains("11.0.0.1".parse().unwrap()));
        assert!(!block.contains("fd00::1".parse().unwrap()));
    }
}
