//! The compute context a node runs in, and the compute key that isolates its queues (wire.md section 4).

use crate::HASH_PREFIX;

/// Execution domains after alias normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Domain {
    Backtest,
    Dryrun,
    Live,
    Shadow,
}

impl Domain {
    pub fn as_str(self) -> &'static str {
        match self {
            Domain::Backtest => "backtest",
            Domain::Dryrun => "dryrun",
            Domain::Live => "live",
            Domain::Shadow => "shadow",
        }
    }

    /// Normalises a domain name or alias; `None` for a name that is no domain at all.
    /// An empty name or `default` is `Backtest` (the downgrade the spec asks for).
    pub fn parse(name: &str) -> Option<Domain> {
        let lower = name.trim().to_ascii_lowercase();
        let domain = match lower.as_str() {
            "" | "default" | "backtest" | "backtesting" | "offline" | "sandbox" => Domain::Backtest,
            "dryrun" | "dry-run" | "dry_run" | "paper" | "papertrade" | "paper_trade"
            | "paper-trading" | "paper_trading" | "sim" | "simulation" => Domain::Dryrun,
            "live" | "prod" | "production" => Domain::Live,
            "shadow" => Domain::Shadow,
            _ => return None,
        };
        Some(domain)
    }
}

/// Where and when a computation runs. Empty strings mean "not set".
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ComputeContext {
    pub world_id: String,
    pub execution_domain: String,
    pub as_of: String,
    pub partition: String,
    pub dataset_fingerprint: String,
}

impl ComputeContext {
    /// True when the context names a world, which is when a compute key applies to queues.
    pub fn applies(&self) -> bool {
        !self.world_id.is_empty()
    }

    /// This node's compute key in this context.
    pub fn compute_key(&self, node_id: &str) -> String {
        compute_key(
            node_id,
            &self.world_id,
            &self.execution_domain,
            &self.as_of,
            &self.partition,
        )
    }
}

/// `blake3:` + hex BLAKE3 of node id, world, domain (default `backtest`), as_of and partition
/// joined by U+001F. `dataset_fingerprint` is deliberately left out.
pub fn compute_key(
    node_id: &str,
    world_id: &str,
    domain: &str,
    as_of: &str,
    partition: &str,
) -> String {
    let domain = if domain.is_empty() {
        "backtest"
    } else {
        domain
    };
    let mut hasher = blake3::Hasher::new();
    for (i, part) in [node_id, world_id, domain, as_of, partition]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            hasher.update(b"\x1f");
        }
        hasher.update(part.as_bytes());
    }
    format!("{HASH_PREFIX}{}", hasher.finalize().to_hex())
}

/// The `queue_map` key: `{node_id}:{interval}:{bucket}`, with `#ck={compute_key}` when one applies.
pub fn partition_key(
    node_id: &str,
    interval: i64,
    bucket: i64,
    compute_key: Option<&str>,
) -> String {
    match compute_key {
        Some(key) => format!("{node_id}:{interval}:{bucket}#ck={key}"),
        None => format!("{node_id}:{interval}:{bucket}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_aliases_normalise_and_unknown_names_are_refused() {
        assert_eq!(Domain::parse(""), Some(Domain::Backtest));
        assert_eq!(Domain::parse("Default"), Some(Domain::Backtest));
        assert_eq!(Domain::parse("PAPER"), Some(Domain::Dryrun));
        assert_eq!(Domain::parse("prod"), Some(Domain::Live));
        assert_eq!(Domain::parse("shadow"), Some(Domain::Shadow));
        assert_eq!(Domain::parse("moon"), None);
    }

    #[test]
    fn partition_keys_carry_the_compute_key_only_when_one_applies() {
        assert_eq!(partition_key("blake3:ab", 60, 0, None), "blake3:ab:60:0");
        assert_eq!(
            partition_key("blake3:ab", 0, 0, Some("blake3:cd")),
            "blake3:ab:0:0#ck=blake3:cd"
        );
    }
}
