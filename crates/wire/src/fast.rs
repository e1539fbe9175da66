//! A reader for DAG documents beside the serde one in `dag.rs`: on the documents clients send it
//! reads a 1000-node DAG in about three quarters of serde's instructions. It reads only what it
//! is sure of and gives up (`None`) on anything else: a syntax error, a number serde_json would
//! refuse, a field given twice, nesting deeper than [`MAX_DEPTH`]. The serde reader then reads
//! the document and decides, so the two always answer alike;
//! `tests::both_readers_agree_on_generated_documents` holds them to that.
//!
//! Strings without escapes are borrowed. Strings with escapes, and every number but a plain
//! non-negative integer, are decoded by serde_json itself, so their values are serde_json's.

use crate::canonical::{Sorted, is_context_key, write_string};
use crate::dag::{RawDag, ReadNodes};
use crate::lenient::{Int, ObjectFold, Text, TextList};
use crate::node::RawNode;
use serde_json::{Number, Value};
use std::borrow::Cow;

/// Nesting followed within one field's value (so a document's is at most a few levels more);
/// deeper documents are left to serde, whose own limit is 128 levels.
const MAX_DEPTH: usize = 64;

// Params written as they are read are read back by serde_json (`Sorted::to_value`), which must
// be able to: their nesting has to stay under its limit.
const _: () = assert!(MAX_DEPTH + 8 < 128);

/// Reads a whole document: its nodes (`None` when `nodes` is missing or not a list) and the rest.
pub(crate) fn read(text: &str) -> Option<(Option<ReadNodes<'_>>, RawDag<()>)> {
    let mut reader = Reader {
        text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    reader.ws();
    let read = reader.document()?;
    reader.ws();
    (reader.pos == reader.bytes.len()).then_some(read)
}

struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

/// Which of a struct's fields were read, so that a repeated one (an error to serde) is noticed.
#[derive(Default)]
struct Seen(u32);

impl Seen {
    /// `None` when field `bit` was read already.
    fn first(&mut self, bit: u32) -> Option<()> {
        let mask = 1 << bit;
        (self.0 & mask == 0).then(|| self.0 |= mask)
    }
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Skips whitespace and eats `byte`.
    fn eat(&mut self, byte: u8) -> Option<()> {
        self.ws();
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// After an item of an object or array: `true` if another follows, `false` at `close`.
    fn more(&mut self, close: u8) -> Option<bool> {
        self.ws();
        let byte = self.peek()?;
        self.pos += 1;
        match byte {
            b',' => Some(true),
            _ if byte == close => Some(false),
            _ => None,
        }
    }

    /// Opens an object or array (`open`); `true` if it holds an item.
    fn open(&mut self, open: u8, close: u8) -> Option<bool> {
        self.eat(open)?;
        self.ws();
        if self.peek()? == close {
            self.pos += 1;
            return Some(false);
        }
        Some(true)
    }

    /// Reads a list at the reader, each item with `item` (given the item's index).
    fn list(&mut self, mut item: impl FnMut(&mut Self, usize) -> Option<()>) -> Option<()> {
        if self.open(b'[', b']')? {
            let mut index = 0;
            loop {
                item(self, index)?;
                if !self.more(b']')? {
                    return Some(());
                }
                index += 1;
            }
        }
        Some(())
    }

    /// Reads an object at the reader, each entry with `entry` (given its key and index), which
    /// reads the value.
    fn object(
        &mut self,
        mut entry: impl FnMut(&mut Self, Cow<'a, str>, usize) -> Option<()>,
    ) -> Option<()> {
        if self.open(b'{', b'}')? {
            let mut index = 0;
            loop {
                let key = self.string()?;
                self.eat(b':')?;
                entry(self, key, index)?;
                if !self.more(b'}')? {
                    return Some(());
                }
                index += 1;
            }
        }
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.bytes.get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// Reads `null`, or leaves the reader where it was and answers `false`.
    fn null(&mut self) -> Option<bool> {
        self.ws();
        if self.peek()? != b'n' {
            return Some(false);
        }
        self.literal(b"null")?;
        Some(true)
    }

    /// A string at the reader (after whitespace).
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.ws();
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.pos + 1;
        let mut end = start;
        let mut escaped = false;
        loop {
            end = special_byte(self.bytes, end)?;
            match self.bytes[end] {
                b'"' => break,
                // An escape: whatever follows the backslash cannot end the string.
                b'\\' => {
                    escaped = true;
                    end += 2;
                }
                // A control character, which serde refuses.
                _ => return None,
            }
        }
        self.pos = end + 1;
        if escaped {
            serde_json::from_str::<String>(&self.text[start - 1..=end])
                .ok()
                .map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(&self.text[start..end]))
        }
    }

    /// A number at the reader: a plain non-negative integer read here, any other decoded by
    /// serde_json.
    fn number(&mut self) -> Option<Number> {
        self.ws();
        let start = self.pos;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.peek() {
            self.pos += 1;
        }
        let token = &self.text[start..self.pos];
        let plain = token.len() <= 18
            && token.bytes().all(|b| b.is_ascii_digit())
            && (token.len() == 1 || !token.starts_with('0'));
        if plain {
            return token.parse::<u64>().ok().map(Number::from);
        }
        token.parse().ok()
    }

    /// Skips any value, checking it as serde would.
    fn skip(&mut self, depth: usize) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'[' if depth < MAX_DEPTH => self.list(|reader, _| reader.skip(depth + 1)),
            b'{' if depth < MAX_DEPTH => self.object(|reader, _, _| reader.skip(depth + 1)),
            _ => None,
        }
    }

    /// A value as serde reads an `Option<Value>`: `null` is `None`.
    fn optional_value(&mut self) -> Option<Option<Value>> {
        if self.null()? {
            return Some(None);
        }
        let start = self.pos;
        self.skip(0)?;
        serde_json::from_str(&self.text[start..self.pos])
            .ok()
            .map(Some)
    }

    /// A value as a [`Sorted`] tree.
    fn sorted(&mut self, depth: usize) -> Option<Sorted<'a>> {
        self.ws();
        Some(match self.peek()? {
            b'"' => Sorted::Str(self.string()?),
            b'-' | b'0'..=b'9' => {
                let number = self.number()?;
                if let Some(u) = number.as_u64() {
                    Sorted::U64(u)
                } else if let Some(i) = number.as_i64() {
                    Sorted::I64(i)
                } else {
                    Sorted::F64(number.as_f64()?)
                }
            }
            b't' => self.literal(b"true").map(|()| Sorted::Bool(true))?,
            b'f' => self.literal(b"false").map(|()| Sorted::Bool(false))?,
            b'n' => self.literal(b"null").map(|()| Sorted::Null)?,
            b'[' if depth < MAX_DEPTH => {
                let mut items = Vec::new();
                self.list(|reader, _| {
                    items.push(reader.sorted(depth + 1)?);
                    Some(())
                })?;
                Sorted::Arr(items)
            }
            b'{' if depth < MAX_DEPTH => {
                let mut entries = Vec::new();
                self.object(|reader, key, _| {
                    entries.push((key, reader.sorted(depth + 1)?));
                    Some(())
                })?;
                Sorted::object(entries)
            }
            _ => return None,
        })
    }

    /// Node params as `Option<Sorted>`: `null` is `None`. Params already in canonical order
    /// (keys sorted and unique, no execution-context key, no float) are written out as they are
    /// read, with no tree; others are read into a tree.
    fn optional_params(&mut self) -> Option<Option<Sorted<'a>>> {
        if self.null()? {
            return Some(None);
        }
        let start = self.pos;
        let mut written = String::with_capacity(64);
        if self.write_canonical(&mut written, 0).is_some() {
            return Some(Some(Sorted::Written(written)));
        }
        self.pos = start;
        self.sorted(0).map(Some)
    }

    /// Writes the value at the reader as canonical JSON, as [`Sorted::canonical`] would, when
    /// that needs no reordering, dropping or float formatting; `None` otherwise, the reader
    /// left somewhere inside the value.
    fn write_canonical(&mut self, out: &mut String, depth: usize) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'"' => write_string(out, &self.string()?),
            b'-' | b'0'..=b'9' => {
                let number = self.number()?;
                let mut digits = itoa::Buffer::new();
                if let Some(u) = number.as_u64() {
                    out.push_str(digits.format(u));
                } else {
                    out.push_str(digits.format(number.as_i64()?));
                }
            }
            b't' => self.literal(b"true").map(|()| out.push_str("true"))?,
            b'f' => self.literal(b"false").map(|()| out.push_str("false"))?,
            b'n' => self.literal(b"null").map(|()| out.push_str("null"))?,
            b'[' if depth < MAX_DEPTH => {
                out.push('[');
                self.list(|reader, index| {
                    if index > 0 {
                        out.push(',');
                    }
                    reader.write_canonical(out, depth + 1)
                })?;
                out.push(']');
            }
            b'{' if depth < MAX_DEPTH => {
                out.push('{');
                let mut last: Option<Cow<'a, str>> = None;
                self.object(|reader, key, index| {
                    if is_context_key(&key) || last.as_ref().is_some_and(|last| *last >= key) {
                        return None;
                    }
                    if index > 0 {
                        out.push(',');
                    }
                    write_string(out, &key);
                    out.push(':');
                    last = Some(key);
                    reader.write_canonical(out, depth + 1)
                })?;
                out.push('}');
            }
            _ => return None,
        }
        Some(())
    }

    /// A lenient string field: a string, `null`, or anything else as `Invalid`.
    fn text(&mut self) -> Option<Text<'a>> {
        self.ws();
        Some(match self.peek()? {
            b'"' => Text::Str(self.string()?),
            b'n' => self.literal(b"null").map(|()| Text::Null)?,
            _ => self.skip(0).map(|()| Text::Invalid)?,
        })
    }

    /// A lenient integer field (see `lenient::IntVisitor`).
    fn int(&mut self) -> Option<Int> {
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
    fn text_list(&mut self) -> Option<TextList<'a>> {
        self.ws();
        Some(match self.peek()? {
            b'[' => {
                let mut items = Vec::with_capacity(2);
                let mut valid = true;
                self.list(|reader, _| {
                    match reader.text()? {
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

    /// One node object's fields, as the derived `Deserialize` of [`RawNode`] reads them.
    fn node(&mut self) -> Option<RawNode<'a>> {
        let mut raw = RawNode::default();
        let mut seen = Seen::default();
        self.object(|reader, key, _| {
            match key.as_ref() {
                "node_type" => {
                    seen.first(0)?;
                    raw.node_type = reader.text()?;
                }
                "node_id" => {
                    seen.first(1)?;
                    raw.node_id = reader.text()?;
                }
                "interval" => {
                    seen.first(2)?;
                    raw.interval = reader.int()?;
                }
                "period" => {
                    seen.first(3)?;
                    raw.period = reader.int()?;
                }
                "params" => {
                    seen.first(4)?;
                    raw.params = reader.optional_params()?;
                }
                "config" => {
                    seen.first(5)?;
                    raw.config = reader.optional_params()?;
                }
                "inputs" => {
                    seen.first(6)?;
                    raw.inputs = reader.text_list()?;
                }
                "dependencies" => {
                    seen.first(7)?;
                    raw.dependencies = reader.text_list()?;
                }
                "schema_compat_id" => {
                    seen.first(8)?;
                    raw.schema_compat_id = reader.text()?;
                }
                "schema_id" => {
                    seen.first(9)?;
                    raw.schema_id = reader.text()?;
                }
                "code_hash" => {
                    seen.first(10)?;
                    raw.code_hash = reader.text()?;
                }
                "schema_hash" => {
                    seen.first(11)?;
                    raw.schema_hash = reader.text()?;
                }
                "config_hash" => {
                    seen.first(12)?;
                    raw.config_hash = reader.text()?;
                }
                "name" => {
                    seen.first(13)?;
                    raw.name = reader.text()?;
                }
                "tags" => {
                    seen.first(14)?;
                    raw.tags = reader.text_list()?;
                }
                "query_tags" => {
                    seen.first(15)?;
                    raw.query_tags = reader.optional_value()?;
                }
                "match_mode" => {
                    seen.first(16)?;
                    raw.match_mode = reader.optional_value()?;
                }
                "version" => {
                    seen.first(17)?;
                    raw.version = reader.optional_value()?;
                }
                "strategy_version" => {
                    seen.first(18)?;
                    raw.strategy_version = reader.optional_value()?;
                }
                "build_version" => {
                    seen.first(19)?;
                    raw.build_version = reader.optional_value()?;
                }
                "traffic_weight" => {
                    seen.first(20)?;
                    raw.traffic_weight = reader.optional_value()?;
                }
                "sentinel_weight" => {
                    seen.first(21)?;
                    raw.sentinel_weight = reader.optional_value()?;
                }
                "weight" => {
                    seen.first(22)?;
                    raw.weight = reader.optional_value()?;
                }
                _ => reader.skip(1)?,
            }
            Some(())
        })?;
        Some(raw)
    }

    /// The `nodes` list, each item checked as it is read; `None` inside when it is not a list.
    fn nodes(&mut self) -> Option<Option<ReadNodes<'a>>> {
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

    /// The top-level object, as the derived `Deserialize` of [`RawDag`] reads it.
    fn document(&mut self) -> Option<(Option<ReadNodes<'a>>, RawDag<()>)> {
        let mut raw = RawDag::<()>::default();
        let mut nodes = None;
        let mut seen = Seen::default();
        if self.peek()? != b'{' {
            return None;
        }
        self.object(|reader, key, _| {
            match key.as_ref() {
                "schema_version" => {
                    seen.first(0)?;
                    raw.schema_version = reader.optional_value()?;
                }
                "nodes" => {
                    seen.first(1)?;
                    nodes = reader.nodes()?;
                }
                "meta" => {
                    seen.first(2)?;
                    raw.meta = reader.optional_value()?;
                }
                "compute_context" => {
                    seen.first(3)?;
                    raw.compute_context = reader.optional_value()?;
                }
                "version" => {
                    seen.first(4)?;
                    raw.version = reader.optional_value()?;
                }
                "strategy_version" => {
                    seen.first(5)?;
                    raw.strategy_version = reader.optional_value()?;
                }
                "build_version" => {
                    seen.first(6)?;
                    raw.build_version = reader.optional_value()?;
                }
                "node_ids_crc32" => {
                    seen.first(7)?;
                    raw.node_ids_crc32 = reader.optional_value()?;
                }
                _ => reader.skip(1)?,
            }
            Some(())
        })?;
        Some((nodes, raw))
    }
}

/// The first byte at or after `from` that is a quote, a backslash or a control character,
/// eight bytes at a time.
fn special_byte(bytes: &[u8], mut from: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Bytes equal to zero (or, for `below`, less than n < 0x80) get their high bit set; a
    // borrow can flag later bytes too, but never an earlier one, so the lowest flag is exact.
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS;
    while let Some(chunk) = bytes.get(from..from + 8) {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        let flags = zero(word ^ (ONES * u64::from(b'"')))
            | zero(word ^ (ONES * u64::from(b'\\')))
            | below(word, 0x20);
        if flags != 0 {
            return Some(from + (flags.trailing_zeros() / 8) as usize);
        }
        from += 8;
    }
    bytes
        .get(from..)?
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| from + i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::{DagLimits, parse_dag, parse_dag_with_serde};
    use crate::error::DagError;

    /// xorshift64*: a deterministic stream of pseudo-random numbers for generated documents,
    /// and whether the document being generated is clean (valid JSON, no field twice).
    struct Rng(u64, bool);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }

        /// From `valid`, or in a dirty document sometimes from `invalid`.
        fn token<'a>(&mut self, valid: &[&'a str], invalid: &[&'a str]) -> &'a str {
            if !self.1 && self.chance(15) {
                self.pick(invalid)
            } else {
                self.pick(valid)
            }
        }

        /// Whether to break the document here: never in a clean one.
        fn dirty(&mut self, percent: usize) -> bool {
            !self.1 && self.chance(percent)
        }
    }

    const STRINGS: &[&str] = &[
        r#""""#,
        r#""SMA""#,
        r#""TagQueryNode""#,
        r#""VersionSentinel""#,
        r#""blake3:0000""#,
        r#"" 42 ""#,
        r#""1_000""#,
        r#""btc""#,
        r#""any""#,
        r#""ALL""#,
        r#""caf\u00e9""#,
        r#""café""#,
        r#""tab\there""#,
        r#""quote\"d""#,
        r#""back\\slash""#,
        r#""\ud83d\ude00""#,
        r#""\ud800""#,
        r#""node_type""#,
        r#""world_id""#,
        r#""env_name""#,
    ];

    const BAD_STRINGS: &[&str] = &[
        r#""bad \x escape""#,
        "\"raw \u{1} control\"",
        r#""unterminated"#,
        r#""\u12""#,
    ];

    const NUMBERS: &[&str] = &[
        "0",
        "-0",
        "7",
        "60",
        "-5",
        "1.5",
        "-0.0",
        "1e3",
        "1E-2",
        "2.50",
        "18446744073709551615",
        "18446744073709551616",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775809",
        "123456789012345678",
        "1234567890123456789",
        "9007199254740993",
        "1e-7",
        "0.1",
    ];

    const BAD_NUMBERS: &[&str] = &["01", "1.", "-", "+1", ".5", "1e", "1e400", "-01", "0x10"];

    const KEYS: &[&str] = &[
        "node_type",
        "node_id",
        "interval",
        "period",
        "params",
        "config",
        "inputs",
        "dependencies",
        "schema_compat_id",
        "schema_id",
        "code_hash",
        "schema_hash",
        "config_hash",
        "name",
        "tags",
        "query_tags",
        "match_mode",
        "version",
        "strategy_version",
        "build_version",
        "traffic_weight",
        "sentinel_weight",
        "weight",
        "expected_schema",
        "node\\u005ftype",
        "world",
        "x",
    ];

    const TOP_KEYS: &[&str] = &[
        "schema_version",
        "nodes",
        "meta",
        "compute_context",
        "version",
        "strategy_version",
        "build_version",
        "node_ids_crc32",
        "extra",
    ];

    fn ws(rng: &mut Rng, out: &mut String) {
        if rng.chance(20) {
            out.push_str(rng.pick(&[" ", "\n", "\t ", "\r\n  "]));
        }
    }

    fn value(rng: &mut Rng, out: &mut String, depth: usize) {
        ws(rng, out);
        match rng.below(if depth > 3 { 5 } else { 8 }) {
            0 => out.push_str(rng.token(&["null", "true", "false"], &["nul", "True"])),
            1 | 2 => out.push_str(rng.token(STRINGS, BAD_STRINGS)),
            3 | 4 => out.push_str(rng.token(NUMBERS, BAD_NUMBERS)),
            5 => {
                out.push('[');
                let items = rng.below(4);
                for i in 0..items {
                    if i > 0 {
                        out.push(',');
                    }
                    value(rng, out, depth + 1);
                }
                if rng.dirty(3) {
                    out.push(',');
                }
                out.push(']');
            }
            6 => object(rng, out, depth + 1, KEYS),
            _ => {
                // Nesting around the depth limits of both readers.
                let levels = rng.token(
                    &["2", "20", "50"],
                    &["63", "64", "65", "70", "126", "127", "130"],
                );
                let levels: usize = levels.parse().unwrap_or(1);
                let open = if rng.chance(50) { "[" } else { "{\"k\":" };
                let close = if open == "[" { "]" } else { "}" };
                out.push_str(&open.repeat(levels));
                out.push('1');
                out.push_str(&close.repeat(levels));
            }
        }
        ws(rng, out);
    }

    /// An object whose keys come in increasing order (sometimes one repeated, or a context key
    /// among them), with values that are sometimes floats.
    fn sorted_object(rng: &mut Rng, out: &mut String, depth: usize) {
        const SORTED: &[&str] = &[
            "a", "alpha", "as_of", "b", "n", "seed", "step", "window", "z",
        ];
        out.push('{');
        let mut first = true;
        for key in SORTED {
            if !rng.chance(40) {
                continue;
            }
            for _ in 0..if rng.chance(15) { 2 } else { 1 } {
                if !first {
                    out.push(',');
                }
                first = false;
                ws(rng, out);
                out.push_str(&format!("\"{key}\":"));
                match rng.below(4) {
                    0 => out.push_str(rng.pick(&["1.5", "1e-7", "2.50", "-0", "1e3", "0.1"])),
                    1 if depth < 3 => sorted_object(rng, out, depth + 1),
                    _ => value(rng, out, 3),
                }
            }
        }
        out.push('}');
    }

    fn object(rng: &mut Rng, out: &mut String, depth: usize, keys: &[&str]) {
        out.push('{');
        let entries = rng.below(6);
        for i in 0..entries {
            if i > 0 {
                out.push(',');
            }
            ws(rng, out);
            out.push('"');
            out.push_str(rng.pick(keys));
            out.push('"');
            ws(rng, out);
            out.push(':');
            value(rng, out, depth);
        }
        out.push('}');
    }

    fn string_list(rng: &mut Rng, out: &mut String) {
        out.push('[');
        for i in 0..rng.below(3) {
            if i > 0 {
                out.push(',');
            }
            if rng.chance(90) {
                out.push_str(rng.token(STRINGS, BAD_STRINGS));
            } else {
                value(rng, out, 2);
            }
        }
        out.push(']');
    }

    /// A node whose fields mostly have the types they should, so that checks of later fields
    /// are reached; a clean document's nodes always lead with a type and an id.
    fn node(rng: &mut Rng, out: &mut String) {
        if rng.chance(5) {
            value(rng, out, 1);
            return;
        }
        out.push('{');
        let mut first = true;
        for key in KEYS {
            let lead = rng.1 && matches!(*key, "node_type" | "node_id");
            if !lead && !rng.chance(45) {
                continue;
            }
            for _ in 0..if rng.dirty(4) { 2 } else { 1 } {
                if !first {
                    out.push(',');
                }
                first = false;
                ws(rng, out);
                out.push_str(&format!("\"{key}\":"));
                // A clean node mostly converts, so that its later fields are compared too.
                let typed = rng.chance(if rng.1 { 97 } else { 85 });
                match *key {
                    "node_type" if typed && rng.1 && rng.chance(90) => {
                        out.push_str(rng.pick(&[r#""SMA""#, r#""Price\u0046eed""#]));
                    }
                    "node_type" if typed => out.push_str(rng.pick(&[
                        r#""SMA""#,
                        r#""TagQueryNode""#,
                        r#""VersionSentinel""#,
                        r#""Price\u0046eed""#,
                    ])),
                    "node_id" if typed && rng.1 => {
                        out.push_str(rng.pick(&[r#""n1""#, r#""blake3:ab""#, r#""caf\u00e9""#]));
                    }
                    "schema_id" if rng.1 && rng.chance(80) => out.push_str("null"),
                    "interval" | "period" if typed => {
                        if rng.1 && rng.chance(80) {
                            // A clean node mostly converts, so its later fields are compared.
                            out.push_str(rng.pick(&["0", "7", "60", "-3", "9223372036854775807"]));
                        } else if rng.chance(80) {
                            out.push_str(rng.token(NUMBERS, BAD_NUMBERS));
                        } else {
                            out.push_str(rng.pick(&[r#"" 42 ""#, r#""1_000""#, r#""x""#, "null"]));
                        }
                    }
                    "inputs" | "dependencies" | "tags" | "query_tags" if typed => {
                        string_list(rng, out);
                    }
                    "params" | "config" if typed => {
                        if rng.chance(50) {
                            // Often in canonical order, so that both ways of reading params run.
                            sorted_object(rng, out, 0);
                        } else {
                            object(rng, out, 2, KEYS);
                        }
                    }
                    "node_id" | "schema_compat_id" | "schema_id" | "code_hash" | "schema_hash"
                    | "config_hash" | "name" | "match_mode"
                        if typed =>
                    {
                        out.push_str(rng.token(STRINGS, BAD_STRINGS));
                    }
                    _ => value(rng, out, 2),
                }
            }
        }
        out.push('}');
    }

    fn document(rng: &mut Rng) -> String {
        let mut out = String::new();
        ws(rng, &mut out);
        out.push('{');
        let mut first = true;
        for key in TOP_KEYS {
            if !rng.chance(if *key == "nodes" { 95 } else { 35 }) {
                continue;
            }
            for _ in 0..if rng.dirty(3) { 2 } else { 1 } {
                if !first {
                    out.push(',');
                }
                first = false;
                ws(rng, &mut out);
                out.push_str(&format!("\"{key}\":"));
                if *key == "nodes" && rng.chance(90) {
                    out.push('[');
                    for i in 0..rng.below(4) {
                        if i > 0 {
                            out.push(',');
                        }
                        ws(rng, &mut out);
                        node(rng, &mut out);
                    }
                    out.push(']');
                } else if *key == "schema_version" && rng.chance(70) {
                    out.push_str(rng.pick(&["\"v1\"", "\"1.0\"", "1", "\"v2\"", "null"]));
                } else {
                    value(rng, &mut out, 1);
                }
            }
        }
        out.push('}');
        ws(rng, &mut out);
        if rng.dirty(3) {
            out.push_str(rng.pick(&["x", "}", ",", "{}"]));
        }
        if rng.dirty(3) {
            let cut = rng.below(out.len());
            let cut = (0..=cut)
                .rev()
                .find(|&i| out.is_char_boundary(i))
                .unwrap_or(0);
            out.truncate(cut);
        }
        out
    }

    /// Every outcome, error messages included, is the serde reader's: the fast reader either
    /// reads a document exactly as serde does or leaves it to serde.
    #[test]
    fn both_readers_agree_on_generated_documents() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15, true);
        let limits = DagLimits::default();
        let (mut read_fast, mut total) = (0, 0);
        for i in 0..20_000 {
            rng.1 = i % 2 == 0;
            let text = document(&mut rng);
            let verify = rng.chance(20);
            // What the readers read, before any check of the whole DAG can mask a difference.
            if let Some(fast) = read(&text) {
                let serde = crate::dag::read_with_serde(&text);
                assert_eq!(
                    format!("{:?}", Ok::<_, DagError>(fast)),
                    format!("{serde:?}"),
                    "document: {text}"
                );
            }
            let expected = format!("{:?}", parse_dag_with_serde(&text, limits, verify));
            let found = format!("{:?}", parse_dag(&text, limits, verify));
            assert_eq!(found, expected, "document: {text}");
            total += 1;
            read_fast += usize::from(read(&text).is_some());
        }
        // The generator must reach the fast reader's paths, not only its ways of giving up.
        assert!(read_fast * 4 > total, "{read_fast} of {total} read fast");
    }

    /// The documents clients send are read by the fast reader, not left to serde.
    #[test]
    fn the_usual_documents_are_read_fast() {
        for text in [
            include_str!("../../../testdata/sdk-dag-10.json"),
            include_str!("../../../testdata/sdk-dag-100.json"),
            include_str!("../../../examples/ma-crossover.json"),
            include_str!("../../../examples/ma-trend.json"),
        ] {
            assert!(read(text).is_some(), "{text}");
        }
    }

    /// Params are written as the serde reader's tree writes them, whichever way they are read.
    #[test]
    fn params_read_either_way_give_the_canonical_blob() {
        for (params, blob) in [
            (r#"{}"#, r#"{}"#),
            (
                r#"{"a":1,"b":[true,null,"x"]}"#,
                r#"{"a":1,"b":[true,null,"x"]}"#,
            ),
            (r#"{ "a" : [1, {"b": -2}] }"#, r#"{"a":[1,{"b":-2}]}"#),
            (r#"{"a":1,"a":2}"#, r#"{"a":2}"#),
            (r#"{"b":1,"a":2}"#, r#"{"a":2,"b":1}"#),
            (r#"{"a":1,"world":"w","env_x":2}"#, r#"{"a":1}"#),
            (
                r#"{"x":1e-7,"y":2.50,"z":-0}"#,
                r#"{"x":1e-07,"y":2.5,"z":-0.0}"#,
            ),
            (
                r#"{"s":"caf\u00e9","t":"tab\t"}"#,
                r#"{"s":"café","t":"tab\t"}"#,
            ),
            (r#"[3,2,1]"#, r#"[3,2,1]"#),
            (r#""text""#, r#""text""#),
            (r#"18446744073709551616"#, r#"1.8446744073709552e+19"#),
        ] {
            let text =
                format!(r#"{{"nodes":[{{"node_type":"SMA","node_id":"n","params":{params}}}]}}"#);
            let blob_of = |read: Option<ReadNodes<'_>>| {
                read.and_then(|read| read.into_nodes().into_iter().next())
                    .map(|node| node.fields.params_blob)
            };
            let (fast, _) = read(&text).expect("read fast");
            let (serde, _) = crate::dag::read_with_serde(&text).expect("read by serde");
            assert_eq!(blob_of(fast).as_deref(), Some(blob), "{params}");
            assert_eq!(blob_of(serde).as_deref(), Some(blob), "{params}");
        }
    }

    #[test]
    fn special_bytes_are_found_in_and_after_whole_words() {
        for text in [
            "\"",
            "abcdefg\"",
            "abcdefgh\"",
            "abcdefghij\\",
            "abc\u{1f}",
            "é\u{7}",
        ] {
            let expected = text
                .bytes()
                .position(|b| b == b'"' || b == b'\\' || b < 0x20);
            assert_eq!(special_byte(text.as_bytes(), 0), expected, "{text:?}");
        }
        assert_eq!(special_byte(b"no special bytes here", 0), None);
        assert_eq!(special_byte(b"\x80\x9f\xff\"", 0), Some(3));
    }
}
