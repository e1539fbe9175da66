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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
