//! Evaluates one packet against a [`Table`] as the kernel would (the compiled rules,
//! not the policies they came from): base chains of a hook in priority order, rules
//! in order, set and map lookups (intervals and concatenations included), verdict
//! maps, jumps and gotos. [`trace`] runs one hook (the firewall's forward);
//! [`trace_flow`] follows a new connection's first packet through every hook it
//! crosses (prerouting or output, the routing decision, forward or input,
//! postrouting) with what the NAT tables do to it: DNAT (from maps, `numgen`
//! buckets included: each bucket is followed, so the answer is every endpoint the
//! packet may reach), marks, masquerade, conntrack's original destination, and the
//! dynamic sets a rule updates. It understands the statements kubewire's compilers
//! write, over the rule text of [`super::model`], whatever chains they are in; a rule
//! with any other statement is an error, never a guess.

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
    #[error("more than {0} numgen bucket combinations")]
    TooManyBuckets(usize),
}

/// The packet through every base chain of `hook` (e.g. `forward`), lowest priority
/// first: a drop (or reject) ends it, an accept passes it to the next base chain.
pub fn trace(table: &Table, hook: &str, packet: &Packet) -> Result<Trace, TraceError> {
    let mut state = State::new(packet.clone(), &[], Vec::new());
    let fate = run_hook(table, hook, &mut state)?;
    Ok(Trace {
        verdict: if fate == Fate::Accept {
            Verdict::Accept
        } else {
            Verdict::Drop
        },
        path: state.path,
    })
}

/// How a packet's trip ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Accepted by every hook it crossed (DNATed or not).
    Accept,
    Drop,
    /// Dropped with an ICMP error or TCP reset to the sender.
    Reject,
}

/// One way a new connection's first packet goes (one per numgen bucket chosen).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub fate: Fate,
    /// Where it goes after DNAT (the original destination without one).
    pub daddr: IpAddr,
    pub dport: u16,
    pub dnat: bool,
    /// A `masquerade` statement took it (source NAT to the outgoing address).
    pub masquerade: bool,
    /// The timeout of the dynamic set entry an `update` statement added (seconds),
    /// like sessionAffinity's record of a client.
    pub affinity_seconds: Option<u32>,
    /// `hook chain: rule` of every rule that matched, in order.
    pub path: Vec<String>,
}

/// The most numgen bucket combinations [`trace_flow`] follows.
const MAX_FLOWS: usize = 4096;

/// A new connection's first packet through the table: from one of `local` (the
/// node's own addresses: `fib ... type local`, and where routing delivers locally)
/// through output and postrouting; from elsewhere through prerouting, then input
/// when its (DNATed) destination is local, else forward and postrouting. Each numgen
/// bucket the packet meets is followed: one [`Flow`] per combination.
pub fn trace_flow(
    table: &Table,
    packet: &Packet,
    local: &[IpAddr],
) -> Result<Vec<Flow>, TraceError> {
    let mut flows = Vec::new();
    // Bucket choices to replay; each run extends its prefix with 0s, and every other
    // bucket of each numgen it met past the prefix is queued.
    let mut pending: Vec<Vec<u32>> = vec![Vec::new()];
    while let Some(prefix) = pending.pop() {
        if flows.len() >= MAX_FLOWS {
            return Err(TraceError::TooManyBuckets(MAX_FLOWS));
        }
        let mut state = State::new(packet.clone(), local, prefix.clone());
        state.hooks_in_path = true;
        let fate = flow_once(table, &mut state)?;
        for at in prefix.len()..state.buckets.len() {
            for other in 1..state.buckets[at].1 {
                let mut next: Vec<u32> = state.buckets[..at].iter().map(|b| b.0).collect();
                next.push(other);
                pending.push(next);
            }
        }
        flows.push(Flow {
            fate,
            daddr: state.packet.daddr,
            dport: state.packet.dport,
            dnat: state.original.is_some(),
            masquerade: state.masquerade,
            affinity_seconds: state.affinity,
            path: state.path,
        });
    }
    Ok(flows)
}

fn flow_once(table: &Table, state: &mut State) -> Result<Fate, TraceError> {
    let from_here = state.local.contains(&state.packet.saddr);
    let first = if from_here { "output" } else { "prerouting" };
    let fate = run_hook(table, first, state)?;
    if fate != Fate::Accept {
        return Ok(fate);
    }
    let delivered_here = state.local.contains(&state.packet.daddr);
    let hooks: &[&str] = match (from_here, delivered_here) {
        (false, true) => &["input"],
        (false, false) => &["forward", "postrouting"],
        (true, true) => &["postrouting", "input"],
        (true, false) => &["postrouting"],
    };
    for hook in hooks {
        let fate = run_hook(table, hook, state)?;
        if fate != Fate::Accept {
            return Ok(fate);
        }
    }
    Ok(Fate::Accept)
}

/// The packet as rules see and change it.
struct State<'a> {
    packet: Packet,
    /// The destination before DNAT (conntrack's original direction).
    original: Option<(IpAddr, u16)>,
    mark: u32,
    masquerade: bool,
    affinity: Option<u32>,
    local: &'a [IpAddr],
    /// (bucket, modulus) of each numgen met so far; the first ones replay `choices`.
    buckets: Vec<(u32, u32)>,
    choices: Vec<u32>,
    path: Vec<String>,
    /// The hook being run, and whether the path names it.
    hook: String,
    hooks_in_path: bool,
}

impl<'a> State<'a> {
    fn new(packet: Packet, local: &'a [IpAddr], choices: Vec<u32>) -> Self {
        Self {
            packet,
            original: None,
            mark: 0,
            masquerade: false,
            affinity: None,
            local,
            buckets: Vec::new(),
            choices,
            path: Vec::new(),
            hook: String::new(),
            hooks_in_path: false,
        }
    }

    /// Rewrites the destination, remembering the original one.
    fn dnat(&mut self, addr: IpAddr, port: u16) {
        self.original
            .get_or_insert((self.packet.daddr, self.packet.dport));
        self.packet.daddr = addr;
        self.packet.dport = port;
    }

    /// The bucket of the next `numgen ... mod modulus`.
    fn bucket(&mut self, modulus: u32) -> u32 {
        let chosen = self
            .choices
            .get(self.buckets.len())
            .copied()
            .unwrap_or(0)
            .min(modulus.saturating_sub(1));
        self.buckets.push((chosen, modulus));
        chosen
    }
}

/// Every base chain of `hook`, lowest priority first.
fn run_hook(table: &Table, hook: &str, state: &mut State) -> Result<Fate, TraceError> {
    let mut bases: Vec<(&String, &Chain)> = table
        .chains
        .iter()
        .filter(|(_, c)| c.hook.as_ref().is_some_and(|h| h.hook == hook))
        .map(|(n, c)| (n, c.as_ref()))
        .collect();
    bases.sort_by_key(|(name, chain)| (chain.hook.as_ref().map(|h| h.priority), *name));
    state.hook = hook.to_string();
    for (name, chain) in bases {
        let fate = match run(table, name, state, 0)? {
            Some(Outcome::Accept) => Fate::Accept,
            Some(Outcome::Drop) => Fate::Drop,
            Some(Outcome::Reject) => Fate::Reject,
            Some(Outcome::Return) | None => {
                let policy = chain.hook.as_ref().map_or("accept", |h| h.policy.as_str());
                if policy == "drop" {
                    Fate::Drop
                } else {
                    Fate::Accept
                }
            }
        };
        if fate != Fate::Accept {
            return Ok(fate);
        }
    }
    Ok(Fate::Accept)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Accept,
    Drop,
    Reject,
    Return,
}

/// Runs a chain; `None` when the packet falls off its end.
fn run(
    table: &Table,
    name: &str,
    state: &mut State,
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
        let action = evaluate(table, rule.text(), state).map_err(error)?;
        let Some(action) = action else { continue };
        let at = if state.hooks_in_path {
            format!("{} {name}", state.hook)
        } else {
            name.to_string()
        };
        state.path.push(format!("{at}: {}", rule.text()));
        match action {
            Action::Accept => return Ok(Some(Outcome::Accept)),
            Action::Drop => return Ok(Some(Outcome::Drop)),
            Action::Reject => return Ok(Some(Outcome::Reject)),
            Action::Return => return Ok(Some(Outcome::Return)),
            Action::Continue => {}
            Action::Jump(target) => match run(table, &target, state, depth + 1)? {
                Some(Outcome::Return) | None => {}
                other => return Ok(other),
            },
            Action::Goto(target) => return run(table, &target, state, depth + 1),
        }
    }
    Ok(None)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    Accept,
    Drop,
    Reject,
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

fn number(text: &str) -> Result<u32, String> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .map_err(|_| format!("`{text}` is not a number"))
}

/// A packet field named in a rule; `None` when the packet is of the other family
/// than the field (`ip ...` on IPv6).
fn field(state: &mut State, words: &[String], at: &mut usize) -> Result<Option<Value>, String> {
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    let family_of = |family: &str, addr: IpAddr| addr.is_ipv4() == (family == "ip");
    let packet = &state.packet;
    let value = match (word(*at), word(*at + 1)) {
        (family @ ("ip" | "ip6"), which @ ("saddr" | "daddr")) => {
            let addr = if which == "saddr" {
                packet.saddr
            } else {
                packet.daddr
            };
            *at += 2;
            // `ip ...` implies IPv4, `ip6 ...` IPv6: the other family does not match.
            if !family_of(family, addr) {
                return Ok(None);
            }
            Value::Addr(addr)
        }
        ("meta", "l4proto") => {
            *at += 2;
            Value::Text(packet.protocol.clone())
        }
        ("meta", "mark") => {
            *at += 2;
            Value::Number(state.mark)
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
        ("ct", "status") => {
            *at += 2;
            Value::Text(if state.original.is_some() { "dnat" } else { "" }.into())
        }
        ("ct", "original") => {
            let (addr, port) = state.original.unwrap_or((packet.daddr, packet.dport));
            match (word(*at + 2), word(*at + 3)) {
                ("proto-dst", _) => {
                    *at += 3;
                    Value::Port(port)
                }
                (family @ ("ip" | "ip6"), "daddr") => {
                    *at += 4;
                    if !family_of(family, addr) {
                        return Ok(None);
                    }
                    Value::Addr(addr)
                }
                (a, b) => return Err(format!("unknown expression `ct original {a} {b}`")),
            }
        }
        ("numgen", "random") if word(*at + 2) == "mod" => {
            let modulus = number(word(*at + 3))?;
            *at += 4;
            if modulus == 0 {
                return Err("numgen mod 0".into());
            }
            Value::Number(state.bucket(modulus))
        }
        ("fib", which @ ("saddr" | "daddr")) if word(*at + 2) == "type" => {
            *at += 3;
            let addr = if which == "saddr" {
                packet.saddr
            } else {
                packet.daddr
            };
            let local = state.local.contains(&addr);
            Value::Text(if local { "local" } else { "unicast" }.into())
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

/// Fields joined by ` . ` (`None`: one is of the other family).
fn fields(
    state: &mut State,
    words: &[String],
    at: &mut usize,
) -> Result<Option<Vec<Value>>, String> {
    let mut values = Vec::new();
    let mut mismatch = false;
    loop {
        match field(state, words, at)? {
            Some(value) => values.push(value),
            None => mismatch = true,
        }
        if words.get(*at).map(String::as_str) == Some(".") {
            *at += 1;
        } else {
            break;
        }
    }
    Ok((!mismatch).then_some(values))
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    Addr(IpAddr),
    Port(u16),
    Number(u32),
    Text(String),
}

impl Value {
    /// Whether this value is the element part `part` (an address, prefix, range,
    /// port, port range, number or word).
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
            Value::Number(n) => number(part.trim()).is_ok_and(|p| p == *n),
            Value::Text(text) => part.split(',').any(|p| p.trim() == text),
        }
    }
}

/// A DNAT target written in the rule: `10.0.0.1`, `10.0.0.1:80`, `[fd00::1]:80`
/// (without a port the packet's stays).
fn literal_destination(word: &str, dport: u16) -> Option<(IpAddr, u16)> {
    if let Ok(addr) = word.parse::<std::net::SocketAddr>() {
        return Some((addr.ip(), addr.port()));
    }
    word.parse::<IpAddr>().ok().map(|addr| (addr, dport))
}

/// Whether the values are the element key `key`.
fn key_matches(key: &str, values: &[Value]) -> bool {
    let parts: Vec<&str> = key.split(" . ").collect();
    parts.len() == values.len() && values.iter().zip(&parts).all(|(v, p)| v.matches(p))
}

/// The element of `set` the values match, as (key, value).
fn lookup<'a>(set: &'a Set, values: &[Value]) -> Option<(&'a String, &'a String)> {
    set.elements
        .iter()
        .find(|(key, _)| key_matches(key, values))
}

/// The value of the element the values match in `operand`: a named set or map
/// (`@name`) or one written in the rule (`{ 0 : goto a, 1 : goto b }`).
fn find(table: &Table, operand: &str, values: &[Value]) -> Result<Option<String>, String> {
    if let Some(name) = operand.strip_prefix('@') {
        let set = table
            .sets
            .get(name)
            .ok_or_else(|| format!("no set {name}"))?;
        return Ok(lookup(set, values).map(|(_, v)| v.clone()));
    }
    let Some(inner) = operand.strip_prefix('{').and_then(|o| o.strip_suffix('}')) else {
        return Err(format!("`{operand}` is neither a set nor a map"));
    };
    Ok(inner.split(',').find_map(|element| {
        let (key, value) = element.split_once(" : ").unwrap_or((element, ""));
        key_matches(key.trim(), values).then(|| value.trim().to_string())
    }))
}

fn verdict(text: &str) -> Result<Action, String> {
    match text.split_once(' ') {
        Some(("jump", target)) => Ok(Action::Jump(target.to_string())),
        Some(("goto", target)) => Ok(Action::Goto(target.to_string())),
        None if text == "accept" => Ok(Action::Accept),
        None if text == "drop" => Ok(Action::Drop),
        None if text == "reject" => Ok(Action::Reject),
        None if text == "return" => Ok(Action::Return),
        None if text == "continue" => Ok(Action::Continue),
        _ => Err(format!("unknown verdict `{text}`")),
    }
}

/// The rule's action when it matches the packet (its statements applied to `state`
/// on the way); `None` when it does not.
fn evaluate(table: &Table, text: &str, state: &mut State) -> Result<Option<Action>, String> {
    let words = words(text);
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    let set = |name: &str| -> Result<&Set, String> {
        table
            .sets
            .get(name.trim_start_matches('@'))
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
                        let key = field(state, &words, &mut at)?;
                        if word(at) != "map" {
                            return Err(format!("unknown counter `{text}`"));
                        }
                        let name = word(at + 1).to_string();
                        at += 2;
                        match key {
                            Some(key)
                                if lookup(set(&name)?, std::slice::from_ref(&key)).is_some() => {}
                            _ => return Ok(None),
                        }
                    }
                }
            }
            "meta" if word(at + 1) == "mark" && word(at + 2) == "set" => {
                at += 3;
                let value = if word(at) == "meta" && word(at + 1) == "mark" {
                    let operand = number(word(at + 3))?;
                    let value = match word(at + 2) {
                        "|" => state.mark | operand,
                        "^" => state.mark ^ operand,
                        "&" => state.mark & operand,
                        other => return Err(format!("unknown mark operator `{other}`")),
                    };
                    at += 4;
                    value
                } else {
                    at += 1;
                    number(word(at - 1))?
                };
                state.mark = value;
            }
            "dnat" => {
                // `dnat [ip|ip6] to <fields> map @m`: the map's value is `address .
                // port`; a key it lacks ends the rule. A NAT statement accepts.
                at += 1;
                let family = if matches!(word(at), "ip" | "ip6") && word(at + 1) == "to" {
                    at += 1;
                    Some(word(at - 1) == "ip")
                } else {
                    None
                };
                if word(at) != "to" {
                    return Err(format!("unknown dnat `{text}`"));
                }
                at += 1;
                if let Some((addr, port)) = literal_destination(word(at), state.packet.dport) {
                    at += 1;
                    if addr.is_ipv4() != state.packet.daddr.is_ipv4() {
                        return Ok(None);
                    }
                    state.dnat(addr, port);
                    action = Action::Accept;
                    continue;
                }
                let key = fields(state, &words, &mut at)?;
                if word(at) != "map" {
                    return Err(format!("dnat without a map `{text}`"));
                }
                let name = word(at + 1).to_string();
                at += 2;
                let Some(key) = key else { return Ok(None) };
                if family.is_some_and(|v4| v4 != state.packet.daddr.is_ipv4()) {
                    return Ok(None);
                }
                let Some(value) = find(table, &name, &key)? else {
                    return Ok(None);
                };
                let (addr, port) = value
                    .split_once(" . ")
                    .ok_or_else(|| format!("map {name}: value `{value}` is not address . port"))?;
                let addr: IpAddr = addr
                    .parse()
                    .map_err(|_| format!("map {name}: `{addr}` is not an address"))?;
                let port: u16 = port
                    .trim()
                    .parse()
                    .map_err(|_| format!("map {name}: `{port}` is not a port"))?;
                state.dnat(addr, port);
                action = Action::Accept;
            }
            "masquerade" => {
                at += 1;
                while matches!(word(at), "fully-random" | "random" | "persistent") {
                    at += 1;
                }
                state.masquerade = true;
                action = Action::Accept;
            }
            "update" | "add" if word(at + 1).starts_with('@') => {
                // The packet path adds an element to a dynamic set: kept only as the
                // timeout it gets.
                let body = word(at + 2);
                let timeout = body
                    .split_whitespace()
                    .skip_while(|w| *w != "timeout")
                    .nth(1)
                    .map(|t| t.trim_end_matches('s').parse::<u32>())
                    .transpose()
                    .map_err(|_| format!("unknown timeout in `{body}`"))?;
                if timeout.is_some() {
                    state.affinity = timeout;
                }
                at += 3;
            }
            _ => {
                // A match: field [. field ...] [& mask] then `@set`, `!= @set`,
                // `vmap @map`, or a literal (`== literal`).
                let values = fields(state, &words, &mut at)?;
                let mut values = values;
                if word(at) == "&" {
                    let mask = number(word(at + 1))?;
                    at += 2;
                    if let Some([Value::Number(n)]) = values.as_deref_mut() {
                        *n &= mask;
                    } else {
                        return Err(format!("a mask on something not a number `{text}`"));
                    }
                }
                let negate = word(at) == "!=";
                if negate || word(at) == "==" {
                    at += 1;
                }
                let operand = word(at).to_string();
                at += 1;
                let Some(values) = values else {
                    return Ok(None);
                };
                if operand == "vmap" {
                    let name = word(at).to_string();
                    return match find(table, &name, &values)? {
                        Some(value) => verdict(&value).map(Some),
                        None => Ok(None),
                    };
                }
                let found = if operand.starts_with('@') || operand.starts_with('{') {
                    find(table, &operand, &values)?.is_some()
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

    /// A base chain of a test table.
    fn base(hook: &str, kind: &str, priority: i32, rules: &[&str]) -> Arc<Chain> {
        Arc::new(Chain::new(
            Some(Hook::new(kind, hook, priority)),
            rules.iter().copied(),
        ))
    }

    /// A set (or, with `map`, a map) of a test table holding `elements`.
    fn set(decl: &str, map: bool, elements: &[(&str, &str)]) -> Arc<Set> {
        Arc::new(
            Set::new(map, decl, None).with_elements(
                elements
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Elements>(),
            ),
        )
    }

    /// A regular chain of a test table.
    fn plain(rules: &[&str]) -> Arc<Chain> {
        Arc::new(Chain::new(None, rules.iter().copied()))
    }

    fn table() -> Table {
        let mut t = Table::default();
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

    /// A NAT table in the shape of a service proxy's, with chain names of its own.
    fn nat_table() -> Table {
        let mut t = Table::default();
        let frontend = "type ipv4_addr . inet_proto . inet_service : verdict";
        t.sets.insert(
            "vips".into(),
            set(
                frontend,
                true,
                &[
                    ("10.96.0.1 . tcp . 80", "goto svc"),
                    ("10.96.0.2 . tcp . 80", "goto dead"),
                    ("10.96.0.4 . tcp . 80", "goto split"),
                ],
            ),
        );
        t.sets.insert(
            "slots".into(),
            set(
                "typeof ip daddr . meta l4proto . th dport . numgen random mod 1 : ip daddr . th dport",
                true,
                &[
                    ("10.96.0.1 . tcp . 80 . 0", "10.244.1.1 . 8080"),
                    ("10.96.0.1 . tcp . 80 . 1", "10.244.2.1 . 8080"),
                    ("10.96.0.1 . tcp . 80 . 2", "10.244.3.1 . 8080"),
                ],
            ),
        );
        t.sets.insert(
            "sticky".into(),
            set(frontend, true, &[("10.96.0.1 . tcp . 80", "goto remember")]),
        );
        t.sets.insert(
            "hairpin".into(),
            set(
                "type ipv4_addr . ipv4_addr",
                false,
                &[("10.244.2.1 . 10.244.2.1", "")],
            ),
        );
        t.sets.insert(
            "pods".into(),
            set(
                "type ipv4_addr; flags interval",
                false,
                &[("10.244.0.0/16", "")],
            ),
        );
        t.sets.insert(
            "cut".into(),
            set(
                "type ipv4_addr; flags dynamic,timeout; timeout 1h",
                false,
                &[],
            ),
        );
        t.chains.insert(
            "pre".into(),
            base(
                "prerouting",
                "nat",
                -100,
                &["ip daddr . meta l4proto . th dport vmap @vips"],
            ),
        );
        t.chains.insert(
            "out".into(),
            base(
                "output",
                "nat",
                -100,
                &["ip daddr . meta l4proto . th dport vmap @vips"],
            ),
        );
        t.chains.insert(
            "svc".into(),
            plain(&[
                "ip saddr != @pods meta mark set meta mark | 0x4000",
                "fib saddr type local meta mark set meta mark | 0x4000",
                "dnat ip to ip saddr . ip daddr . meta l4proto . th dport map @cut",
                "dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 3 map @slots",
            ]),
        );
        t.chains.insert("dead".into(), plain(&["reject"]));
        t.chains.insert(
            "split".into(),
            plain(&["numgen random mod 2 vmap { 0 : goto to-a, 1 : goto to-b }"]),
        );
        t.chains.insert(
            "to-a".into(),
            plain(&["meta l4proto { tcp, udp } dnat ip to 10.244.5.1:80"]),
        );
        t.chains
            .insert("to-b".into(), plain(&["dnat ip to 10.244.6.1"]));
        t.chains.insert(
            "after".into(),
            base(
                "prerouting",
                "filter",
                -90,
                &["ct status dnat ct original ip daddr . meta l4proto . ct original proto-dst vmap @sticky"],
            ),
        );
        t.chains.insert(
            "remember".into(),
            plain(&["update @cut { ip saddr timeout 600s : ip daddr . th dport }"]),
        );
        t.chains.insert(
            "post".into(),
            base(
                "postrouting",
                "nat",
                100,
                &[
                    "ct status dnat ip saddr . ip daddr @hairpin masquerade",
                    "meta mark & 0x4000 == 0x4000 meta mark set meta mark ^ 0x4000 masquerade fully-random",
                ],
            ),
        );
        t
    }

    #[test]
    fn nat_follows_every_bucket_with_marks_and_masquerade() {
        let t = nat_table();
        let local: Vec<IpAddr> = vec!["192.168.0.1".parse().unwrap()];
        let flows = |src: &str, dst: &str| {
            let mut flows = trace_flow(&t, &packet(src, dst, "tcp", 80), &local).unwrap();
            flows.sort_by_key(|f| f.daddr);
            flows
        };
        // A pod: every endpoint, masqueraded only when it lands on itself.
        let pod = flows("10.244.2.1", "10.96.0.1");
        let landed: Vec<(String, bool)> = pod
            .iter()
            .map(|f| (format!("{}:{}", f.daddr, f.dport), f.masquerade))
            .collect();
        assert_eq!(
            landed,
            [
                ("10.244.1.1:8080".to_string(), false),
                ("10.244.2.1:8080".to_string(), true),
                ("10.244.3.1:8080".to_string(), false),
            ]
        );
        assert!(pod.iter().all(|f| f.fate == Fate::Accept && f.dnat));
        assert!(pod.iter().all(|f| f.affinity_seconds == Some(600)));
        assert!(
            pod[0]
                .path
                .iter()
                .any(|p| p.starts_with("prerouting svc: dnat")),
            "{:?}",
            pod[0].path
        );
        // Off the pod network, and the node itself (through output): marked, masqueraded.
        assert!(flows("192.0.2.9", "10.96.0.1").iter().all(|f| f.masquerade));
        let node = flows("192.168.0.1", "10.96.0.1");
        assert_eq!(node.len(), 3);
        assert!(node.iter().all(|f| f.masquerade && f.dnat));
        assert!(
            node[0].path[0].starts_with("output out: "),
            "{:?}",
            node[0].path
        );
        // A reject, and a packet no rule touches.
        assert_eq!(flows("10.244.2.1", "10.96.0.2")[0].fate, Fate::Reject);
        let untouched = flows("10.244.2.1", "10.96.0.3");
        assert_eq!(untouched.len(), 1);
        assert!(!untouched[0].dnat && !untouched[0].masquerade);
        // Buckets of a verdict map written in the rule, and literal DNAT targets.
        let split: Vec<String> = flows("10.244.2.1", "10.96.0.4")
            .iter()
            .map(|f| format!("{}:{}", f.daddr, f.dport))
            .collect();
        assert_eq!(split, ["10.244.5.1:80", "10.244.6.1:80"]);
        // IPv6 meets no `ip` rule.
        let v6 = trace_flow(&t, &packet("fd00::1", "fd00::2", "tcp", 80), &local).unwrap();
        assert_eq!((v6.len(), v6[0].dnat), (1, false));
    }

    /// IPv6 affinity as the proxy lays it out: a client in an endpoint's set goes to
    /// that endpoint only; any other client to every bucket, recorded after NAT.
    #[test]
    fn a_client_in_an_endpoints_set_goes_there() {
        let mut t = Table::default();
        let frontend = "type ipv6_addr . inet_proto . inet_service : verdict";
        let clients = "type ipv6_addr; flags dynamic,timeout";
        t.sets.insert(
            "lookup".into(),
            set(frontend, true, &[("fd00::1 . tcp . 80", "jump sticky")]),
        );
        t.sets.insert(
            "record".into(),
            set(frontend, true, &[("fd00::1 . tcp . 80", "goto remember")]),
        );
        t.sets.insert(
            "slots".into(),
            set(
                "typeof ip6 daddr . meta l4proto . th dport . numgen random mod 1 : ip6 daddr . th dport",
                true,
                &[
                    ("fd00::1 . tcp . 80 . 0", "fd10::1 . 8080"),
                    ("fd00::1 . tcp . 80 . 1", "fd10::2 . 8080"),
                ],
            ),
        );
        t.sets.insert("a".into(), set(clients, false, &[]));
        t.sets
            .insert("b".into(), set(clients, false, &[("fd99::7", "")]));
        t.chains.insert(
            "pre".into(),
            base(
                "prerouting",
                "nat",
                -100,
                &[
                    "ip6 daddr . meta l4proto . th dport vmap @lookup",
                    "dnat ip6 to ip6 daddr . meta l4proto . th dport . numgen random mod 2 map @slots",
                ],
            ),
        );
        t.chains.insert(
            "sticky".into(),
            plain(&[
                "meta l4proto tcp ip6 saddr @a dnat ip6 to [fd10::1]:8080",
                "meta l4proto tcp ip6 saddr @b dnat ip6 to [fd10::2]:8080",
            ]),
        );
        t.chains.insert(
            "after".into(),
            base(
                "prerouting",
                "filter",
                -90,
                &["ct state new ct status dnat ct original ip6 daddr . meta l4proto . ct original proto-dst vmap @record"],
            ),
        );
        t.chains.insert(
            "remember".into(),
            plain(&[
                "ip6 daddr fd10::1 th dport 8080 update @a { ip6 saddr timeout 60s }",
                "ip6 daddr fd10::2 th dport 8080 update @b { ip6 saddr timeout 60s }",
            ]),
        );
        let landed = |from: &str| -> Vec<(String, Option<u32>)> {
            let mut flows = trace_flow(&t, &packet(from, "fd00::1", "tcp", 80), &[])
                .unwrap()
                .into_iter()
                .map(|f| (format!("[{}]:{}", f.daddr, f.dport), f.affinity_seconds))
                .collect::<Vec<_>>();
            flows.sort();
            flows
        };
        assert_eq!(
            landed("fd99::7"),
            [("[fd10::2]:8080".to_string(), Some(60))]
        );
        assert_eq!(
            landed("fd99::8"),
            [
                ("[fd10::1]:8080".to_string(), Some(60)),
                ("[fd10::2]:8080".to_string(), Some(60))
            ]
        );
    }

    #[test]
    fn an_unknown_statement_is_an_error() {
        let mut t = table();
        t.chains.insert(
            "in".into(),
            Arc::new(Chain::new(
                Some(Hook::new("filter", "forward", 10)),
                ["osf name \"Linux\" accept"],
            )),
        );
        let error = trace(&t, "forward", &packet("10.0.0.1", "10.0.0.2", "tcp", 1));
        assert!(matches!(error, Err(TraceError::Rule { .. })), "{error:?}");
    }
}
