//! Defining a strategy: stream inputs, processing nodes with compute functions, tag queries.
//! Node ids are computed here with the services' own function (`wire::node_id_of`).

use serde_json::{Value as Json, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cache::CacheView;
use crate::source::{HistoryProvider, LiveFeed};
use crate::value::{ComputeError, IntoOutput, Value};

/// A compute function: the node's cache view in, a value (or nothing, or an error) out.
pub(crate) type ComputeFn =
    Box<dyn FnMut(&CacheView<'_>) -> Result<Option<Value>, ComputeError> + Send + 'static>;

/// A callback that sees every value a node emits (for the author's own use; not in the DAG).
pub type Observer = Box<dyn FnMut(i64, &Value) + Send + 'static>;

/// A node of a strategy, as returned by its builder. Cheap to copy; use it to name an input
/// and to read that input's window in a compute function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeRef {
    strategy: u64,
    index: u32,
}

impl NodeRef {
    pub(crate) fn index(self) -> usize {
        self.index as usize
    }
}

/// Why a node could not be defined.
#[derive(Debug, thiserror::Error)]
pub enum DefineError {
    #[error("node `{node}`: its input is not a node of this strategy")]
    ForeignInput { node: String },
    #[error("node `{node}` needs at least one input")]
    NoInputs { node: String },
    #[error(
        "node `{node}`: period must be at least 1 bar (it is the window its compute function reads)"
    )]
    ZeroPeriod { node: String },
    #[error("node `{node}`: a period of {period} bars is more than the {max} a node may keep")]
    PeriodTooLong {
        node: String,
        period: usize,
        max: usize,
    },
    #[error("node `{node}`: interval must be a positive number of seconds, at most a year")]
    BadInterval { node: String },
    #[error("tag query `{node}` needs at least one tag")]
    NoTags { node: String },
    #[error("node `{node}` has no compute function")]
    NoCompute { node: String },
    #[error("node `{node}` is the same node as `{existing}` (same id {node_id})")]
    Duplicate {
        node: String,
        existing: String,
        node_id: String,
    },
    #[error("node `{node}`: its node id could not be computed")]
    Identity {
        node: String,
        #[source]
        source: wire::DagError,
    },
}

/// How a tag query matches queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatchMode {
    /// A queue with any of the tags.
    #[default]
    Any,
    /// A queue with every tag.
    All,
}

impl MatchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchMode::Any => "any",
            MatchMode::All => "all",
        }
    }
}

pub(crate) enum NodeKind {
    Stream {
        history: Option<Arc<dyn HistoryProvider>>,
        live: Option<Box<dyn LiveFeed>>,
    },
    Compute(ComputeFn),
    TagQuery {
        tags: Vec<String>,
        match_mode: MatchMode,
        compute: ComputeFn,
    },
}

/// One defined node: its identity fields, its document, and what runs it.
pub(crate) struct NodeDef {
    pub(crate) name: String,
    pub(crate) node_id: String,
    pub(crate) interval: i64,
    pub(crate) period: usize,
    pub(crate) tags: Vec<String>,
    pub(crate) inputs: Vec<NodeRef>,
    pub(crate) document: Json,
    pub(crate) kind: NodeKind,
    pub(crate) observers: Vec<Observer>,
}

static NEXT_STRATEGY: AtomicU64 = AtomicU64::new(1);

/// A strategy: a named DAG of nodes, each defined after its inputs.
pub struct Strategy {
    name: String,
    uid: u64,
    pub(crate) nodes: Vec<NodeDef>,
}

impl std::fmt::Debug for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Strategy")
            .field("name", &self.name)
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

/// `blake3:` + hex BLAKE3 of a text: how a code identity becomes a `code_hash`.
fn hash_text(text: &str) -> String {
    format!(
        "{}{}",
        wire::HASH_PREFIX,
        blake3::hash(text.as_bytes()).to_hex()
    )
}

impl Strategy {
    pub fn new(name: impl Into<String>) -> Strategy {
        Strategy {
            name: name.into(),
            uid: NEXT_STRATEGY.fetch_add(1, Ordering::Relaxed),
            nodes: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A source of bars: from a live feed, from its queue, and from history for backfill.
    pub fn stream_input(&mut self, name: impl Into<String>) -> StreamBuilder<'_> {
        StreamBuilder {
            strategy: self,
            name: name.into(),
            tags: Vec::new(),
            interval: 60,
            period: 1,
            history: None,
            live: None,
        }
    }

    /// A processing node of type `node_type` (`"SMA"`, `"Crossover"`, ...).
    pub fn node(&mut self, node_type: impl Into<String>) -> NodeBuilder<'_> {
        let node_type = node_type.into();
        NodeBuilder {
            strategy: self,
            name: node_type.clone(),
            node_type,
            inputs: Vec::new(),
            interval: None,
            period: 1,
            params: Json::Null,
            code: String::new(),
            schema_compat_id: String::new(),
            tags: Vec::new(),
        }
    }

    /// A node that reads every queue whose tags match, whoever produces it.
    pub fn tag_query(&mut self, name: impl Into<String>) -> TagQueryBuilder<'_> {
        TagQueryBuilder {
            strategy: self,
            name: name.into(),
            tags: Vec::new(),
            match_mode: MatchMode::Any,
            interval: 60,
            period: 1,
            code: String::new(),
        }
    }

    /// Calls `observer` with every value `node` emits, live or backfilled.
    pub fn observe(
        &mut self,
        node: NodeRef,
        observer: impl FnMut(i64, &Value) + Send + 'static,
    ) -> Result<(), DefineError> {
        self.check_ref(node, "observe")?;
        self.nodes[node.index()].observers.push(Box::new(observer));
        Ok(())
    }

    /// The node id of a node of this strategy.
    pub fn node_id(&self, node: NodeRef) -> Option<&str> {
        (node.strategy == self.uid)
            .then(|| self.nodes.get(node.index()).map(|n| n.node_id.as_str()))
            .flatten()
    }

    /// The DAG document (schema v1), nodes in definition order, which is topological. The
    /// compute context rides in `meta`, so the same strategy in another world, domain, as_of or
    /// partition is another submission (the Gateway's duplicate check hashes the document).
    pub fn dag_json(&self, context: &wire::ComputeContext) -> String {
        json!({
            "schema_version": "v1",
            "nodes": self.nodes.iter().map(|n| &n.document).collect::<Vec<_>>(),
            "meta": {
                "strategy": self.name,
                "compute_context": {
                    "world_id": context.world_id,
                    "execution_domain": context.execution_domain,
                    "as_of": context.as_of,
                    "partition": context.partition,
                },
            },
        })
        .to_string()
    }

    /// CRC32 chained over the node ids in submission order (wire.md section 2).
    pub fn node_ids_crc32(&self) -> u32 {
        wire::crc32_chain(self.nodes.iter().map(|n| n.node_id.as_str()))
    }

    fn check_ref(&self, node: NodeRef, name: &str) -> Result<(), DefineError> {
        if node.strategy == self.uid && node.index() < self.nodes.len() {
            Ok(())
        } else {
            Err(DefineError::ForeignInput {
                node: name.to_owned(),
            })
        }
    }

    fn add(
        &mut self,
        name: String,
        mut document: Json,
        kind: NodeKind,
        inputs: Vec<NodeRef>,
    ) -> Result<NodeRef, DefineError> {
        let node_id = wire::node_id_of(&document).map_err(|source| DefineError::Identity {
            node: name.clone(),
            source,
        })?;
        if let Some(existing) = self.nodes.iter().find(|n| n.node_id == node_id) {
            return Err(DefineError::Duplicate {
                node: name,
                existing: existing.name.clone(),
                node_id,
            });
        }
        document["node_id"] = Json::String(node_id.clone());
        let interval = document["interval"].as_i64().unwrap_or(0);
        let period = document["period"].as_u64().unwrap_or(1) as usize;
        let tags = document["tags"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(Json::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        self.nodes.push(NodeDef {
            name,
            node_id,
            interval,
            period,
            tags,
            inputs,
            document,
            kind,
            observers: Vec::new(),
        });
        Ok(NodeRef {
            strategy: self.uid,
            index: (self.nodes.len() - 1) as u32,
        })
    }
}

/// The longest window a node may keep, in bars (ten years of minute bars).
pub(crate) const MAX_PERIOD: usize = 5_256_000;

/// The longest interval, in seconds (a year).
const MAX_INTERVAL: i64 = 366 * 24 * 3600;

fn check_shape(name: &str, interval: i64, period: usize) -> Result<(), DefineError> {
    if period > MAX_PERIOD {
        return Err(DefineError::PeriodTooLong {
            node: name.to_owned(),
            period,
            max: MAX_PERIOD,
        });
    }
    if interval <= 0 || interval > MAX_INTERVAL {
        return Err(DefineError::BadInterval {
            node: name.to_owned(),
        });
    }
    if period == 0 {
        return Err(DefineError::ZeroPeriod {
            node: name.to_owned(),
        });
    }
    Ok(())
}

fn boxed<F, O>(mut compute: F) -> ComputeFn
where
    F: FnMut(&CacheView<'_>) -> O + Send + 'static,
    O: IntoOutput,
{
    Box::new(move |view| compute(view).into_output())
}

/// Builds a [`Strategy::stream_input`].
#[derive(Debug)]
pub struct StreamBuilder<'s> {
    strategy: &'s mut Strategy,
    name: String,
    tags: Vec<String>,
    interval: i64,
    period: usize,
    history: Option<Arc<dyn HistoryProvider>>,
    live: Option<Box<dyn LiveFeed>>,
}

impl StreamBuilder<'_> {
    /// Tags that tag queries match (the first also names the topic's asset).
    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Bar interval in seconds (default 60).
    pub fn interval(mut self, seconds: i64) -> Self {
        self.interval = seconds;
        self
    }

    /// Bars of history the stream keeps at least (default 1).
    pub fn period(mut self, bars: usize) -> Self {
        self.period = bars;
        self
    }

    /// Where backfill reads past bars from.
    pub fn history(mut self, provider: impl HistoryProvider + 'static) -> Self {
        self.history = Some(Arc::new(provider));
        self
    }

    /// Where live bars come from when this runner produces the stream. Without one the stream
    /// is read from its queue (someone else feeds it).
    pub fn live(mut self, feed: impl LiveFeed + 'static) -> Self {
        self.live = Some(Box::new(feed));
        self
    }

    pub fn build(self) -> Result<NodeRef, DefineError> {
        check_shape(&self.name, self.interval, self.period)?;
        // Tags are not an identity field, so they ride in the params: two streams that differ
        // only in their tags (btc and eth prices) are two nodes with two queues.
        let mut identity_tags = self.tags.clone();
        identity_tags.sort();
        identity_tags.dedup();
        let params = json!({"tags": identity_tags});
        let document = json!({
            "node_type": "StreamInput",
            "name": self.name,
            "interval": self.interval,
            "period": self.period,
            "tags": self.tags,
            "config_hash": hash_text(&wire::canonical_json(&params)),
            "params": params,
            "dependencies": [],
            "code_hash": "",
            "schema_hash": "",
            "schema_compat_id": "",
        });
        let kind = NodeKind::Stream {
            history: self.history,
            live: self.live,
        };
        self.strategy.add(self.name, document, kind, Vec::new())
    }
}

/// Builds a [`Strategy::node`].
#[derive(Debug)]
pub struct NodeBuilder<'s> {
    strategy: &'s mut Strategy,
    name: String,
    node_type: String,
    inputs: Vec<NodeRef>,
    interval: Option<i64>,
    period: usize,
    params: Json,
    code: String,
    schema_compat_id: String,
    tags: Vec<String>,
}

impl NodeBuilder<'_> {
    /// A readable name (not part of the identity).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// An upstream node; call again for more.
    pub fn input(mut self, upstream: NodeRef) -> Self {
        self.inputs.push(upstream);
        self
    }

    /// Bar interval in seconds (default: the first input's).
    pub fn interval(mut self, seconds: i64) -> Self {
        self.interval = Some(seconds);
        self
    }

    /// Bars of each input the compute function sees (default 1).
    pub fn period(mut self, bars: usize) -> Self {
        self.period = bars;
        self
    }

    /// Parameters, part of the node's identity.
    pub fn params(mut self, params: Json) -> Self {
        self.params = params;
        self
    }

    /// The compute function's identity, `name` and `version`: change either whenever the
    /// function's behaviour changes, and the node gets a new id (and a new queue).
    pub fn code(mut self, name: &str, version: &str) -> Self {
        self.code = hash_text(&format!("{name}@{version}"));
        self
    }

    /// Schema compatibility id of the output.
    pub fn schema(mut self, compat_id: impl Into<String>) -> Self {
        self.schema_compat_id = compat_id.into();
        self
    }

    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Finishes the node with its compute function.
    pub fn compute<F, O>(self, compute: F) -> Result<NodeRef, DefineError>
    where
        F: FnMut(&CacheView<'_>) -> O + Send + 'static,
        O: IntoOutput,
    {
        let name = self.name;
        let first = self
            .inputs
            .first()
            .ok_or_else(|| DefineError::NoInputs { node: name.clone() })?;
        for input in &self.inputs {
            self.strategy.check_ref(*input, &name)?;
        }
        let interval = self
            .interval
            .unwrap_or(self.strategy.nodes[first.index()].interval);
        check_shape(&name, interval, self.period)?;
        if self.code.is_empty() {
            return Err(DefineError::NoCompute { node: name });
        }
        let dependencies: Vec<&str> = self
            .inputs
            .iter()
            .map(|i| self.strategy.nodes[i.index()].node_id.as_str())
            .collect();
        let document = json!({
            "node_type": self.node_type,
            "name": name,
            "interval": interval,
            "period": self.period,
            "tags": self.tags,
            "params": self.params,
            "dependencies": dependencies,
            "code_hash": self.code,
            "config_hash": hash_text(&wire::canonical_json(&self.params)),
            "schema_hash": hash_text(&self.schema_compat_id),
            "schema_compat_id": self.schema_compat_id,
        });
        self.strategy.add(
            name,
            document,
            NodeKind::Compute(boxed(compute)),
            self.inputs,
        )
    }
}

/// Builds a [`Strategy::tag_query`].
#[derive(Debug)]
pub struct TagQueryBuilder<'s> {
    strategy: &'s mut Strategy,
    name: String,
    tags: Vec<String>,
    match_mode: MatchMode,
    interval: i64,
    period: usize,
    code: String,
}

impl TagQueryBuilder<'_> {
    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    pub fn match_mode(mut self, mode: MatchMode) -> Self {
        self.match_mode = mode;
        self
    }

    pub fn interval(mut self, seconds: i64) -> Self {
        self.interval = seconds;
        self
    }

    pub fn period(mut self, bars: usize) -> Self {
        self.period = bars;
        self
    }

    pub fn code(mut self, name: &str, version: &str) -> Self {
        self.code = hash_text(&format!("{name}@{version}"));
        self
    }

    /// Finishes the node; the compute function sees one window per matched queue.
    pub fn compute<F, O>(self, compute: F) -> Result<NodeRef, DefineError>
    where
        F: FnMut(&CacheView<'_>) -> O + Send + 'static,
        O: IntoOutput,
    {
        let name = self.name;
        check_shape(&name, self.interval, self.period)?;
        if self.tags.iter().all(|t| t.trim().is_empty()) {
            return Err(DefineError::NoTags { node: name });
        }
        if self.code.is_empty() {
            return Err(DefineError::NoCompute { node: name });
        }
        let document = json!({
            "node_type": "TagQueryNode",
            "name": name,
            "interval": self.interval,
            "period": self.period,
            "tags": [],
            "params": {
                "query_tags": self.tags,
                "match_mode": self.match_mode.as_str(),
                "interval": self.interval,
            },
            "dependencies": [],
            "code_hash": self.code,
            "config_hash": "",
            "schema_hash": "",
            "schema_compat_id": "",
        });
        let kind = NodeKind::TagQuery {
            tags: self.tags,
            match_mode: self.match_mode,
            compute: boxed(compute),
        };
        self.strategy.add(name, document, kind, Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sma(s: &mut Strategy, input: NodeRef, window: usize, version: &str) -> NodeRef {
        s.node("SMA")
            .input(input)
            .period(window)
            .params(json!({"window": window}))
            .code("sma", version)
            .compute(move |v| v.window(input).mean())
            .unwrap_or_else(|e| panic!("{:#}", anyhow::Error::from(e)))
    }

    #[test]
    fn the_dag_parses_and_verifies_with_the_services_functions() {
        let mut s = Strategy::new("t");
        let price = s.stream_input("price").tags(["btc"]).period(3).build();
        let price = price.unwrap_or_else(|e| panic!("{:#}", anyhow::Error::from(e)));
        let fast = sma(&mut s, price, 3, "1");
        let doc = s.dag_json(&wire::ComputeContext::default());
        let dag = wire::parse_dag(&doc, wire::DagLimits::default(), true);
        let dag = dag.unwrap_or_else(|e| panic!("{:#}", anyhow::Error::from(e)));
        assert_eq!(dag.nodes.len(), 2);
        assert_eq!(dag.crc32(), s.node_ids_crc32());
        assert_eq!(
            dag.nodes[1].dependencies(),
            [s.node_id(price).unwrap_or("")]
        );
        assert_eq!(s.node_id(fast).map(str::len), Some(71));
    }

    #[test]
    fn the_code_identity_is_part_of_the_node_id() {
        let mut a = Strategy::new("a");
        let pa = a
            .stream_input("price")
            .build()
            .unwrap_or_else(|e| panic!("{:#}", anyhow::Error::from(e)));
        let one = sma(&mut a, pa, 5, "1");
        let two = sma(&mut a, pa, 5, "2");
        assert_ne!(a.node_id(one), a.node_id(two));
        let mut b = Strategy::new("b");
        let pb = b
            .stream_input("price")
            .build()
            .unwrap_or_else(|e| panic!("{:#}", anyhow::Error::from(e)));
        let again = sma(&mut b, pb, 5, "1");
        assert_eq!(a.node_id(one), b.node_id(again));
        assert_eq!(a.node_id(pa), b.node_id(pb));
    }

    #[test]
    fn bad_definitions_are_refused_with_the_reason() {
        let mut a = Strategy::new("a");
        let price = a
            .stream_input("price")
            .build()
            .unwrap_or_else(|e| panic!("{:#}", anyhow::Error::from(e)));
        let mut b = Strategy::new("b");
        let foreign = b.node("SMA").input(price).code("sma", "1").compute(|_| 1.0);
        assert!(matches!(foreign, Err(DefineError::ForeignInput { .. })));
        let zero = a
            .node("SMA")
            .input(price)
            .period(0)
            .code("sma", "1")
            .compute(|_| 1.0);
        assert!(matches!(zero, Err(DefineError::ZeroPeriod { .. })));
        let orphan = a.node("SMA").code("sma", "1").compute(|_| 1.0);
        assert!(matches!(orphan, Err(DefineError::NoInputs { .. })));
        let again = a.stream_input("price").build();
        assert!(matches!(again, Err(DefineError::Duplicate { .. })));
        let untagged = a.tag_query("all").code("q", "1").compute(|_| 1.0);
        assert!(matches!(untagged, Err(DefineError::NoTags { .. })));
        let huge = a.stream_input("huge").period(usize::MAX).build();
        assert!(matches!(huge, Err(DefineError::PeriodTooLong { .. })));
        let slow = a.stream_input("slow").interval(i64::MAX).build();
        assert!(matches!(slow, Err(DefineError::BadInterval { .. })));
    }
}
