//! The DAG binding: the fields a DAG document and a node have and what each is read into, for
//! both readers (this fast one and the serde one in `dag.rs`), and the fast reader's documents.

use super::scan::Reader;
use crate::canonical::Sorted;
use crate::dag::{RawDag, ReadNodes};
use crate::lenient::{Int, ObjectFold, Text, TextList};
use crate::node::RawNode;
use serde_json::Value;

/// The fields of a struct both readers read.
pub(crate) trait Field: Sized + Copy + 'static {
    /// Every field, in the struct's order (serde reads a list into the fields by position).
    const ALL: &'static [Self];
    /// Every field's key, in the same order.
    const KEYS: &'static [&'static str];
    /// The field `key` names, if any.
    fn of(key: &str) -> Option<Self>;
}

/// What to do with a field named by a key (see `on_key`).
pub(crate) trait OnField<F> {
    type Out;
    fn on(&mut self, field: F) -> Self::Out;
}

/// Declares the fields of a struct both readers read: an enum of them, in the struct's order
/// (serde reads a list into the fields by position), with their keys.
macro_rules! fields {
    ($(#[$doc:meta])* $name:ident { $($field:ident = $key:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum $name {
            $($field,)*
        }

        impl Field for $name {
            const ALL: &'static [$name] = &[$($name::$field,)*];
            const KEYS: &'static [&'static str] = &[$($key,)*];

            fn of(key: &str) -> Option<$name> {
                match key {
                    $($key => Some($name::$field),)*
                    _ => None,
                }
            }
        }

        impl $name {
            /// Calls `on` with the field `key` names, a constant in each arm of one match, so
            /// that `on` (inlined) folds to that field's code: the fast reader's dispatch costs
            /// no more than a hand-written match. `None` for a key that names no field.
            #[inline(always)]
            pub(crate) fn on_key<O: OnField<$name>>(key: &str, on: &mut O) -> Option<O::Out> {
                match key {
                    $($key => Some(on.on($name::$field)),)*
                    _ => None,
                }
            }

            pub(crate) const fn key(self) -> &'static str {
                match self {
                    $($name::$field => $key,)*
                }
            }
        }
    };
}

fields! {
    /// A field of a node object ([`RawNode`]).
    NodeField {
        NodeType = "node_type",
        NodeId = "node_id",
        Interval = "interval",
        Period = "period",
        Params = "params",
        Config = "config",
        Inputs = "inputs",
        Dependencies = "dependencies",
        SchemaCompatId = "schema_compat_id",
        SchemaId = "schema_id",
        CodeHash = "code_hash",
        SchemaHash = "schema_hash",
        ConfigHash = "config_hash",
        Name = "name",
        Tags = "tags",
        QueryTags = "query_tags",
        MatchMode = "match_mode",
        Version = "version",
        StrategyVersion = "strategy_version",
        BuildVersion = "build_version",
        TrafficWeight = "traffic_weight",
        SentinelWeight = "sentinel_weight",
        Weight = "weight",
    }
}

fields! {
    /// A field of the document's top-level object ([`RawDag`]).
    DocField {
        SchemaVersion = "schema_version",
        Nodes = "nodes",
        Meta = "meta",
        ComputeContext = "compute_context",
        Version = "version",
        StrategyVersion = "strategy_version",
        BuildVersion = "build_version",
        NodeIdsCrc32 = "node_ids_crc32",
    }
}

// `Seen` holds one bit per field.
const _: () = assert!(NodeField::ALL.len() <= 32 && DocField::ALL.len() <= 32);

/// Which of a struct's fields were read, so that a repeated one (an error to serde) is noticed.
#[derive(Default)]
pub(crate) struct Seen(u32);

impl Seen {
    /// Whether field `bit` is read for the first time (and notes it read).
    fn first(&mut self, bit: u32) -> bool {
        let mask = 1 << bit;
        let first = self.0 & mask == 0;
        self.0 |= mask;
        first
    }
}

/// Where a field's value comes from: the fast reader (which gives up with `()`) or serde. Each
/// method reads one value as the field's type.
pub(crate) trait FieldSource<'a> {
    type Error;
    /// What the document's `nodes` is read into.
    type Nodes;
    fn text(&mut self) -> Result<Text<'a>, Self::Error>;
    fn int(&mut self) -> Result<Int, Self::Error>;
    fn text_list(&mut self) -> Result<TextList<'a>, Self::Error>;
    /// Node params (or config): `null` is `None`.
    fn params(&mut self) -> Result<Option<Sorted<'a>>, Self::Error>;
    /// Any value: `null` is `None`.
    fn value(&mut self) -> Result<Option<Value>, Self::Error>;
    fn nodes(&mut self) -> Result<Self::Nodes, Self::Error>;
    /// The error for a field given twice.
    fn duplicate(&self, key: &'static str) -> Self::Error;
}

impl<'a> RawNode<'a> {
    /// Reads `field` from `source`, refusing it the second time (see `seen`). Always inlined,
    /// so that a constant `field` folds to its own code (see `on_key`).
    #[inline(always)]
    pub(crate) fn read_field<S: FieldSource<'a>>(
        &mut self,
        field: NodeField,
        seen: &mut Seen,
        source: &mut S,
    ) -> Result<(), S::Error> {
        if !seen.first(field as u32) {
            return Err(source.duplicate(field.key()));
        }
        match field {
            NodeField::NodeType => self.node_type = source.text()?,
            NodeField::NodeId => self.node_id = source.text()?,
            NodeField::Interval => self.interval = source.int()?,
            NodeField::Period => self.period = source.int()?,
            NodeField::Params => self.params = source.params()?,
            NodeField::Config => self.config = source.params()?,
            NodeField::Inputs => self.inputs = source.text_list()?,
            NodeField::Dependencies => self.dependencies = source.text_list()?,
            NodeField::SchemaCompatId => self.schema_compat_id = source.text()?,
            NodeField::SchemaId => self.schema_id = source.text()?,
            NodeField::CodeHash => self.code_hash = source.text()?,
            NodeField::SchemaHash => self.schema_hash = source.text()?,
            NodeField::ConfigHash => self.config_hash = source.text()?,
            NodeField::Name => self.name = source.text()?,
            NodeField::Tags => self.tags = source.text_list()?,
            NodeField::QueryTags => self.query_tags = source.value()?,
            NodeField::MatchMode => self.match_mode = source.value()?,
            NodeField::Version => self.version = source.value()?,
            NodeField::StrategyVersion => self.strategy_version = source.value()?,
            NodeField::BuildVersion => self.build_version = source.value()?,
            NodeField::TrafficWeight => self.traffic_weight = source.value()?,
            NodeField::SentinelWeight => self.sentinel_weight = source.value()?,
            NodeField::Weight => self.weight = source.value()?,
        }
        Ok(())
    }
}

impl<N> RawDag<N> {
    /// Reads `field` from `source`, refusing it the second time (see `seen`). Always inlined,
    /// so that a constant `field` folds to its own code (see `on_key`).
    #[inline(always)]
    pub(crate) fn read_field<'a, S: FieldSource<'a, Nodes = N>>(
        &mut self,
        field: DocField,
        seen: &mut Seen,
        source: &mut S,
    ) -> Result<(), S::Error> {
        if !seen.first(field as u32) {
            return Err(source.duplicate(field.key()));
        }
        match field {
            DocField::SchemaVersion => self.schema_version = source.value()?,
            DocField::Nodes => self.nodes = source.nodes()?,
            DocField::Meta => self.meta = source.value()?,
            DocField::ComputeContext => self.compute_context = source.value()?,
            DocField::Version => self.version = source.value()?,
            DocField::StrategyVersion => self.strategy_version = source.value()?,
            DocField::BuildVersion => self.build_version = source.value()?,
            DocField::NodeIdsCrc32 => self.node_ids_crc32 = source.value()?,
        }
        Ok(())
    }
}

/// Reads a whole document: its nodes (`None` when `nodes` is missing or not a list) and the rest.
pub(crate) fn read(text: &str) -> Option<(Option<ReadNodes<'_>>, RawDag<()>)> {
    let mut reader = Reader::new(text);
    reader.ws();
    let read = reader.document()?;
    reader.ws();
    reader.at_end().then_some(read)
}

impl<'a> FieldSource<'a> for Reader<'a> {
    type Error = ();
    type Nodes = Option<ReadNodes<'a>>;

    #[inline]
    fn text(&mut self) -> Result<Text<'a>, ()> {
        self.lenient_text().ok_or(())
    }

    #[inline]
    fn int(&mut self) -> Result<Int, ()> {
        self.lenient_int().ok_or(())
    }

    #[inline]
    fn text_list(&mut self) -> Result<TextList<'a>, ()> {
        self.lenient_text_list().ok_or(())
    }

    #[inline]
    fn params(&mut self) -> Result<Option<Sorted<'a>>, ()> {
        self.optional_params().ok_or(())
    }

    #[inline]
    fn value(&mut self) -> Result<Option<Value>, ()> {
        self.optional_value().ok_or(())
    }

    #[inline]
    fn nodes(&mut self) -> Result<Option<ReadNodes<'a>>, ()> {
        self.node_list().ok_or(())
    }

    fn duplicate(&self, _: &'static str) {}
}

impl<'a> Reader<'a> {
    /// A lenient string field: a string, `null`, or anything else as `Invalid`.
    fn lenient_text(&mut self) -> Option<Text<'a>> {
        self.ws();
        Some(match self.peek()? {
            b'"' => Text::Str(self.string()?),
            b'n' => self.literal(b"null").map(|()| Text::Null)?,
            _ => self.skip(0).map(|()| Text::Invalid)?,
        })
    }

    /// A lenient integer field (see `lenient::IntVisitor`).
    fn lenient_int(&mut self) -> Option<Int> {
        self.ws();
        Some(match self.peek()? {
            b'-' | b'0'..=b'9' => {
                let number = self.number()?;
                if let Some(u) = number.as_u64() {
                    i64::try_from(u).map_or(Int::Invalid, Int::Value)
                } else if let Some(i) = number.as_i64() {
                    Int::Value(i)
                } else {
                    Int::from_f64(number.as_f64()?)
                }
            }
            b'"' => Int::from_text(&self.string()?),
            b'n' => self.literal(b"null").map(|()| Int::Null)?,
            _ => self.skip(0).map(|()| Int::Invalid)?,
        })
    }

    /// A lenient list of strings (see `lenient::TextListVisitor`).
    fn lenient_text_list(&mut self) -> Option<TextList<'a>> {
        self.ws();
        Some(match self.peek()? {
            b'[' => {
                let mut items = Vec::with_capacity(2);
                let mut valid = true;
                self.list(|reader, _| {
                    match reader.lenient_text()? {
                        Text::Str(item) if valid => items.push(item),
                        _ => valid = false,
                    }
                    Some(())
                })?;
                if valid {
                    TextList::List(items)
                } else {
                    TextList::Invalid
                }
            }
            b'n' => self.literal(b"null").map(|()| TextList::Null)?,
            _ => self.skip(0).map(|()| TextList::Invalid)?,
        })
    }

    /// One node object's fields, as the serde reader reads them.
    fn node(&mut self) -> Option<RawNode<'a>> {
        let mut raw = RawNode::default();
        let mut seen = Seen::default();
        self.object(|reader, key, _| {
            let mut read = FieldRead {
                into: &mut raw,
                seen: &mut seen,
                reader,
            };
            match NodeField::on_key(&key, &mut read) {
                Some(read) => read,
                None => reader.skip(1),
            }
        })?;
        Some(raw)
    }

    /// The `nodes` list, each item checked as it is read; `None` inside when it is not a list.
    fn node_list(&mut self) -> Option<Option<ReadNodes<'a>>> {
        self.ws();
        if self.peek()? != b'[' {
            self.skip(0)?;
            return Some(None);
        }
        let mut read = ReadNodes::default();
        self.list(|reader, _| {
            reader.ws();
            if reader.peek()? == b'{' {
                read.take(Some(reader.node()?));
            } else {
                reader.skip(1)?;
                read.take(None);
            }
            Some(())
        })?;
        Some(Some(read))
    }

    /// The top-level object, as the serde reader reads it.
    fn document(&mut self) -> Option<(Option<ReadNodes<'a>>, RawDag<()>)> {
        if self.peek()? != b'{' {
            return None;
        }
        let mut raw = RawDag::<Option<ReadNodes<'a>>>::default();
        let mut seen = Seen::default();
        self.object(|reader, key, _| {
            let mut read = FieldRead {
                into: &mut raw,
                seen: &mut seen,
                reader,
            };
            match DocField::on_key(&key, &mut read) {
                Some(read) => read,
                None => reader.skip(1),
            }
        })?;
        Some(raw.split())
    }
}

/// The fast reader's action on a field: read it into `into`.
struct FieldRead<'r, 'a, T> {
    into: &'r mut T,
    seen: &'r mut Seen,
    reader: &'r mut Reader<'a>,
}

impl<'a> OnField<NodeField> for FieldRead<'_, 'a, RawNode<'a>> {
    type Out = Option<()>;
    #[inline(always)]
    fn on(&mut self, field: NodeField) -> Option<()> {
        self.into.read_field(field, self.seen, self.reader).ok()
    }
}

impl<'a> OnField<DocField> for FieldRead<'_, 'a, RawDag<Option<ReadNodes<'a>>>> {
    type Out = Option<()>;
    #[inline(always)]
    fn on(&mut self, field: DocField) -> Option<()> {
        self.into.read_field(field, self.seen, self.reader).ok()
    }
}
