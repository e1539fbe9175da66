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
    let mut key = String::with_capacity(HASH_PREFIX.len() + 64);
    push_compute_key(&mut key, node_id, [world_id, domain, as_of, partition]);
    key
}

/// Appends the compute key of `node_id` under `[world, domain, as_of, partition]` to `out`.
fn push_compute_key(out: &mut String, node_id: &str, context: [&str; 4]) {
    let [world_id, domain, as_of, partition] = context;
    let domain = if domain.is_empty() {
        "backtest"
    } else {
        domain
    };
    let digest = crate::hash_preimage(|preimage| {
        for (i, part) in [node_id, world_id, domain, as_of, partition]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                preimage.push(0x1f);
            }
            preimage.extend_from_slice(part.as_bytes());
        }
    });
    out.push_str(HASH_PREFIX);
    out.push_str(digest.to_hex().as_str());
}

/// The `queue_map` key: `{node_id}:{interval}:{bucket}`, with `#ck={compute_key}` when one applies.
pub fn partition_key(
    node_id: &str,
    interval: i64,
    bucket: i64,
    compute_key: Option<&str>,
) -> String {
    let mut key = partition_key_base(node_id, interval, bucket, compute_key.map_or(0, str::len));
    if let Some(compute_key) = compute_key {
        key.push_str(COMPUTE_KEY_MARK);
        key.push_str(compute_key);
    }
    key
}

/// The `queue_map` key of `node_id` with the compute key of `context` (none for `None`), built
/// in one allocation: what [`partition_key`] gives for `context.compute_key(node_id)`.
pub fn partition_key_in(
    node_id: &str,
    interval: i64,
    bucket: i64,
    context: Option<&ComputeContext>,
) -> String {
    let Some(context) = context else {
        return partition_key(node_id, interval, bucket, None);
    };
    let mut key = partition_key_base(node_id, interval, bucket, HASH_PREFIX.len() + 64);
    key.push_str(COMPUTE_KEY_MARK);
    push_compute_key(
        &mut key,
        node_id,
        [
            &context.world_id,
            &context.execution_domain,
            &context.as_of,
            &context.partition,
        ],
    );
    key
}

const COMPUTE_KEY_MARK: &str = "#ck=";

/// `{node_id}:{interval}:{bucket}`, with room for a compute key of `key_len` bytes.
fn partition_key_base(node_id: &str, interval: i64, bucket: i64, key_len: usize) -> String {
    let mut numbers = itoa::Buffer::new();
    let mut key = String::with_capacity(node_id.len() + 42 + COMPUTE_KEY_MARK.len() + key_len);
    key.push_str(node_id);
    key.push(':');
    key.push_str(numbers.format(interval));
    key.push(':');
    key.push_str(numbers.format(bucket));
    key
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
    fn a_partition_key_in_a_context_is_the_key_with_that_contexts_compute_key() {
        let mut context = ComputeContext {
            world_id: "w1".into(),
            execution_domain: String::new(),
            as_of: "2025-01-01".into(),
            partition: "p".into(),
            dataset_fingerprint: "ignored".into(),
        };
        let key = context.compute_key("blake3:ab");
        assert_eq!(
            partition_key_in("blake3:ab", 60, 0, Some(&context)),
            partition_key("blake3:ab", 60, 0, Some(&key))
        );
        context.execution_domain = "live".into();
        assert_ne!(
            partition_key_in("blake3:ab", 60, 0, Some(&context)),
            partition_key("blake3:ab", 60, 0, Some(&key))
        );
        assert_eq!(partition_key_in("blake3:ab", -5, 3, None), "blake3:ab:-5:3");
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
