//! What flows between nodes: a number, an OHLCV bar, or any JSON document.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One bar of market data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bar {
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
}

/// A node's output for one timestamp. Cheap to clone: documents are shared, not copied.
/// In JSON a number is a `Number`, an object with exactly a bar's five numbers is a `Bar`, and
/// anything else is a `Json` document.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Number(f64),
    Bar(Bar),
    Json(Arc<serde_json::Value>),
}

impl Value {
    /// The value as a number: a number itself, a bar's close, a JSON number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            Value::Bar(bar) => Some(bar.close),
            Value::Json(doc) => doc.as_f64(),
        }
    }

    /// Bytes the value holds, counted for `nodecache_resident_bytes`.
    pub fn resident_bytes(&self) -> usize {
        let own = std::mem::size_of::<Value>();
        match self {
            Value::Number(_) | Value::Bar(_) => own,
            // A fair estimate without walking the document: its serialised length.
            Value::Json(doc) => own + doc.to_string().len(),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

/// Reads numbers straight into `Number` (the common case on a queue), without buffering.
struct ValueVisitor;

impl<'de> serde::de::Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number, a bar or a JSON value")
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Number(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v as f64))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v as f64))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::from(serde_json::Value::Bool(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::from(serde_json::Value::String(v.to_owned())))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::from(serde_json::Value::Null))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::from(serde_json::Value::Null))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Value, A::Error> {
        let items: Vec<serde_json::Value> =
            Deserialize::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Value::from(serde_json::Value::Array(items)))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        let object: serde_json::Map<String, serde_json::Value> =
            Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        let field = |name: &str| object.get(name).and_then(serde_json::Value::as_f64);
        if object.len() == 5
            && let (Some(open), Some(high), Some(low), Some(close), Some(volume)) = (
                field("open"),
                field("high"),
                field("low"),
                field("close"),
                field("volume"),
            )
        {
            return Ok(Value::Bar(Bar {
                open,
                high,
                low,
                close,
                volume,
            }));
        }
        Ok(Value::from(serde_json::Value::Object(object)))
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Value {
        Value::Number(n)
    }
}

impl From<Bar> for Value {
    fn from(bar: Bar) -> Value {
        Value::Bar(bar)
    }
}

impl From<serde_json::Value> for Value {
    fn from(doc: serde_json::Value) -> Value {
        Value::Json(Arc::new(doc))
    }
}

/// Why a compute function produced no value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ComputeError(pub String);

impl ComputeError {
    pub fn new(message: impl Into<String>) -> ComputeError {
        ComputeError(message.into())
    }
}

/// What a compute function may return: a value, nothing this time (`None`), or an error.
pub trait IntoOutput {
    fn into_output(self) -> Result<Option<Value>, ComputeError>;
}

impl IntoOutput for Value {
    fn into_output(self) -> Result<Option<Value>, ComputeError> {
        Ok(Some(self))
    }
}

impl IntoOutput for f64 {
    fn into_output(self) -> Result<Option<Value>, ComputeError> {
        Ok(Some(Value::Number(self)))
    }
}

impl IntoOutput for Bar {
    fn into_output(self) -> Result<Option<Value>, ComputeError> {
        Ok(Some(Value::Bar(self)))
    }
}

impl IntoOutput for serde_json::Value {
    fn into_output(self) -> Result<Option<Value>, ComputeError> {
        Ok(Some(Value::from(self)))
    }
}

impl<T: IntoOutput> IntoOutput for Option<T> {
    fn into_output(self) -> Result<Option<Value>, ComputeError> {
        match self {
            Some(value) => value.into_output(),
            None => Ok(None),
        }
    }
}

impl<T: IntoOutput, E: std::fmt::Display> IntoOutput for Result<T, E> {
    fn into_output(self) -> Result<Option<Value>, ComputeError> {
        match self {
            Ok(value) => value.into_output(),
            Err(error) => Err(ComputeError(error.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_reads_back_as_the_value_it_was() {
        let bar = Bar {
            open: 1.0,
            high: 2.0,
            low: 0.5,
            close: 1.5,
            volume: 10.0,
        };
        for value in [
            Value::Number(3.25),
            Value::Bar(bar),
            Value::from(serde_json::json!({"signal": "long", "weight": 0.5})),
            Value::from(serde_json::json!([1, 2])),
        ] {
            let text = serde_json::to_string(&value).unwrap_or_default();
            let back: Option<Value> = serde_json::from_str(&text).ok();
            assert_eq!(back, Some(value), "{text}");
        }
        let whole: Option<Value> = serde_json::from_str("7").ok();
        assert_eq!(whole, Some(Value::Number(7.0)));
    }
}
