//! One node of a DAG document, its seven identity fields and its node id (wire.md section 2).

use crate::HASH_PREFIX;
use crate::canonical::{canonical_json, write_plain, write_string};
use crate::error::DagError;
use serde_json::{Map, Value};

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
    /// `blake3:` + hex BLAKE3 of the seven fields joined by `|`.
    pub fn node_id(&self) -> String {
        let mut deps: Vec<&str> = self.dependencies.iter().map(String::as_str).collect();
        deps.sort_unstable();
        let mut hasher = blake3::Hasher::new();
        for (i, part) in [
            self.node_type.as_str(),
            &self.interval.to_string(),
            &self.period.to_string(),
            &self.params_blob,
            &deps.join(","),
            self.schema_compat_id.trim(),
            &self.code_hash,
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                hasher.update(b"|");
            }
            hasher.update(part.as_bytes());
        }
        format!("{HASH_PREFIX}{}", hasher.finalize().to_hex())
    }
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
    /// The node object as submitted, for fields only some node types carry.
    pub raw: Map<String, Value>,
}

impl Node {
    pub fn node_type(&self) -> &str {
        &self.fields.node_type
    }

    pub fn dependencies(&self) -> &[String] {
        &self.fields.dependencies
    }

    /// Parses a node object; `position` names it in errors when it has no id.
    pub fn from_json(value: &Value, position: usize) -> Result<Node, DagError> {
        let Value::Object(raw) = value else {
            return Err(DagError::SchemaInvalid {
                reason: format!("nodes[{position}] is not an object"),
            });
        };
        let label = match raw.get("node_id") {
            Some(Value::String(id)) => id.clone(),
            _ => format!("nodes[{position}]"),
        };
        let node_type = match raw.get("node_type") {
            Some(Value::String(t)) if !t.is_empty() => t.clone(),
            _ => {
                return Err(DagError::NodeIdFields {
                    node: label,
                    node_type: String::new(),
                    field: "node_type",
                });
            }
        };
        let field_error = |field: &'static str| DagError::NodeIdFields {
            node: label.clone(),
            node_type: node_type.clone(),
            field,
        };
        let node_id = match raw.get("node_id") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            _ => return Err(field_error("node_id")),
        };
        let interval = int_field(raw.get("interval")).ok_or_else(|| field_error("interval"))?;
        let period = int_field(raw.get("period")).ok_or_else(|| field_error("period"))?;
        let dependencies = dependency_field(raw).ok_or_else(|| field_error("dependencies"))?;
        let schema_compat_id = schema_compat_id(raw, &label)?;
        let code_hash = string_field(raw, "code_hash").ok_or_else(|| field_error("code_hash"))?;
        let params_blob = if node_type == "TagQueryNode" {
            tag_query_blob(raw).map_err(field_error)?
        } else {
            let params = match raw.get("params") {
                Some(Value::Null) | None => raw.get("config").unwrap_or(&Value::Null),
                Some(params) => params,
            };
            canonical_json(params)
        };
        let tags = match raw.get("tags") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|t| t.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| field_error("tags"))?,
            Some(Value::Null) | None => Vec::new(),
            Some(_) => return Err(field_error("tags")),
        };
        Ok(Node {
            node_id,
            fields: NodeFields {
                node_type,
                interval,
                period,
                params_blob,
                dependencies,
                schema_compat_id,
                code_hash,
            },
            schema_hash: string_field(raw, "schema_hash").unwrap_or_default(),
            config_hash: string_field(raw, "config_hash").unwrap_or_default(),
            tags,
            name: raw.get("name").and_then(Value::as_str).map(str::to_owned),
            raw: raw.clone(),
        })
    }

    /// Recomputes the node id from the fields and checks it against the one sent.
    pub fn verify_id(&self) -> Result<(), DagError> {
        let expected = self.fields.node_id();
        if expected == self.node_id {
            Ok(())
        } else {
            Err(DagError::NodeIdMismatch {
                node: self.node_id.clone(),
                node_type: self.fields.node_type.clone(),
                expected,
            })
        }
    }
}

/// Computes the node id of a node object as the Python reference does.
pub fn node_id_of(value: &Value) -> Result<String, DagError> {
    let mut value = value.clone();
    if let Value::Object(map) = &mut value {
        // The id is computed, not read: give the parser a placeholder to satisfy its check.
        map.insert("node_id".into(), Value::String("?".into()));
    }
    Ok(Node::from_json(&value, 0)?.fields.node_id())
}

/// CRC-32 (zlib) chained over the UTF-8 of each id, in the order given, starting at 0.
pub fn crc32_chain<'a>(node_ids: impl IntoIterator<Item = &'a str>) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for id in node_ids {
        hasher.update(id.as_bytes());
    }
    hasher.finalize()
}

/// An integer field: null, missing or 0 read as 0; numeric strings parsed; integral floats taken.
fn int_field(value: Option<&Value>) -> Option<i64> {
    match value {
        None | Some(Value::Null) => Some(0),
        Some(Value::Number(n)) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Some(Value::String(s)) => s.trim().replace('_', "").parse().ok(),
        Some(_) => None,
    }
}

fn string_field(raw: &Map<String, Value>, key: &str) -> Option<String> {
    match raw.get(key) {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => None,
    }
}

fn dependency_field(raw: &Map<String, Value>) -> Option<Vec<String>> {
    let list = |key: &str| -> Option<Vec<String>> {
        match raw.get(key) {
            None | Some(Value::Null) => Some(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(_) => None,
        }
    };
    let inputs = list("inputs")?;
    if inputs.is_empty() {
        list("dependencies")
    } else {
        Some(inputs)
    }
}

fn schema_compat_id(raw: &Map<String, Value>, label: &str) -> Result<String, DagError> {
    let compat = raw.get("schema_compat_id").and_then(Value::as_str);
    let legacy = raw.get("schema_id").and_then(Value::as_str);
    match (compat, legacy) {
        (Some(compat), Some(legacy)) if !compat.is_empty() && compat.trim() != legacy.trim() => {
            Err(DagError::SchemaCompatMismatch {
                node: label.to_owned(),
                schema_compat_id: compat.to_owned(),
                schema_id: legacy.to_owned(),
            })
        }
        (Some(compat), _) if !compat.is_empty() => Ok(compat.trim().to_owned()),
        (_, Some(legacy)) => Ok(legacy.trim().to_owned()),
        _ => Ok(String::new()),
    }
}

/// `{"interval":…,"match_mode":…,"query_tags":[sorted, unique]}` from params or the top level.
/// The interval stays `null` when none is given (the Python reference hashes it so).
fn tag_query_blob(raw: &Map<String, Value>) -> Result<String, &'static str> {
    let params = raw.get("params").and_then(Value::as_object);
    let lookup = |key: &str| {
        params
            .and_then(|p| p.get(key))
            .filter(|v| !v.is_null())
            .or_else(|| raw.get(key).filter(|v| !v.is_null()))
    };
    let mut tags: Vec<String> = match lookup("query_tags") {
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
    let match_mode = match lookup("match_mode") {
        None => "any".to_owned(),
        Some(Value::String(mode)) => match mode.trim().to_lowercase().as_str() {
            "any" => "any".to_owned(),
            "all" => "all".to_owned(),
            _ => return Err("match_mode"),
        },
        Some(_) => return Err("match_mode"),
    };
    let interval = match lookup("interval") {
        Some(v) => int_field(Some(v)).ok_or("interval")?.to_string(),
        None => "null".to_owned(),
    };
    let mut out = String::with_capacity(64);
    out.push_str("{\"interval\":");
    out.push_str(&interval);
    out.push_str(",\"match_mode\":");
    write_string(&mut out, &match_mode);
    out.push_str(",\"query_tags\":");
    write_plain(&mut out, &Value::from(tags));
    out.push('}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_chain_of_nothing_is_zero_and_chains_like_concatenation() {
        assert_eq!(crc32_chain([]), 0);
        assert_eq!(crc32_chain(["ab", "c"]), crc32_chain(["abc"]));
    }
}
