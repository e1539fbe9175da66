//! A queue's name (the Kafka topic it is stored in) and kind (wire.md section 6).

use crate::HASH_PREFIX;

/// What a queue carries, which decides its retention and GC policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueKind {
    Raw,
    Indicator,
    TradeExec,
}

impl QueueKind {
    /// Kind by substring of the node type, as the Python QMTL decides it.
    pub fn of_node_type(node_type: &str) -> QueueKind {
        let lower = node_type.to_ascii_lowercase();
        let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
        if has(&["exec", "trade", "order", "portfolio"]) {
            QueueKind::TradeExec
        } else if has(&["raw", "price", "ohlcv"]) {
            QueueKind::Raw
        } else {
            QueueKind::Indicator
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::Raw => "raw",
            QueueKind::Indicator => "indicator",
            QueueKind::TradeExec => "trade_exec",
        }
    }

    pub fn parse(name: &str) -> Option<QueueKind> {
        match name {
            "raw" => Some(QueueKind::Raw),
            "indicator" => Some(QueueKind::Indicator),
            "trade_exec" => Some(QueueKind::TradeExec),
            _ => None,
        }
    }
}

/// A queue namespace: a ready prefix (`w1.backtest`) or a world and domain to normalise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueNamespace {
    Prefix(String),
    WorldDomain { world: String, domain: String },
}

impl QueueNamespace {
    /// The prefix without its trailing dot; empty when the namespace is empty.
    pub fn prefix(&self) -> String {
        match self {
            QueueNamespace::Prefix(prefix) => prefix.trim_end_matches('.').to_owned(),
            QueueNamespace::WorldDomain { world, domain } => {
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

/// The asset segment of a node's queue names: its first tag, lower-cased, or `asset`.
pub fn queue_asset(tags: &[String]) -> std::borrow::Cow<'_, str> {
    match tags.iter().map(|t| t.trim()).find(|t| !t.is_empty()) {
        Some(tag) if tag.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) => tag.into(),
        Some(tag) => tag.to_lowercase().into(),
        None => "asset".into(),
    }
}

/// `{namespace.}{asset}_{node_type}_{short}_{version}{_sim}`, with `short` the first 8 hex digits
/// of the node id's digest, grown 2 at a time while the name is taken, then `-N` suffixes.
pub fn queue_name(
    asset: &str,
    node_type: &str,
    node_id: &str,
    version: &str,
    dry_run: bool,
    namespace: Option<&QueueNamespace>,
    is_taken: impl Fn(&str) -> bool,
) -> String {
    let prefix = namespace.map(QueueNamespace::prefix).unwrap_or_default();
    queue_name_candidates(&prefix, asset, node_type, node_id, version, dry_run)
        .find(|name| !is_taken(name))
        .expect("the candidates never end")
}

/// Every name [`queue_name`] may pick for a node, in the order it tries them (endless);
/// `prefix` is the namespace's ([`QueueNamespace::prefix`], empty for none).
pub fn queue_name_candidates<'a>(
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
        assert_eq!(QueueKind::of_node_type("OrderRouter"), QueueKind::TradeExec);
        assert_eq!(QueueKind::of_node_type("PriceFeed"), QueueKind::Raw);
        assert_eq!(QueueKind::of_node_type("SMA"), QueueKind::Indicator);
    }

    #[test]
    fn a_taken_name_grows_its_short_hash_then_takes_a_suffix() {
        let id = format!("{HASH_PREFIX}{}", "ab".repeat(32));
        let first = queue_name("asset", "SMA", &id, "v1", false, None, |_| false);
        assert_eq!(first, "asset_SMA_abababab_v1");
        let grown = queue_name("asset", "SMA", &id, "v1", false, None, |n| n == first);
        assert_eq!(grown, "asset_SMA_ababababab_v1");
        let full = format!("asset_SMA_{}_v1", "ab".repeat(32));
        let suffixed = queue_name("asset", "SMA", &id, "v1", true, None, |n| {
            n.ends_with("_sim") && n != format!("{full}_sim-1")
        });
        assert_eq!(suffixed, format!("{full}_sim-1"));
    }
}
