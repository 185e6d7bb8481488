//! Evaluates one packet against a [`Table`] as the kernel would (the compiled rules,
//! not the policies they came from): base chains of a hook in priority order, rules
//! in order, set and map lookups (intervals and concatenations included), verdict
//! maps, jumps and gotos. It understands the statements kubewire's compilers write;
//! a rule with any other statement is an error, never a guess.

use std::net::IpAddr;

use ipnet::IpNet;

use super::model::{Chain, Set, Table};

/// What the tracer needs of a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    /// `tcp`, `udp`, `sctp`, `icmp`, `icmpv6`.
    pub protocol: String,
    pub dport: u16,
    /// `new`, `established`, `related`, `invalid`.
    pub ct_state: String,
    /// For ICMPv6: `nd-neighbor-solicit`, ...
    pub icmpv6_type: Option<String>,
}

impl Packet {
    /// A new connection's first packet.
    pub fn new(saddr: IpAddr, daddr: IpAddr, protocol: &str, dport: u16) -> Self {
        Self {
            saddr,
            daddr,
            protocol: protocol.to_ascii_lowercase(),
            dport,
            ct_state: "new".into(),
            icmpv6_type: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
}

/// The verdict and the rules that decided it (`chain: rule`), in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    pub verdict: Verdict,
    pub path: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TraceError {
    #[error("chain {chain}: rule `{rule}`: {message}")]
    Rule {
        chain: String,
        rule: String,
        message: String,
    },
    #[error("no chain {0}")]
    NoChain(String),
    #[error("jumps nest deeper than 16 (a loop?) at chain {0}")]
    TooDeep(String),
}

/// The packet through every base chain of `hook` (e.g. `forward`), lowest priority
/// first: a drop ends it, an accept passes it to the next base chain.
pub fn trace(table: &Table, hook: &str, packet: &Packet) -> Result<Trace, TraceError> {
    let mut bases: Vec<(&String, &Chain)> = table
        .chains
        .iter()
        .filter(|(_, c)| c.hook.as_ref().is_some_and(|h| h.hook == hook))
        .map(|(n, c)| (n, c.as_ref()))
        .collect();
    bases.sort_by_key(|(name, chain)| (chain.hook.as_ref().map(|h| h.priority), *name));
    let mut path = Vec::new();
    for (name, chain) in bases {
        let verdict = match run(table, name, packet, &mut path, 0)? {
            Some(Outcome::Accept) => Verdict::Accept,
            Some(Outcome::Drop) => Verdict::Drop,
            Some(Outcome::Return) | None => {
                let policy = chain.hook.as_ref().map_or("accept", |h| h.policy.as_str());
                if policy == "drop" {
                    Verdict::Drop
                } else {
                    Verdict::Accept
                }
            }
        };
        if verdict == Verdict::Drop {
            return Ok(Trace { verdict, path });
        }
    }
    Ok(Trace {
        verdict: Verdict::Accept,
        path,
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Accept,
    Drop,
    Return,
}

/// Runs a chain; `None` when the packet falls off its end.
fn run(
    table: &Table,
    name: &str,
    packet: &Packet,
    path: &mut Vec<String>,
    depth: usize,
) -> Result<Option<Outcome>, TraceError> {
    if depth > 16 {
        return Err(TraceError::TooDeep(name.to_string()));
    }
    let chain = table
        .chains
        .get(name)
        .ok_or_else(|| TraceError::NoChain(name.to_string()))?;
    for rule in &chain.rules {
        let error = |message: String| TraceError::Rule {
            chain: name.to_string(),
            rule: rule.text().to_string(),
            message,
        };
        let action = evaluate(table, rule.text(), packet).map_err(error)?;
        let Some(action) = action else { continue };
        path.push(format!("{name}: {}", rule.text()));
        match action {
            Action::Accept => return Ok(Some(Outcome::Accept)),
            Action::Drop => return Ok(Some(Outcome::Drop)),
            Action::Return => return Ok(Some(Outcome::Return)),
            Action::Continue => {}
            Action::Jump(target) => match run(table, &target, packet, path, depth + 1)? {
                Some(Outcome::Return) | None => {}
                other => return Ok(other),
            },
            Action::Goto(target) => return run(table, &target, packet, path, depth + 1),
        }
    }
    Ok(None)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    Accept,
    Drop,
    Return,
    /// Matched, no verdict (a counter, a log).
    Continue,
    Jump(String),
    Goto(String),
}

/// Words of a rule: quoted strings and `{ a, b }` groups are one word each.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        let close = match c {
            '"' => Some('"'),
            '{' => Some('}'),
            _ => None,
        };
        if let Some(close) = close {
            word.push(c);
            chars.next();
            for c in chars.by_ref() {
                word.push(c);
                if c == close {
                    break;
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        out.push(word);
    }
    out
}

/// A packet field named in a rule.
fn field(packet: &Packet, words: &[String], at: &mut usize) -> Result<Option<Value>, String> {
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    let value = match (word(*at), word(*at + 1)) {
        (family @ ("ip" | "ip6"), which @ ("saddr" | "daddr")) => {
            let addr = if which == "saddr" {
                packet.saddr
            } else {
                packet.daddr
            };
            *at += 2;
            // `ip ...` implies IPv4, `ip6 ...` IPv6: the other family does not match.
            if addr.is_ipv4() != (family == "ip") {
                return Ok(None);
            }
            Value::Addr(addr)
        }
        ("meta", "l4proto") => {
            *at += 2;
            Value::Text(packet.protocol.clone())
        }
        ("th", "dport") => {
            *at += 2;
            Value::Port(packet.dport)
        }
        (proto @ ("tcp" | "udp" | "sctp"), "dport") => {
            *at += 2;
            if packet.protocol != proto {
                return Ok(None);
            }
            Value::Port(packet.dport)
        }
        ("ct", "state") => {
            *at += 2;
            Value::Text(packet.ct_state.clone())
        }
        ("icmpv6", "type") => {
            *at += 2;
            match (&packet.icmpv6_type, packet.protocol.as_str()) {
                (Some(kind), "icmpv6") => Value::Text(kind.clone()),
                _ => return Ok(None),
            }
        }
        (other, next) => return Err(format!("unknown expression `{other} {next}`")),
    };
    Ok(Some(value))
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    Addr(IpAddr),
    Port(u16),
    Text(String),
}

impl Value {
    /// Whether this value is the element part `part` (an address, prefix, range,
    /// port, port range or word).
    fn matches(&self, part: &str) -> bool {
        match self {
            Value::Addr(addr) => {
                if let Ok(net) = part.parse::<IpNet>() {
                    return net.contains(addr);
                }
                if let Some((a, b)) = part.split_once('-')
                    && let (Ok(a), Ok(b)) = (a.parse::<IpAddr>(), b.parse::<IpAddr>())
                {
                    return a <= *addr && *addr <= b;
                }
                part.parse::<IpAddr>().is_ok_and(|p| p == *addr)
            }
            Value::Port(port) => match part.split_once('-') {
                Some((a, b)) => {
                    a.parse::<u16>().is_ok_and(|a| a <= *port)
                        && b.parse::<u16>().is_ok_and(|b| *port <= b)
                }
                None => part.parse::<u16>().is_ok_and(|p| p == *port),
            },
            Value::Text(text) => part.split(',').any(|p| p.trim() == text),
        }
    }
}

/// The element of `set` the values match, as (key, value).
fn lookup<'a>(set: &'a Set, values: &[Value]) -> Option<(&'a String, &'a String)> {
    set.elements.iter().find(|(key, _)| {
        let parts: Vec<&str> = key.split(" . ").collect();
        parts.len() == values.len() && values.iter().zip(&parts).all(|(v, p)| v.matches(p))
    })
}

fn verdict(text: &str) -> Result<Action, String> {
    match text.split_once(' ') {
        Some(("jump", target)) => Ok(Action::Jump(target.to_string())),
        Some(("goto", target)) => Ok(Action::Goto(target.to_string())),
        None if text == "accept" => Ok(Action::Accept),
        None if text == "drop" || text == "reject" => Ok(Action::Drop),
        None if text == "return" => Ok(Action::Return),
        None if text == "continue" => Ok(Action::Continue),
        _ => Err(format!("unknown verdict `{text}`")),
    }
}

/// The rule's action when it matches the packet; `None` when it does not.
fn evaluate(table: &Table, text: &str, packet: &Packet) -> Result<Option<Action>, String> {
    let words = words(text);
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    let set = |name: &str| -> Result<&Set, String> {
        table
            .sets
            .get(name)
            .map(|s| s.as_ref())
            .ok_or_else(|| format!("no set {name}"))
    };
    let mut at = 0;
    let mut action = Action::Continue;
    while at < words.len() {
        match word(at) {
            "accept" | "drop" | "reject" | "return" => {
                action = verdict(word(at))?;
                at += 1;
            }
            kind @ ("jump" | "goto") => {
                action = verdict(&format!("{kind} {}", word(at + 1)))?;
                at += 2;
            }
            "comment" => at += 2,
            "log" => {
                at += 1;
                while matches!(word(at), "prefix" | "group" | "level") {
                    at += 2;
                }
            }
            "counter" => {
                at += 1;
                if word(at) == "name" {
                    at += 1;
                    if word(at).starts_with('"') {
                        at += 1;
                    } else {
                        // `counter name <key> map @m`: a key the map lacks ends the
                        // rule, as a failed lookup does.
                        let key = field(packet, &words, &mut at)?;
                        if word(at) != "map" {
                            return Err(format!("unknown counter `{text}`"));
                        }
                        let name = word(at + 1).trim_start_matches('@').to_string();
                        at += 2;
                        match key {
                            Some(key)
                                if lookup(set(&name)?, std::slice::from_ref(&key)).is_some() => {}
                            _ => return Ok(None),
                        }
                    }
                }
            }
            _ => {
                // A match: field [. field ...] then `@set`, `!= @set`, `vmap @map`,
                // or a literal.
                let mut values = Vec::new();
                let mut family_mismatch = false;
                loop {
                    match field(packet, &words, &mut at)? {
                        Some(value) => values.push(value),
                        None => family_mismatch = true,
                    }
                    if word(at) == "." {
                        at += 1;
                    } else {
                        break;
                    }
                }
                let negate = word(at) == "!=";
                if negate {
                    at += 1;
                }
                let operand = word(at).to_string();
                at += 1;
                if family_mismatch {
                    return Ok(None);
                }
                if operand == "vmap" {
                    let name = word(at).trim_start_matches('@').to_string();
                    return match lookup(set(&name)?, &values) {
                        Some((_, value)) => verdict(value).map(Some),
                        None => Ok(None),
                    };
                }
                let found = if let Some(name) = operand.strip_prefix('@') {
                    lookup(set(name)?, &values).is_some()
                } else {
                    let literal = operand.trim_start_matches('{').trim_end_matches('}');
                    values.len() == 1 && values[0].matches(literal)
                };
                if found == negate {
                    return Ok(None);
                }
            }
        }
    }
    Ok(Some(action))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::{Chain, Elements, Hook, Set};
    use std::sync::Arc;

    fn table() -> Table {
        let mut t = Table::default();
        let set = |decl: &str, map: bool, elements: &[(&str, &str)]| {
            Arc::new(
                Set::new(map, decl, None).with_elements(
                    elements
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<Elements>(),
                ),
            )
        };
        t.sets.insert(
            "dispatch".into(),
            set(
                "type ipv4_addr : verdict",
                true,
                &[("10.0.0.2", "jump pol")],
            ),
        );
        t.sets.insert(
            "peers".into(),
            set(
                "type ipv4_addr; flags interval",
                false,
                &[("10.0.1.0/24", "")],
            ),
        );
        t.sets.insert(
            "named".into(),
            set(
                "type ipv4_addr . inet_proto . inet_service",
                false,
                &[("10.0.0.2 . tcp . 8080", "")],
            ),
        );
        t.chains.insert(
            "in".into(),
            Arc::new(Chain::new(
                Some(Hook::new("filter", "forward", 10)),
                [
                    "ct state established,related accept",
                    "ip daddr vmap @dispatch",
                ],
            )),
        );
        t.chains.insert(
            "pol".into(),
            Arc::new(Chain::new(
                None,
                [
                    "ip saddr @peers tcp dport 80-81 accept comment \"ingress[0]\"",
                    "meta l4proto tcp ip daddr . meta l4proto . th dport @named accept",
                    "counter name \"drops\" log prefix \"x: \" group 7 drop",
                ],
            )),
        );
        t
    }

    fn packet(src: &str, dst: &str, protocol: &str, port: u16) -> Packet {
        Packet::new(src.parse().unwrap(), dst.parse().unwrap(), protocol, port)
    }

    #[test]
    fn packets_follow_maps_sets_and_jumps() {
        let t = table();
        let verdict = |p: Packet| trace(&t, "forward", &p).unwrap().verdict;
        assert_eq!(
            verdict(packet("10.0.1.5", "10.0.0.2", "tcp", 81)),
            Verdict::Accept
        );
        assert_eq!(
            verdict(packet("10.0.2.5", "10.0.0.2", "tcp", 81)),
            Verdict::Drop
        );
        assert_eq!(
            verdict(packet("10.0.2.5", "10.0.0.2", "tcp", 8080)),
            Verdict::Accept
        );
        assert_eq!(
            verdict(packet("10.0.1.5", "10.0.0.2", "udp", 80)),
            Verdict::Drop
        );
        // Not in the dispatch map: the base chain's policy.
        assert_eq!(
            verdict(packet("10.0.2.5", "10.0.0.3", "udp", 80)),
            Verdict::Accept
        );
        // IPv6 does not match `ip` rules.
        assert_eq!(
            verdict(packet("fd00::1", "fd00::2", "tcp", 80)),
            Verdict::Accept
        );
        let mut established = packet("10.0.2.5", "10.0.0.2", "tcp", 81);
        established.ct_state = "established".into();
        assert_eq!(verdict(established), Verdict::Accept);
        let path = trace(&t, "forward", &packet("10.0.2.5", "10.0.0.2", "tcp", 81))
            .unwrap()
            .path;
        assert_eq!(path.len(), 2, "{path:?}");
        assert!(path[1].starts_with("pol: counter name"));
    }

    #[test]
    fn an_unknown_statement_is_an_error() {
        let mut t = table();
        t.chains.insert(
            "in".into(),
            Arc::new(Chain::new(
                Some(Hook::new("filter", "forward", 10)),
                ["fib daddr type local accept"],
            )),
        );
        let error = trace(&t, "forward", &packet("10.0.0.1", "10.0.0.2", "tcp", 1));
        assert!(matches!(error, Err(TraceError::Rule { .. })), "{error:?}");
    }
}
