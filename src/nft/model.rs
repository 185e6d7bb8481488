//! One nftables table as plain data: chains (base chains with their hook), rules,
//! sets and maps with their elements, and named counters. The same type describes
//! what a controller wants and what the kernel holds (read back by [`super::read`]),
//! so drift is a [`super::render::diff`] between the two that comes out empty.
//!
//! Rules and set declarations are compared by a fingerprint of the text we wrote,
//! which travels in the kernel as the object's comment (`... #fingerprint`): nft
//! prints rules back in its own normal form, so text cannot be compared, and a rule
//! someone else added carries no fingerprint of ours.

use std::fmt;

pub use super::elements::{ElementChanges, Elements, Objects};

/// Which table: `inet kubewire`. Every command names it; nothing else is touched.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableId {
    pub family: String,
    pub name: String,
}

impl TableId {
    pub fn new(family: &str, name: &str) -> Self {
        Self {
            family: family.to_string(),
            name: name.to_string(),
        }
    }

    /// Where a full load compiles this table's structure first (see
    /// [`super::load`]): a table of ours, next to it.
    pub fn staging(&self) -> TableId {
        TableId::new(&self.family, &format!("{}-staging", self.name))
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.family, self.name)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub chains: Objects<Chain>,
    /// Sets and maps, by name.
    pub sets: Objects<Set>,
    /// Named counters, by name.
    pub counters: Objects<Counter>,
}

impl Table {
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }

    pub fn element_count(&self) -> usize {
        self.sets.values().map(|s| s.elements.len()).sum()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    /// Set for a base chain.
    pub hook: Option<Hook>,
    pub rules: Vec<Rule>,
}

impl Chain {
    pub fn new(hook: Option<Hook>, rules: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            hook,
            rules: rules.into_iter().map(|r| Rule::new(r.into())).collect(),
        }
    }
}

/// Where a base chain is attached.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Hook {
    /// `filter`, `nat` or `route`.
    pub kind: String,
    /// `prerouting`, `forward`, ...
    pub hook: String,
    pub priority: i32,
    /// `accept` or `drop`.
    pub policy: String,
}

impl Hook {
    pub fn new(kind: &str, hook: &str, priority: i32) -> Self {
        Self {
            kind: kind.into(),
            hook: hook.into(),
            priority,
            policy: "accept".into(),
        }
    }

    /// Reads `type nat hook prerouting priority dstnat - 10; policy accept;`.
    pub fn parse(text: &str) -> Option<Self> {
        let words: Vec<&str> = text
            .split(|c: char| c.is_whitespace() || c == ';')
            .filter(|w| !w.is_empty())
            .collect();
        let after = |key: &str| {
            let at = words.iter().position(|w| *w == key)?;
            words.get(at + 1).copied()
        };
        let at = words.iter().position(|w| *w == "priority")?;
        let mut priority = match words.get(at + 1)? {
            &"raw" => -300,
            &"mangle" => -150,
            &"dstnat" => -100,
            &"filter" => 0,
            &"security" => 50,
            &"srcnat" => 100,
            number => number.parse().ok()?,
        };
        if let (Some(sign), Some(offset)) = (words.get(at + 2), words.get(at + 3))
            && (*sign == "+" || *sign == "-")
        {
            let offset: i32 = offset.parse().ok()?;
            priority += if *sign == "+" { offset } else { -offset };
        }
        Some(Self {
            kind: after("type")?.to_string(),
            hook: after("hook")?.to_string(),
            priority,
            policy: after("policy").unwrap_or("accept").to_string(),
        })
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {} hook {} priority {}; policy {};",
            self.kind, self.hook, self.priority, self.policy
        )
    }
}

/// A rule's text and its fingerprint; two rules are equal when their fingerprints are.
#[derive(Clone, Debug)]
pub struct Rule {
    text: String,
    id: Option<u32>,
}

impl Rule {
    pub fn new(text: String) -> Self {
        let id = Some(fingerprint(&[&text]));
        Self { text, id }
    }

    /// A rule read from the kernel: its fingerprint (`None`: not one of ours) and
    /// where it is.
    pub fn observed(id: Option<u32>, handle: u64) -> Self {
        Self {
            text: format!("# rule handle {handle}"),
            id,
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn id(&self) -> Option<u32> {
        self.id
    }

    /// The rule as sent to the kernel: its comment gets ` #fingerprint` (or the rule
    /// gets a comment of just that).
    pub fn render(&self) -> String {
        let tag = format!("#{:08x}", self.id.unwrap_or(0));
        match self.text.rfind(" comment \"") {
            Some(at) if self.text.ends_with('"') => {
                let comment = &self.text[at + 10..self.text.len() - 1];
                format!(
                    "{} comment \"{} {tag}\"",
                    &self.text[..at],
                    truncate(comment, 110)
                )
            }
            _ => format!("{} comment \"{tag}\"", self.text),
        }
    }
}

impl PartialEq for Rule {
    fn eq(&self, other: &Self) -> bool {
        self.id.is_some() && self.id == other.id
    }
}

impl Eq for Rule {}

/// A set (`map` false) or a map.
#[derive(Clone, Debug)]
pub struct Set {
    pub map: bool,
    /// What goes between the braces before the elements: `type ... : verdict; flags
    /// interval`.
    pub declaration: String,
    pub comment: Option<String>,
    /// Key → value (empty for sets), in nft syntax; keys of interval sets in
    /// [`canonical`] form.
    pub elements: Elements,
    id: u32,
}

impl Set {
    pub fn new(map: bool, declaration: &str, comment: Option<String>) -> Self {
        let declaration = declaration.trim().trim_end_matches(';').to_string();
        let comment = comment.map(|c| truncate(&c.replace('"', "'"), 110).to_string());
        let id = fingerprint(&[
            if map { "map" } else { "set" },
            &declaration,
            comment.as_deref().unwrap_or(""),
        ]);
        Self {
            map,
            declaration,
            comment,
            elements: Elements::default(),
            id,
        }
    }

    /// A set read from the kernel, with the fingerprint its comment carries.
    pub fn observed(map: bool, id: Option<u32>, elements: Elements) -> Self {
        Self {
            map,
            declaration: String::new(),
            comment: None,
            elements,
            id: id.unwrap_or(0),
        }
    }

    /// Sets the elements; interval keys are brought to the form the kernel lists.
    pub fn with_elements(mut self, elements: impl Into<Elements>) -> Self {
        let elements: Elements = elements.into();
        self.elements = if self.interval() {
            elements
                .iter()
                .map(|(k, v)| (canonical(k), v.clone()))
                .collect()
        } else {
            elements
        };
        self
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn interval(&self) -> bool {
        self.declaration.contains("interval")
    }

    /// Whether the packet path adds elements (timeouts): those are not ours to keep.
    pub fn dynamic(&self) -> bool {
        self.declaration.contains("timeout") || self.declaration.contains("dynamic")
    }

    pub fn keyword(&self) -> &'static str {
        if self.map { "map" } else { "set" }
    }

    /// The comment sent to the kernel: ours plus ` #fingerprint`.
    pub fn kernel_comment(&self) -> String {
        match &self.comment {
            Some(comment) => format!("{comment} #{:08x}", self.id),
            None => format!("#{:08x}", self.id),
        }
    }

    /// One element in nft syntax (`key` or `key : value`).
    pub fn element(&self, key: &str) -> String {
        match self.elements.get(key) {
            Some(value) if !value.is_empty() => format!("{key} : {value}"),
            _ => key.to_string(),
        }
    }
}

impl PartialEq for Set {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.map == other.map && self.elements == other.elements
    }
}

impl Eq for Set {}

/// A named counter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counter;

/// The fingerprint in a kernel comment (`anything #1234abcd`).
pub fn comment_id(comment: &str) -> Option<u32> {
    let (_, tag) = comment.rsplit_once('#')?;
    (tag.len() == 8).then(|| u32::from_str_radix(tag, 16).ok())?
}

/// FNV-1a over the parts (with a separator), so equal text gives equal fingerprints
/// in every process and version.
pub fn fingerprint(parts: &[&str]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for part in parts {
        for byte in part.bytes().chain([0]) {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    hash
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// An interval element as nft lists it: a single address without `/32`, a range
/// that is a prefix as the prefix, a prefix without host bits; each part of a
/// concatenation alike.
pub fn canonical(key: &str) -> String {
    if !key.contains(['/', '-']) {
        return key.to_string();
    }
    key.split(" . ")
        .map(canonical_part)
        .collect::<Vec<_>>()
        .join(" . ")
}

fn canonical_part(part: &str) -> String {
    use ipnet::IpNet;
    use std::net::IpAddr;
    if let Ok(net) = part.parse::<IpNet>() {
        let net = net.trunc();
        return if net.prefix_len() == net.max_prefix_len() {
            net.addr().to_string()
        } else {
            net.to_string()
        };
    }
    let Some((start, end)) = part.split_once('-') else {
        return part.to_string();
    };
    let (Ok(start), Ok(end)) = (start.parse::<IpAddr>(), end.parse::<IpAddr>()) else {
        return part.to_string();
    };
    let bits = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32u32),
        IpAddr::V6(v6) => (u128::from(v6), 128u32),
    };
    let ((a, width), (b, other)) = (bits(start), bits(end));
    if width != other || a > b {
        return part.to_string();
    }
    if a == b {
        return start.to_string();
    }
    let size = b - a + 1;
    if size.is_power_of_two() && a % size == 0 {
        let len = width - size.trailing_zeros();
        return format!("{start}/{len}");
    }
    part.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_parse_named_priorities() {
        let hook = Hook::parse("type nat hook prerouting priority dstnat - 10; policy accept;");
        assert_eq!(hook, Some(Hook::new("nat", "prerouting", -110)));
        let hook = Hook::parse("type filter hook output priority -110; policy drop;").unwrap();
        assert_eq!((hook.priority, hook.policy.as_str()), (-110, "drop"));
        assert_eq!(
            hook.to_string(),
            "type filter hook output priority -110; policy drop;"
        );
        assert_eq!(Hook::parse("type filter"), None);
    }

    #[test]
    fn rules_carry_their_fingerprint_in_the_comment() {
        let rule = Rule::new("ip saddr @a accept comment \"ingress[0]\"".into());
        let text = rule.render();
        let (_, comment) = text.split_once("comment \"").unwrap();
        assert!(comment.starts_with("ingress[0] #"));
        assert_eq!(comment_id(comment.trim_end_matches('"')), rule.id());
        let plain = Rule::new("counter accept".into());
        assert!(plain.render().starts_with("counter accept comment \"#"));
        assert_ne!(plain, rule);
        assert_eq!(plain, Rule::observed(plain.id(), 7));
        assert_ne!(Rule::observed(None, 1), Rule::observed(None, 1));
    }

    #[test]
    fn interval_keys_take_the_kernels_form() {
        assert_eq!(canonical("192.168.1.11/32"), "192.168.1.11");
        assert_eq!(canonical("10.0.0.0-10.0.0.3"), "10.0.0.0/30");
        assert_eq!(canonical("10.0.0.1-10.0.0.3"), "10.0.0.1-10.0.0.3");
        assert_eq!(canonical("10.0.0.5-10.0.0.5"), "10.0.0.5");
        assert_eq!(canonical("10.244.1.5/24"), "10.244.1.0/24");
        assert_eq!(
            canonical("1.2.3.4 . tcp . 443 . 203.0.113.7/32"),
            "1.2.3.4 . tcp . 443 . 203.0.113.7"
        );
        assert_eq!(canonical("fd00::/64"), "fd00::/64");
    }
}
