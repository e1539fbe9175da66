//! Topic names and kinds (wire.md section 6).

use crate::HASH_PREFIX;

/// What a topic carries, which decides its retention and GC policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    Raw,
    Indicator,
    TradeExec,
}

impl TopicKind {
    /// Kind by substring of the node type, as the Python QMTL decides it.
    pub fn of_node_type(node_type: &str) -> TopicKind {
        let lower = node_type.to_ascii_lowercase();
        let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
        if has(&["exec", "trade", "order", "portfolio"]) {
            TopicKind::TradeExec
        } else if has(&["raw", "price", "ohlcv"]) {
            TopicKind::Raw
        } else {
            TopicKind::Indicator
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Raw => "raw",
            TopicKind::Indicator => "indicator",
            TopicKind::TradeExec => "trade_exec",
        }
    }

    pub fn parse(name: &str) -> Option<TopicKind> {
        match name {
            "raw" => Some(TopicKind::Raw),
            "indicator" => Some(TopicKind::Indicator),
            "trade_exec" => Some(TopicKind::TradeExec),
            _ => None,
        }
    }
}

/// A topic namespace: a ready prefix (`w1.backtest`) or a world and domain to normalise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicNamespace {
    Prefix(String),
    WorldDomain { world: String, domain: String },
}

impl TopicNamespace {
    /// The prefix without its trailing dot; empty when the namespace is empty.
    pub fn prefix(&self) -> String {
        match self {
            TopicNamespace::Prefix(prefix) => prefix.trim_end_matches('.').to_owned(),
            TopicNamespace::WorldDomain { world, domain } => {
                format!("{}.{}", normalize_label(world), normalize_label(domain))
            }
        }
    }
}

/// Lower-cases a namespace segment and turns every character other than ASCII alphanumerics,
/// `-` and `_` into `-`.
pub fn normalize_label(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// The asset segment of a node's topics: its first tag, lower-cased, or `asset`.
pub fn topic_asset(tags: &[String]) -> std::borrow::Cow<'_, str> {
    match tags.iter().map(|t| t.trim()).find(|t| !t.is_empty()) {
        Some(tag) if tag.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) => tag.into(),
        Some(tag) => tag.to_lowercase().into(),
        None => "asset".into(),
    }
}

/// `{namespace.}{asset}_{node_type}_{short}_{version}{_sim}`, with `short` the first 8 hex digits
/// of the node id's digest, grown 2 at a time while the name is taken, then `-N` suffixes.
pub fn topic_name(
    asset: &str,
    node_type: &str,
    node_id: &str,
    version: &str,
    dry_run: bool,
    namespace: Option<&TopicNamespace>,
    is_taken: impl Fn(&str) -> bool,
) -> String {
    let prefix = namespace.map(TopicNamespace::prefix).unwrap_or_default();
    topic_name_candidates(&prefix, asset, node_type, node_id, version, dry_run)
        .find(|name| !is_taken(name))
        .expect("the candidates never end")
}

/// Every name [`topic_name`] may pick for a node, in the order it tries them (endless);
/// `prefix` is the namespace's ([`TopicNamespace::prefix`], empty for none).
pub fn topic_name_candidates<'a>(
    prefix: &'a str,
    asset: &'a str,
    node_type: &'a str,
    node_id: &'a str,
    version: &'a str,
    dry_run: bool,
) -> impl Iterator<Item = String> + 'a {
    let digest = node_id.strip_prefix(HASH_PREFIX).unwrap_or(node_id);
    let dot = if prefix.is_empty() { "" } else { "." };
    let suffix = if dry_run { "_sim" } else { "" };
    let build = move |short: &str| {
        let parts = [
            prefix, dot, asset, "_", node_type, "_", short, "_", version, suffix,
        ];
        let mut name = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        parts.iter().for_each(|part| name.push_str(part));
        name
    };
    let full = digest.len();
    std::iter::successors(Some(8.min(full)), move |&length| {
        (length < full).then(|| (length + 2).min(full))
    })
    .map(move |length| build(&digest[..length]))
    .chain((1..).map(move |n| format!("{}-{n}", build(digest))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_node_type_substrings() {
        assert_eq!(TopicKind::of_node_type("OrderRouter"), TopicKind::TradeExec);
        assert_eq!(TopicKind::of_node_type("PriceFeed"), TopicKind::Raw);
        assert_eq!(TopicKind::of_node_type("SMA"), TopicKind::Indicator);
    }

    #[test]
    fn a_taken_name_grows_its_short_hash_then_takes_a_suffix() {
        let id = format!("{HASH_PREFIX}{}", "ab".repeat(32));
        let first = topic_name("asset", "SMA", &id, "v1", false, None, |_| false);
        assert_eq!(first, "asset_SMA_abababab_v1");
        let grown = topic_name("asset", "SMA", &id, "v1", false, None, |n| n == first);
        assert_eq!(grown, "asset_SMA_ababababab_v1");
        let full = format!("asset_SMA_{}_v1", "ab".repeat(32));
        let suffixed = topic_name("asset", "SMA", &id, "v1", true, None, |n| {
            n.ends_with("_sim") && n != format!("{full}_sim-1")
        });
        assert_eq!(suffixed, format!("{full}_sim-1"));
    }
}
