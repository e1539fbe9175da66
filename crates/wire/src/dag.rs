//! Parsing and checking a whole DAG document: schema version, nodes, sentinel, dependencies,
//! topological order and the version label its topics carry.

use crate::canonical::Sorted;
use crate::context::ComputeContext;
use crate::error::DagError;
use crate::fast::{DocField, Field, FieldSource, NodeField, Seen};
use crate::lenient::{Int, ObjectFold, ObjectList, Text, TextList};
use crate::node::{Node, RawNode, crc32_chain};
use crate::queue_name::QueueNamespace;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;

/// Size limits a parser enforces before doing any real work.
#[derive(Debug, Clone, Copy)]
pub struct DagLimits {
    pub max_bytes: usize,
    pub max_nodes: usize,
}

impl Default for DagLimits {
    fn default() -> Self {
        DagLimits {
            max_bytes: 16 * 1024 * 1024,
            max_nodes: 50_000,
        }
    }
}

/// The version sentinel a strategy's DAG may carry. It is not a compute node.
#[derive(Debug, Clone, PartialEq)]
pub struct Sentinel {
    pub node_id: String,
    pub version: Option<String>,
    pub weight: Option<f64>,
}

/// A parsed, checked DAG document.
#[derive(Debug, Clone)]
pub struct Dag {
    /// Compute nodes in submission order.
    pub nodes: Vec<Node>,
    pub sentinel: Option<Sentinel>,
    pub meta: Map<String, Value>,
    top_level: Map<String, Value>,
    /// For each node, the positions in `nodes` of its dependencies.
    dependency_positions: Vec<Vec<usize>>,
}

impl Dag {
    /// CRC32 over the compute nodes' ids in submission order (our documented order).
    pub fn crc32(&self) -> u32 {
        crc32_chain(self.nodes.iter().map(|n| n.node_id.as_str()))
    }

    /// The version label topics carry: the sentinel's, else the document's, else `v1`;
    /// characters other than alphanumerics, `-`, `_` and `.` become `-`.
    pub fn version(&self) -> String {
        let pick = |map: &Map<String, Value>, keys: &[&str]| {
            keys.iter().find_map(|k| match map.get(*k) {
                Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            })
        };
        let keys = ["version", "strategy_version", "build_version"];
        let raw = self
            .sentinel
            .as_ref()
            .and_then(|s| s.version.clone())
            .or_else(|| pick(&self.top_level, &keys))
            .or_else(|| pick(&self.meta, &keys))
            .unwrap_or_else(|| "v1".to_owned());
        raw.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    }

    /// The compute context the document itself declares (`compute_context` at the top level or in
    /// `meta`, plus `meta.execution_domain` and `meta.dataset_fingerprint`).
    pub fn declared_context(&self) -> ComputeContext {
        let section = self
            .top_level
            .get("compute_context")
            .or_else(|| self.meta.get("compute_context"))
            .and_then(Value::as_object);
        let get = |key: &str| -> String {
            section
                .and_then(|s| s.get(key))
                .or_else(|| self.meta.get(key))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        ComputeContext {
            world_id: get("world_id"),
            execution_domain: get("execution_domain"),
            as_of: get("as_of"),
            partition: get("partition"),
            dataset_fingerprint: get("dataset_fingerprint"),
        }
    }

    /// The CRC32 the document says its node ids have (`node_ids_crc32` at the top level or in
    /// `meta`), when it says one.
    pub fn declared_crc32(&self) -> Option<u32> {
        self.top_level
            .get("node_ids_crc32")
            .or_else(|| self.meta.get("node_ids_crc32"))
            .and_then(Value::as_u64)
            .and_then(|crc| u32::try_from(crc).ok())
    }

    /// Recomputes every node id and checks it against the one sent.
    pub fn verify_node_ids(&self) -> Result<(), DagError> {
        self.nodes.iter().try_for_each(Node::verify_id)
    }

    /// Checks a declared CRC32 against the one computed in our documented order.
    pub fn verify_crc32(&self) -> Result<(), DagError> {
        match self.declared_crc32() {
            Some(client) if client != self.crc32() => Err(DagError::ChecksumMismatch {
                client,
                server: self.crc32(),
            }),
            _ => Ok(()),
        }
    }

    /// `meta.topic_namespace`, when the document sets one.
    pub fn declared_namespace(&self) -> Option<QueueNamespace> {
        match self.meta.get("topic_namespace")? {
            Value::String(prefix) if !prefix.is_empty() => {
                Some(QueueNamespace::Prefix(prefix.clone()))
            }
            Value::Object(map) => {
                let world = map.get("world").and_then(Value::as_str)?.to_owned();
                let domain = map
                    .get("domain")
                    .and_then(Value::as_str)
                    .unwrap_or("backtest")
                    .to_owned();
                Some(QueueNamespace::WorldDomain { world, domain })
            }
            _ => None,
        }
    }
}

/// The document as it arrives; the fields the DAG Manager reads (`fast::DocField`), the rest
/// ignored. `N` is its nodes as read (`()` once they are taken out).
#[derive(Debug, Default)]
pub(crate) struct RawDag<N> {
    pub(crate) schema_version: Option<Value>,
    pub(crate) nodes: N,
    pub(crate) meta: Option<Value>,
    pub(crate) compute_context: Option<Value>,
    pub(crate) version: Option<Value>,
    pub(crate) strategy_version: Option<Value>,
    pub(crate) build_version: Option<Value>,
    pub(crate) node_ids_crc32: Option<Value>,
}

impl<N> RawDag<N> {
    /// The nodes, and the rest of the document without them.
    pub(crate) fn split(self) -> (N, RawDag<()>) {
        let RawDag {
            schema_version,
            nodes,
            meta,
            compute_context,
            version,
            strategy_version,
            build_version,
            node_ids_crc32,
        } = self;
        let rest = RawDag {
            schema_version,
            nodes: (),
            meta,
            compute_context,
            version,
            strategy_version,
            build_version,
            node_ids_crc32,
        };
        (nodes, rest)
    }
}

/// A struct the serde reader reads field by field, as the fast reader does: what a derived
/// `Deserialize` would do, from the fields `fast::bind` declares.
trait ReadByField<'a>: Default {
    type Field: Field;
    /// What the document's `nodes` is read into (`()` for a struct without nodes).
    type Nodes: Default;
    /// The struct's name, as serde's messages give it.
    const NAME: &'static str;
    fn read<S: FieldSource<'a, Nodes = Self::Nodes>>(
        &mut self,
        field: Self::Field,
        seen: &mut Seen,
        source: &mut S,
    ) -> Result<(), S::Error>;
}

impl<'a> ReadByField<'a> for RawNode<'a> {
    type Field = NodeField;
    type Nodes = ();
    const NAME: &'static str = "RawNode";
    fn read<S: FieldSource<'a, Nodes = ()>>(
        &mut self,
        field: NodeField,
        seen: &mut Seen,
        source: &mut S,
    ) -> Result<(), S::Error> {
        self.read_field(field, seen, source)
    }
}

impl<'a, N: Default> ReadByField<'a> for RawDag<N> {
    type Field = DocField;
    type Nodes = N;
    const NAME: &'static str = "RawDag";
    fn read<S: FieldSource<'a, Nodes = N>>(
        &mut self,
        field: DocField,
        seen: &mut Seen,
        source: &mut S,
    ) -> Result<(), S::Error> {
        self.read_field(field, seen, source)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawNode<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_by_field(deserializer)
    }
}

impl<'de, N: Deserialize<'de> + Default> Deserialize<'de> for RawDag<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_by_field(deserializer)
    }
}

fn deserialize_by_field<'de: 'a, 'a, T, D>(deserializer: D) -> Result<T, D::Error>
where
    T: ReadByField<'a>,
    T::Nodes: Deserialize<'de>,
    D: Deserializer<'de>,
{
    let visitor = FieldsVisitor::<'a, T>(PhantomData);
    deserializer.deserialize_struct(T::NAME, <T::Field as Field>::KEYS, visitor)
}

struct FieldsVisitor<'a, T>(PhantomData<(&'a (), T)>);

impl<'de: 'a, 'a, T> Visitor<'de> for FieldsVisitor<'a, T>
where
    T: ReadByField<'a>,
    T::Nodes: Deserialize<'de>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "struct {}", T::NAME)
    }

    /// Every entry in order: a known field read once, any other key's value skipped.
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        let (mut read, mut seen) = (T::default(), Seen::default());
        let mut values = MapValues(map, PhantomData);
        while let Some(Key(field)) = values.0.next_key::<Key<T::Field>>()? {
            match field {
                Some(field) => read.read(field, &mut seen, &mut values)?,
                None => {
                    values.0.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(read)
    }

    /// Items by position, one per field; missing ones leave their field at its default.
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        let (mut read, mut seen) = (T::default(), Seen::default());
        let mut values = SeqValues(seq, PhantomData);
        for &field in <T::Field as Field>::ALL {
            read.read(field, &mut seen, &mut values)?;
        }
        Ok(read)
    }
}

/// An object's key: the field it names, if any.
struct Key<F>(Option<F>);

impl<'de, F: Field> Deserialize<'de> for Key<F> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor<F>(PhantomData<F>);
        impl<F: Field> Visitor<'_> for KeyVisitor<F> {
            type Value = Key<F>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("field identifier")
            }
            fn visit_u64<E: de::Error>(self, index: u64) -> Result<Key<F>, E> {
                let field = usize::try_from(index).ok().and_then(|i| F::ALL.get(i));
                Ok(Key(field.copied()))
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key<F>, E> {
                Ok(Key(F::of(key)))
            }
            fn visit_bytes<E: de::Error>(self, key: &[u8]) -> Result<Key<F>, E> {
                Ok(Key(std::str::from_utf8(key).ok().and_then(F::of)))
            }
        }
        deserializer.deserialize_identifier(KeyVisitor(PhantomData))
    }
}

/// Field values as serde reads them from a map's entries, the document's nodes as `N`.
struct MapValues<'de, A, N>(A, PhantomData<(&'de (), N)>);

impl<'de: 'a, 'a, A: MapAccess<'de>, N: Deserialize<'de>> FieldSource<'a> for MapValues<'de, A, N> {
    type Error = A::Error;
    type Nodes = N;
    fn text(&mut self) -> Result<Text<'a>, A::Error> {
        self.0.next_value()
    }
    fn int(&mut self) -> Result<Int, A::Error> {
        self.0.next_value()
    }
    fn text_list(&mut self) -> Result<TextList<'a>, A::Error> {
        self.0.next_value()
    }
    fn params(&mut self) -> Result<Option<Sorted<'a>>, A::Error> {
        self.0.next_value()
    }
    fn value(&mut self) -> Result<Option<Value>, A::Error> {
        self.0.next_value()
    }
    fn nodes(&mut self) -> Result<N, A::Error> {
        self.0.next_value()
    }
    fn duplicate(&self, key: &'static str) -> A::Error {
        de::Error::duplicate_field(key)
    }
}

/// Field values as serde reads them from a list's items by position, the document's nodes as
/// `N`: a missing item (the list ended) leaves its field at its default.
struct SeqValues<'de, A, N>(A, PhantomData<(&'de (), N)>);

impl<'de: 'a, 'a, A: SeqAccess<'de>, N: Deserialize<'de> + Default> FieldSource<'a>
    for SeqValues<'de, A, N>
{
    type Error = A::Error;
    type Nodes = N;
    fn text(&mut self) -> Result<Text<'a>, A::Error> {
        Ok(self.0.next_element()?.unwrap_or_default())
    }
    fn int(&mut self) -> Result<Int, A::Error> {
        Ok(self.0.next_element()?.unwrap_or_default())
    }
    fn text_list(&mut self) -> Result<TextList<'a>, A::Error> {
        Ok(self.0.next_element()?.unwrap_or_default())
    }
    fn params(&mut self) -> Result<Option<Sorted<'a>>, A::Error> {
        Ok(self.0.next_element()?.unwrap_or_default())
    }
    fn value(&mut self) -> Result<Option<Value>, A::Error> {
        Ok(self.0.next_element()?.unwrap_or_default())
    }
    fn nodes(&mut self) -> Result<N, A::Error> {
        Ok(self.0.next_element()?.unwrap_or_default())
    }
    /// Never called: each field is read once.
    fn duplicate(&self, key: &'static str) -> A::Error {
        de::Error::duplicate_field(key)
    }
}

/// The nodes of a document, checked one by one as they are read. The first bad node is kept
/// and the rest are only read, so that a syntax error anywhere still wins over a bad node.
#[derive(Debug, Default)]
pub(crate) struct ReadNodes<'a> {
    nodes: Vec<Node>,
    sentinel: Option<Sentinel>,
    /// Items read, sentinels and non-objects included.
    count: usize,
    first_error: Option<DagError>,
    _document: std::marker::PhantomData<&'a str>,
}

#[cfg(test)]
impl ReadNodes<'_> {
    pub(crate) fn into_nodes(self) -> Vec<Node> {
        self.nodes
    }
}

impl<'de: 'a, 'a> ObjectFold<'de> for ReadNodes<'a> {
    type Item = RawNode<'a>;

    fn take(&mut self, item: Option<RawNode<'a>>) {
        let position = self.count;
        self.count += 1;
        if self.first_error.is_some() {
            return;
        }
        let Some(raw) = item else {
            self.first_error = Some(DagError::SchemaInvalid {
                reason: format!("nodes[{position}] is not an object"),
            });
            return;
        };
        if raw.node_type.as_str() == Some("VersionSentinel") {
            self.sentinel = Some(parse_sentinel(&raw, position));
            return;
        }
        match Node::from_raw(raw, position) {
            Ok(node) => self.nodes.push(node),
            Err(error) => self.first_error = Some(error),
        }
    }
}

/// Parses a DAG document, enforcing the limits, then checks it: node fields, node ids (when
/// `verify_ids`), unique ids, dependencies present. Cycles are found by [`topological_order`].
pub fn parse_dag(text: &str, limits: DagLimits, verify_ids: bool) -> Result<Dag, DagError> {
    if text.len() > limits.max_bytes {
        return Err(DagError::TooLarge {
            what: "dag_json size in bytes",
            actual: text.len(),
            limit: limits.max_bytes,
        });
    }
    let (read, raw) = match crate::fast::read(text) {
        Some(read) => read,
        None => read_with_serde(text)?,
    };
    assemble(raw, read, limits, verify_ids)
}

/// [`parse_dag`] with the serde reader alone, to hold the fast reader to it in tests.
#[cfg(test)]
pub(crate) fn parse_dag_with_serde(
    text: &str,
    limits: DagLimits,
    verify_ids: bool,
) -> Result<Dag, DagError> {
    let (read, raw) = read_with_serde(text)?;
    assemble(raw, read, limits, verify_ids)
}

/// Reads a document with serde, which decides on whatever the fast reader leaves to it: the
/// nodes (`None` when `nodes` is missing or not a list) and the rest of the document.
pub(crate) fn read_with_serde(text: &str) -> Result<(Option<ReadNodes<'_>>, RawDag<()>), DagError> {
    let raw: RawDag<ObjectList<ReadNodes<'_>>> =
        serde_json::from_str(text).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => DagError::SchemaInvalid {
                reason: format!("the DAG document is not a JSON object: {e}"),
            },
            _ => DagError::InvalidJson {
                reason: e.to_string(),
            },
        })?;
    // serde would read a list into the document's fields by position.
    if text.trim_start().starts_with('[') {
        return Err(DagError::SchemaInvalid {
            reason: "the DAG document is not a JSON object: it is a list".into(),
        });
    }
    let (nodes, rest) = raw.split();
    let read = match nodes {
        ObjectList::List(read) => Some(read),
        ObjectList::Missing | ObjectList::Invalid => None,
    };
    Ok((read, rest))
}

/// Checks what was read of a document and builds the DAG: schema version, node count, ids (when
/// `verify_ids`), the first bad node, unique ids, dependencies present.
fn assemble(
    raw: RawDag<()>,
    read: Option<ReadNodes<'_>>,
    limits: DagLimits,
    verify_ids: bool,
) -> Result<Dag, DagError> {
    match &raw.schema_version {
        None => {}
        Some(Value::String(v)) if matches!(v.as_str(), "v1" | "1" | "1.0") => {}
        Some(Value::Number(n)) if n.as_f64() == Some(1.0) => {}
        Some(other) => {
            return Err(DagError::SchemaInvalid {
                reason: format!("schema_version {other} is not supported (expected \"v1\")"),
            });
        }
    }
    let Some(read) = read else {
        return Err(DagError::SchemaInvalid {
            reason: "field `nodes` is missing or not a list".into(),
        });
    };
    if read.count > limits.max_nodes {
        return Err(DagError::TooLarge {
            what: "node count",
            actual: read.count,
            limit: limits.max_nodes,
        });
    }
    let meta = match raw.meta {
        Some(Value::Object(meta)) => meta,
        _ => Map::new(),
    };
    let mut top_level = Map::new();
    for (key, value) in [
        ("compute_context", raw.compute_context),
        ("version", raw.version),
        ("strategy_version", raw.strategy_version),
        ("build_version", raw.build_version),
        ("node_ids_crc32", raw.node_ids_crc32),
    ] {
        if let Some(value) = value {
            top_level.insert(key.to_owned(), value);
        }
    }
    // The nodes read hold those before the first bad one, so this reports whichever comes first.
    if verify_ids {
        for node in &read.nodes {
            node.verify_id()?;
        }
    }
    if let Some(error) = read.first_error {
        return Err(error);
    }
    let (nodes, sentinel) = (read.nodes, read.sentinel);

    let mut index: foldhash::HashMap<&str, usize> =
        foldhash::HashMap::with_capacity_and_hasher(nodes.len(), Default::default());
    for (i, node) in nodes.iter().enumerate() {
        if index.insert(node.node_id.as_str(), i).is_some() {
            return Err(DagError::DuplicateNode {
                node: node.node_id.clone(),
            });
        }
    }
    let mut dependency_positions = Vec::with_capacity(nodes.len());
    for node in &nodes {
        let mut positions = Vec::with_capacity(node.dependencies().len());
        for dependency in node.dependencies() {
            match index.get(dependency.as_str()) {
                Some(&position) => positions.push(position),
                None => {
                    return Err(DagError::MissingDependency {
                        node: node.node_id.clone(),
                        dependency: dependency.clone(),
                    });
                }
            }
        }
        dependency_positions.push(positions);
    }
    Ok(Dag {
        nodes,
        sentinel,
        meta,
        top_level,
        dependency_positions,
    })
}

fn parse_sentinel(raw: &RawNode<'_>, position: usize) -> Sentinel {
    let text = |value: &Option<Value>| match value {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    Sentinel {
        node_id: raw
            .node_id
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("nodes[{position}]")),
        version: text(&raw.version)
            .or_else(|| text(&raw.strategy_version))
            .or_else(|| text(&raw.build_version)),
        weight: [&raw.traffic_weight, &raw.sentinel_weight, &raw.weight]
            .into_iter()
            .find_map(|w| w.as_ref().and_then(Value::as_f64))
            .map(|w| w.clamp(0.0, 1.0)),
    }
}

/// Indices of `dag.nodes` in topological order (dependencies first, ties in submission order).
/// A cycle is an error naming the nodes on it.
pub fn topological_order(dag: &Dag) -> Result<Vec<usize>, DagError> {
    let count = dag.nodes.len();
    let mut indegree = vec![0usize; count];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); count];
    for (i, positions) in dag.dependency_positions.iter().enumerate() {
        for &d in positions {
            indegree[i] += 1;
            dependents[d].push(i);
        }
    }
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..count)
        .filter(|&i| indegree[i] == 0)
        .map(std::cmp::Reverse)
        .collect();
    let mut order = Vec::with_capacity(count);
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        order.push(i);
        for &next in &dependents[i] {
            indegree[next] -= 1;
            if indegree[next] == 0 {
                ready.push(std::cmp::Reverse(next));
            }
        }
    }
    if order.len() == count {
        return Ok(order);
    }
    Err(DagError::Cycle {
        nodes: find_cycle(dag, &indegree),
    })
}

/// Walks dependencies among the nodes left with a non-zero in-degree until one repeats.
fn find_cycle(dag: &Dag, indegree: &[usize]) -> Vec<String> {
    let Some(start) = (0..indegree.len()).find(|&i| indegree[i] > 0) else {
        return Vec::new();
    };
    let mut path = vec![start];
    let mut seen_at: HashMap<usize, usize> = HashMap::from([(start, 0)]);
    let mut current = start;
    loop {
        let next = dag.dependency_positions[current]
            .iter()
            .copied()
            .find(|&d| indegree[d] > 0);
        let Some(next) = next else {
            return path.iter().map(|&i| dag.nodes[i].node_id.clone()).collect();
        };
        if let Some(&at) = seen_at.get(&next) {
            return path[at..]
                .iter()
                .map(|&i| dag.nodes[i].node_id.clone())
                .collect();
        }
        seen_at.insert(next, path.len());
        path.push(next);
        current = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list is not a DAG document, though serde would read one into the fields by position.
    #[test]
    fn a_top_level_list_is_refused_as_not_an_object() {
        for text in [
            r#"["v1",[{"node_type":"SMA","node_id":"n"}]]"#,
            "[]",
            " [\"v1\"]",
        ] {
            match parse_dag(text, DagLimits::default(), false) {
                Err(DagError::SchemaInvalid { reason }) => {
                    assert!(reason.contains("not a JSON object"), "{text}: {reason}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // A list that is not even JSON is still a JSON error.
        assert!(matches!(
            parse_dag("[1,", DagLimits::default(), false),
            Err(DagError::InvalidJson { .. })
        ));
    }
}
