//! The fast reader held to the serde reader: on generated documents, the usual ones, and params.

use super::*;
use crate::dag::ReadNodes;
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
        include_str!("../../../../testdata/sdk-dag-10.json"),
        include_str!("../../../../testdata/sdk-dag-100.json"),
        include_str!("../../../../examples/ma-crossover.json"),
        include_str!("../../../../examples/ma-trend.json"),
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
