//! Canonical JSON as the Python reference writes it for node identity: sorted keys, compact
//! separators, non-ASCII as is, floats in Python's `repr`, execution-context keys removed.

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt::Write as _;

/// Keys that describe where or when a computation runs, never what it computes; they are dropped
/// at every depth before hashing so that one computation has one node id in every world.
const CONTEXT_KEYS: &[&str] = &[
    "world",
    "world_id",
    "world_ids",
    "execution_world",
    "execution_domain",
    "domain",
    "domains",
    "as_of",
    "partition",
    "dataset_fingerprint",
    "timestamp",
    "seed",
    "random_state",
    "env",
];

pub(crate) fn is_context_key(key: &str) -> bool {
    if key.is_ascii() {
        let prefixed = key.len() >= 4 && key[..4].eq_ignore_ascii_case("env_");
        return prefixed || CONTEXT_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key));
    }
    let lower = key.to_lowercase();
    lower.starts_with("env_") || CONTEXT_KEYS.contains(&lower.as_str())
}

/// Writes `value` as canonical JSON, dropping execution-context keys from every object.
pub fn canonical_json(value: &Value) -> String {
    Sorted::from(value).canonical()
}

/// Key-sorted compact JSON of the whole value, nothing dropped: the form a DAG is hashed in to
/// recognise a duplicate submission.
pub fn sorted_json(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    write_plain(&mut out, value);
    out
}

/// [`sorted_json`] of a JSON text, the same bytes, without building a `serde_json::Value`:
/// strings are borrowed from the text and objects are sorted vectors.
pub fn sorted_json_text(text: &str) -> Result<String, serde_json::Error> {
    let tree: Sorted<'_> = serde_json::from_str(text)?;
    let mut out = String::with_capacity(text.len());
    tree.write(&mut out);
    Ok(out)
}

/// A JSON value with its objects sorted by key and its strings borrowed: the one tree every
/// canonical and sorted JSON here is written from. It is parsed straight from a text (node
/// params, [`sorted_json_text`]) or built from a `serde_json::Value` ([`canonical_json`],
/// [`sorted_json`]). Numbers keep the kind a `Value` gives them, so both write alike.
#[derive(Debug, Clone)]
pub(crate) enum Sorted<'a> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(Cow<'a, str>),
    Arr(Vec<Sorted<'a>>),
    /// Sorted by key; of repeated keys only the last is kept, as in a `Value`.
    Obj(Vec<(Cow<'a, str>, Sorted<'a>)>),
    /// A value already written as canonical JSON that holds no execution-context key, so that it
    /// is also its sorted JSON (the fast reader writes one straight from the text).
    Written(String),
}

impl<'a> Sorted<'a> {
    /// Canonical JSON of the value, execution-context keys dropped (see [`canonical_json`]).
    pub(crate) fn canonical(&self) -> String {
        let mut out = String::with_capacity(64);
        self.write_with(&mut out, true);
        out
    }

    /// [`Sorted::canonical`], taking a written value's text instead of copying it.
    pub(crate) fn into_canonical(self) -> String {
        match self {
            Sorted::Written(text) => text,
            other => other.canonical(),
        }
    }

    /// An object of the entries as read, in order: sorted by key, and of repeated keys only the
    /// last is kept, as in a `Value`.
    pub(crate) fn object(mut entries: Vec<(Cow<'a, str>, Sorted<'a>)>) -> Sorted<'a> {
        // Stable, so of equal keys the last one read stays last; keep that one.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(Cow<'a, str>, Sorted<'a>)> = Vec::with_capacity(entries.len());
        for entry in entries {
            match kept.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => kept.push(entry),
            }
        }
        Sorted::Obj(kept)
    }

    /// The same value as a `serde_json::Value`.
    pub(crate) fn to_value(&self) -> Value {
        match self {
            Sorted::Null => Value::Null,
            Sorted::Bool(b) => Value::Bool(*b),
            Sorted::I64(i) => Value::from(*i),
            Sorted::U64(u) => Value::from(*u),
            Sorted::F64(f) => Value::from(*f),
            Sorted::Str(s) => Value::String(s.to_string()),
            // Written by this crate from a value it read, nested less deeply than serde_json's
            // limit (asserted in `fast.rs`), so it always reads back.
            Sorted::Written(text) => serde_json::from_str(text).unwrap_or_else(|_| {
                debug_assert!(false, "written params do not read back: {text}");
                Value::Null
            }),
            Sorted::Arr(items) => Value::Array(items.iter().map(Sorted::to_value).collect()),
            Sorted::Obj(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(key, item)| (key.to_string(), item.to_value()))
                    .collect(),
            ),
        }
    }

    fn write(&self, out: &mut String) {
        self.write_with(out, false);
    }

    fn write_with(&self, out: &mut String, drop_context: bool) {
        match self {
            Sorted::Null => out.push_str("null"),
            Sorted::Bool(true) => out.push_str("true"),
            Sorted::Bool(false) => out.push_str("false"),
            Sorted::I64(i) => out.push_str(itoa::Buffer::new().format(*i)),
            Sorted::U64(u) => out.push_str(itoa::Buffer::new().format(*u)),
            Sorted::F64(f) => out.push_str(&python_float_repr(*f)),
            Sorted::Str(s) => write_string(out, s),
            Sorted::Written(text) => out.push_str(text),
            Sorted::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_with(out, drop_context);
                }
                out.push(']');
            }
            Sorted::Obj(entries) => {
                out.push('{');
                let kept = entries
                    .iter()
                    .filter(|(key, _)| !(drop_context && is_context_key(key)));
                for (i, (key, item)) in kept.enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(out, key);
                    out.push(':');
                    item.write_with(out, drop_context);
                }
                out.push('}');
            }
        }
    }
}

/// A JSON string, borrowed from the text when it holds no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Sorted<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SortedVisitor;
        impl<'de> Visitor<'de> for SortedVisitor {
            type Value = Sorted<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Sorted::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Sorted::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Sorted::I64(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Sorted::U64(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Sorted::F64(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Sorted::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Sorted::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Sorted::Str(Cow::Owned(v)))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Sorted::Arr(items))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries: Vec<(Cow<'de, str>, Sorted<'de>)> = Vec::new();
                while let Some((Text(key), value)) = map.next_entry::<Text<'de>, Sorted<'de>>()? {
                    entries.push((key, value));
                }
                Ok(Sorted::object(entries))
            }
        }
        deserializer.deserialize_any(SortedVisitor)
    }
}

/// Writes canonical JSON without dropping any key (used for values the caller already shaped).
pub(crate) fn write_plain(out: &mut String, value: &Value) {
    Sorted::from(value).write(out);
}

impl<'a> From<&'a Value> for Sorted<'a> {
    /// The value's tree, strings borrowed, objects sorted by key (Python sorts `str` keys by
    /// code point, which is UTF-8 byte order).
    fn from(value: &'a Value) -> Self {
        match value {
            Value::Null => Sorted::Null,
            Value::Bool(b) => Sorted::Bool(*b),
            Value::Number(number) => match (number.as_i64(), number.as_u64()) {
                (Some(i), _) => Sorted::I64(i),
                (None, Some(u)) => Sorted::U64(u),
                (None, None) => Sorted::F64(number.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Sorted::Str(Cow::Borrowed(s)),
            Value::Array(items) => Sorted::Arr(items.iter().map(Sorted::from).collect()),
            Value::Object(map) => {
                let mut entries: Vec<(Cow<'a, str>, Sorted<'a>)> = map
                    .iter()
                    .map(|(key, item)| (Cow::Borrowed(key.as_str()), Sorted::from(item)))
                    .collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                Sorted::Obj(entries)
            }
        }
    }
}

/// Escapes a string as Python's `json.dumps(..., ensure_ascii=False)` does.
pub(crate) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        // Nothing to escape (the usual case): one copy.
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Formats a float exactly as Python's `repr(float)`: the shortest round-trip digits, fixed
/// notation when the decimal exponent is in (-4, 16], scientific (`1e-05`, `1e+16`) otherwise.
pub fn python_float_repr(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    // Rust's `{:e}` yields the shortest round-trip digits as `d.ddde<exp>`.
    let sci = format!("{value:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let decimal_point = exponent + 1;
    let mut out = String::with_capacity(digits.len() + 8);
    if negative {
        out.push('-');
    }
    if -4 < decimal_point && decimal_point <= 16 {
        if decimal_point <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n(
                '0',
                decimal_point.unsigned_abs() as usize,
            ));
            out.push_str(&digits);
        } else {
            let point = decimal_point as usize;
            if point >= digits.len() {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', point - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..point]);
                out.push('.');
                out.push_str(&digits[point..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exponent < 0 { '-' } else { '+' },
            exponent.unsigned_abs()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_are_written_as_python_repr_writes_them() {
        let cases = [
            (1e-05, "1e-05"),
            (1e21, "1e+21"),
            (3.0, "3.0"),
            (-0.0, "-0.0"),
            (0.0001, "0.0001"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (123456789.125, "123456789.125"),
            (-106.81, "-106.81"),
            (1.5e-7, "1.5e-07"),
            (2.5e300, "2.5e+300"),
            (0.1, "0.1"),
        ];
        for (value, expected) in cases {
            assert_eq!(python_float_repr(value), expected, "repr of {value}");
        }
    }

    #[test]
    fn canonical_json_sorts_keys_and_drops_context_keys_at_every_depth() {
        let value =
            json!({"b": 1, "a": {"World": 3, "z": [1.0, {"env_x": 1, "k": "naïve"}]}, "Seed": 4});
        assert_eq!(
            canonical_json(&value),
            r#"{"a":{"z":[1.0,{"k":"naïve"}]},"b":1}"#
        );
    }

    #[test]
    fn sorted_json_text_writes_what_sorted_json_writes_for_the_parsed_value() {
        let texts = [
            r#"{"b": 1, "a": {"z": [1.0, -2, 3e-7, 18446744073709551615, -9223372036854775808, 1e300], "y": null}}"#,
            r#"{"k": "esc\"aped\\ \n \u0001 naïve \ud83d\ude00", "k2": true, "k1": false}"#,
            r#"{"dup": 1, "a": 0, "dup": 2, "dup": {"x": [], "x": {}}}"#,
            r#"[{"é": 1, "e": 2, "z": 3, "Z": 4}, "s", 0.1, -0.0, 100000000000000000000]"#,
            r#"  "just a string"  "#,
            "12",
            "{}",
            r#"{"nodes":[{"node_id":"blake3:1","period":20,"inputs":["x"],"params":{"w":0.5}}],"version":"v"}"#,
        ];
        for text in texts {
            let value: Value = serde_json::from_str(text).expect("a JSON text");
            assert_eq!(
                sorted_json_text(text).unwrap(),
                sorted_json(&value),
                "for {text}"
            );
        }
        assert!(sorted_json_text("{not json").is_err());
        assert!(sorted_json_text("{} trailing").is_err());
    }

    #[test]
    fn strings_escape_like_python_json_dumps() {
        let value = json!("a\"b\\c\n\u{1}\u{7f}é");
        assert_eq!(canonical_json(&value), "\"a\\\"b\\\\c\\n\\u0001\u{7f}é\"");
        // A string with nothing to escape is copied as it is.
        assert_eq!(canonical_json(&json!("plain é\u{7f}")), "\"plain é\u{7f}\"");
    }
}
