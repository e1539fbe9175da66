//! The fast reader's scanner: JSON read byte by byte (whitespace, strings, numbers, literals,
//! lists, objects) and values skipped, written canonically or read as trees. It knows no DAG.

use crate::canonical::{Sorted, is_context_key, write_string};
use serde_json::{Number, Value};
use std::borrow::Cow;

/// Nesting followed within one field's value (so a document's is at most a few levels more);
/// deeper documents are left to serde, whose own limit is 128 levels.
pub(super) const MAX_DEPTH: usize = 64;

// Params written as they are read are read back by serde_json (`Sorted::to_value`), which must
// be able to: their nesting has to stay under its limit.
const _: () = assert!(MAX_DEPTH + 8 < 128);

/// A position in a document being read. Every reading method answers `None` on anything it is
/// not sure of, leaving the document to serde.
pub(super) struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(text: &'a str) -> Reader<'a> {
        Reader {
            text,
            bytes: text.as_bytes(),
            pos: 0,
        }
    }

    /// Whether the whole document was read.
    pub(super) fn at_end(&self) -> bool {
        self.pos == self.bytes.len()
    }

    pub(super) fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    pub(super) fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Skips whitespace and eats `byte`.
    pub(super) fn eat(&mut self, byte: u8) -> Option<()> {
        self.ws();
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// After an item of an object or array: `true` if another follows, `false` at `close`.
    pub(super) fn more(&mut self, close: u8) -> Option<bool> {
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
    pub(super) fn open(&mut self, open: u8, close: u8) -> Option<bool> {
        self.eat(open)?;
        self.ws();
        if self.peek()? == close {
            self.pos += 1;
            return Some(false);
        }
        Some(true)
    }

    /// Reads a list at the reader, each item with `item` (given the item's index).
    pub(super) fn list(
        &mut self,
        mut item: impl FnMut(&mut Self, usize) -> Option<()>,
    ) -> Option<()> {
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
    pub(super) fn object(
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

    pub(super) fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.bytes.get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// Reads `null`, or leaves the reader where it was and answers `false`.
    pub(super) fn null(&mut self) -> Option<bool> {
        self.ws();
        if self.peek()? != b'n' {
            return Some(false);
        }
        self.literal(b"null")?;
        Some(true)
    }

    /// A string at the reader (after whitespace).
    pub(super) fn string(&mut self) -> Option<Cow<'a, str>> {
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
    pub(super) fn number(&mut self) -> Option<Number> {
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
    pub(super) fn skip(&mut self, depth: usize) -> Option<()> {
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
    pub(super) fn optional_value(&mut self) -> Option<Option<Value>> {
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
    pub(super) fn sorted(&mut self, depth: usize) -> Option<Sorted<'a>> {
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
    pub(super) fn optional_params(&mut self) -> Option<Option<Sorted<'a>>> {
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
    pub(super) fn write_canonical(&mut self, out: &mut String, depth: usize) -> Option<()> {
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
