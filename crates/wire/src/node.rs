//! One node of a DAG document, its seven identity fields and its node id (wire.md section 2).

use crate::HASH_PREFIX;
use crate::canonical::{Sorted, write_plain, write_string};
use crate::error::DagError;
use crate::lenient::{Int, Text, TextList};
use serde_json::Value;

/// The seven fields a node id is computed from, already in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFields {
    pub node_type: String,
    pub interval: i64,
    pub period: i64,
    /// Canonical params JSON (or the canonical tag query for a `TagQueryNode`).
    pub params_blob: String,
    pub dependencies: Vec<String>,
    pub schema_compat_id: String,
    pub code_hash: String,
}

impl NodeFields {
    /// `blake3:` + hex BLAKE3 of the seven fields joined by `|` (dependencies sorted, joined by `,`).
    pub fn node_id(&self) -> String {
        format!("{HASH_PREFIX}{}", self.digest().to_hex())
    }

    /// The BLAKE3 digest the node id is the hex of.
    pub fn digest(&self) -> blake3::Hash {
        crate::hash_preimage(|preimage| self.write_preimage(preimage))
    }

    /// The bytes the id hashes: the seven fields joined by `|`.
    fn write_preimage(&self, out: &mut Vec<u8>) {
        let mut numbers = itoa::Buffer::new();
        out.extend_from_slice(self.node_type.as_bytes());
        out.push(b'|');
        out.extend_from_slice(numbers.format(self.interval).as_bytes());
        out.push(b'|');
        out.extend_from_slice(numbers.format(self.period).as_bytes());
        out.push(b'|');
        out.extend_from_slice(self.params_blob.as_bytes());
        out.push(b'|');
        if self.dependencies.is_sorted() {
            join_into(out, self.dependencies.iter().map(String::as_str));
        } else {
            let mut deps: Vec<&str> = self.dependencies.iter().map(String::as_str).collect();
            deps.sort_unstable();
            join_into(out, deps.into_iter());
        }
        out.push(b'|');
        out.extend_from_slice(self.schema_compat_id.trim().as_bytes());
        out.push(b'|');
        out.extend_from_slice(self.code_hash.as_bytes());
    }
}

fn join_into<'a>(out: &mut Vec<u8>, parts: impl Iterator<Item = &'a str>) {
    for (i, part) in parts.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(part.as_bytes());
    }
}

/// A node object as it arrives: every field lenient, strings borrowed from the document. Its
/// fields are `fast::NodeField`'s, read by both readers (`fast::bind`, `dag.rs`).
#[derive(Debug, Default)]
pub(crate) struct RawNode<'a> {
    pub(crate) node_type: Text<'a>,
    pub(crate) node_id: Text<'a>,
    pub(crate) interval: Int,
    pub(crate) period: Int,
    pub(crate) params: Option<Sorted<'a>>,
    pub(crate) config: Option<Sorted<'a>>,
    pub(crate) inputs: TextList<'a>,
    pub(crate) dependencies: TextList<'a>,
    pub(crate) schema_compat_id: Text<'a>,
    pub(crate) schema_id: Text<'a>,
    pub(crate) code_hash: Text<'a>,
    pub(crate) schema_hash: Text<'a>,
    pub(crate) config_hash: Text<'a>,
    pub(crate) name: Text<'a>,
    pub(crate) tags: TextList<'a>,
    pub(crate) query_tags: Option<Value>,
    pub(crate) match_mode: Option<Value>,
    pub(crate) version: Option<Value>,
    pub(crate) strategy_version: Option<Value>,
    pub(crate) build_version: Option<Value>,
    pub(crate) traffic_weight: Option<Value>,
    pub(crate) sentinel_weight: Option<Value>,
    pub(crate) weight: Option<Value>,
}

/// A parsed node of a DAG document.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The id the client sent.
    pub node_id: String,
    pub fields: NodeFields,
    pub schema_hash: String,
    pub config_hash: String,
    pub tags: Vec<String>,
    pub name: Option<String>,
}

impl Node {
    pub fn node_type(&self) -> &str {
        &self.fields.node_type
    }

    pub fn dependencies(&self) -> &[String] {
        &self.fields.dependencies
    }

    /// Checks a raw node's fields; `position` names it in errors when it has no id.
    pub(crate) fn from_raw(mut raw: RawNode<'_>, position: usize) -> Result<Node, DagError> {
        let (params, config) = (raw.params.take(), raw.config.take());
        let raw = &raw;
        // How errors name the node (built only for an error).
        let label = || match raw.node_id.as_str() {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => format!("nodes[{position}]"),
        };
        let node_type = match raw.node_type.as_str() {
            Some(t) if !t.is_empty() => t.to_owned(),
            _ => {
                return Err(DagError::NodeIdFields {
                    node: label(),
                    node_type: String::new(),
                    field: "node_type",
                });
            }
        };
        let field_error = |field: &'static str| DagError::NodeIdFields {
            node: label(),
            node_type: node_type.clone(),
            field,
        };
        let node_id = match raw.node_id.as_str() {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => return Err(field_error("node_id")),
        };
        let interval = raw
            .interval
            .or_zero()
            .ok_or_else(|| field_error("interval"))?;
        let period = raw.period.or_zero().ok_or_else(|| field_error("period"))?;
        let inputs = raw.inputs.or_empty().ok_or_else(|| field_error("inputs"))?;
        let dependencies = if inputs.is_empty() {
            raw.dependencies
                .or_empty()
                .ok_or_else(|| field_error("dependencies"))?
        } else {
            inputs
        };
        let schema_compat_id = schema_compat_id(raw, label)?;
        let code_hash = raw
            .code_hash
            .or_empty()
            .ok_or_else(|| field_error("code_hash"))?;
        let params_blob = if node_type == "TagQueryNode" {
            tag_query_blob(raw, params.as_ref()).map_err(field_error)?
        } else {
            match (params, config) {
                (Some(params), _) => params.into_canonical(),
                (None, Some(config)) => config.into_canonical(),
                (None, None) => "null".to_owned(),
            }
        };
        let tags = raw.tags.or_empty().ok_or_else(|| field_error("tags"))?;
        Ok(Node {
            node_id,
            fields: NodeFields {
                node_type,
                interval,
                period,
                params_blob,
                dependencies: dependencies.iter().map(|d| d.to_string()).collect(),
                schema_compat_id,
                code_hash: code_hash.to_owned(),
            },
            schema_hash: raw.schema_hash.or_empty().unwrap_or_default().to_owned(),
            config_hash: raw.config_hash.or_empty().unwrap_or_default().to_owned(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            name: raw.name.as_str().map(str::to_owned),
        })
    }

    /// Recomputes the node id from the fields and checks it against the one sent.
    pub fn verify_id(&self) -> Result<(), DagError> {
        let digest = self.fields.digest();
        // Ids are compared as strings, as the Python reference does: lower-case hex only.
        let claimed = self.node_id.strip_prefix(HASH_PREFIX);
        if claimed == Some(digest.to_hex().as_str()) {
            Ok(())
        } else {
            Err(DagError::NodeIdMismatch {
                node: self.node_id.clone(),
                node_type: self.fields.node_type.clone(),
                expected: format!("{HASH_PREFIX}{}", digest.to_hex()),
            })
        }
    }
}

/// Computes the node id of a node object as the Python reference does (its `node_id`, if any,
/// is ignored).
pub fn node_id_of(value: &Value) -> Result<String, DagError> {
    let mut value = value.clone();
    if let Value::Object(map) = &mut value {
        map.insert("node_id".into(), Value::String("?".into()));
    }
    let text = value.to_string();
    let raw: RawNode<'_> = serde_json::from_str(&text).map_err(|e| DagError::SchemaInvalid {
        reason: format!("the node is not an object: {e}"),
    })?;
    Ok(Node::from_raw(raw, 0)?.fields.node_id())
}

/// CRC-32 (zlib) chained over the UTF-8 of each id, in the order given, starting at 0.
pub fn crc32_chain<'a>(node_ids: impl IntoIterator<Item = &'a str>) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for id in node_ids {
        hasher.update(id.as_bytes());
    }
    hasher.finalize()
}

fn schema_compat_id(raw: &RawNode<'_>, label: impl FnOnce() -> String) -> Result<String, DagError> {
    let compat = raw.schema_compat_id.as_str();
    let legacy = raw.schema_id.as_str();
    match (compat, legacy) {
        (Some(compat), Some(legacy)) if !compat.is_empty() && compat.trim() != legacy.trim() => {
            Err(DagError::SchemaCompatMismatch {
                node: label(),
                schema_compat_id: compat.to_owned(),
                schema_id: legacy.to_owned(),
            })
        }
        (Some(compat), _) if !compat.is_empty() => Ok(compat.trim().to_owned()),
        (_, Some(legacy)) => Ok(legacy.trim().to_owned()),
        _ => Ok(String::new()),
    }
}

/// An integer in a JSON value, as the lenient `Int` field reads one.
fn int_value(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().replace('_', "").parse().ok(),
        _ => None,
    }
}

/// `{"interval":…,"match_mode":…,"query_tags":[sorted, unique]}` from params or the top level.
/// The interval stays `null` when none is given (the Python reference hashes it so).
fn tag_query_blob(raw: &RawNode<'_>, params: Option<&Sorted<'_>>) -> Result<String, &'static str> {
    let params = params.map(Sorted::to_value);
    let params = params.as_ref().and_then(Value::as_object);
    let from_params = |key: &str| params.and_then(|p| p.get(key)).filter(|v| !v.is_null());
    let query_tags = from_params("query_tags").or(raw.query_tags.as_ref().filter(|v| !v.is_null()));
    let mut tags: Vec<String> = match query_tags {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or("query_tags")?,
        _ => return Err("query_tags"),
    };
    tags.sort_unstable();
    tags.dedup();
    if tags.is_empty() {
        return Err("query_tags");
    }
    let match_mode = from_params("match_mode").or(raw.match_mode.as_ref().filter(|v| !v.is_null()));
    let match_mode = match match_mode {
        None => "any",
        Some(Value::String(mode)) => match mode.trim().to_lowercase().as_str() {
            "any" => "any",
            "all" => "all",
            _ => return Err("match_mode"),
        },
        Some(_) => return Err("match_mode"),
    };
    let interval = match from_params("interval") {
        Some(v) => int_value(v).ok_or("interval")?.to_string(),
        None if raw.interval.is_given() => raw.interval.or_zero().ok_or("interval")?.to_string(),
        None => "null".to_owned(),
    };
    let mut out = String::with_capacity(64);
    out.push_str("{\"interval\":");
    out.push_str(&interval);
    out.push_str(",\"match_mode\":");
    write_string(&mut out, match_mode);
    out.push_str(",\"query_tags\":");
    write_plain(&mut out, &Value::from(tags));
    out.push('}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_in_upper_case_hex_does_not_match() {
        let fields = NodeFields {
            node_type: "SMA".into(),
            interval: 60,
            period: 5,
            params_blob: "{}".into(),
            dependencies: Vec::new(),
            schema_compat_id: String::new(),
            code_hash: String::new(),
        };
        let id = fields.node_id();
        let node = |node_id: String| Node {
            node_id,
            fields: fields.clone(),
            schema_hash: String::new(),
            config_hash: String::new(),
            tags: Vec::new(),
            name: None,
        };
        assert!(node(id.clone()).verify_id().is_ok());
        let upper = format!("{HASH_PREFIX}{}", id[HASH_PREFIX.len()..].to_uppercase());
        assert!(node(upper).verify_id().is_err());
        assert!(node(format!("{id}00")).verify_id().is_err());
    }

    #[test]
    fn crc32_chain_of_nothing_is_zero_and_chains_like_concatenation() {
        assert_eq!(crc32_chain([]), 0);
        assert_eq!(crc32_chain(["ab", "c"]), crc32_chain(["abc"]));
    }
}
