//! Checks that keep the workspace in shape: every file says what it owns, functions fit on a
//! screen, and metric names live only in their service's catalogue (`metrics.rs`).

use proc_macro2::{TokenStream, TokenTree};
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use syn::visit::{self, Visit};

/// The longest function, from `fn` to its closing brace, in lines.
pub const MAX_FUNCTION_LINES: usize = 100;

/// Crates whose code may spell metric names out: the test fixtures check the spec's names, and
/// this crate names the suffixes it looks for.
const METRIC_NAME_EXEMPT_CRATES: &[&str] = &["test-support", "tidy"];

/// Endings that make a string literal read as a metric name even when no catalogue has it yet.
const METRIC_SUFFIXES: &[&str] = &[
    "_total",
    "_seconds",
    "_bytes",
    "_p95",
    "_count",
    "_timestamp",
    "_ratio",
    "_info",
];

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    FileHeader,
    LongFunction,
    MetricName,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::FileHeader => "file-header",
            Rule::LongFunction => "long-function",
            Rule::MetricName => "metric-name",
        }
    }
}

/// One place that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    pub path: PathBuf,
    pub line: usize,
    pub rule: Rule,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: [{}] {}",
            self.path.display(),
            self.line,
            self.rule.as_str(),
            self.message
        )
    }
}

/// Why the workspace could not be checked at all.
#[derive(Debug)]
pub enum TidyError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Parse {
        path: PathBuf,
        source: syn::Error,
    },
}

impl fmt::Display for TidyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TidyError::Read { path, .. } => write!(f, "could not read {}", path.display()),
            TidyError::Parse { path, source } => {
                let at = source.span().start();
                write!(f, "could not parse {}:{}", path.display(), at.line)
            }
        }
    }
}

impl std::error::Error for TidyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TidyError::Read { source, .. } => Some(source),
            TidyError::Parse { source, .. } => Some(source),
        }
    }
}

/// A Rust source file of the workspace, read and parsed.
#[derive(Debug)]
pub struct SourceFile {
    /// Relative to the workspace root.
    pub path: PathBuf,
    pub text: String,
    pub syntax: syn::File,
}

impl SourceFile {
    pub fn parse(path: PathBuf, text: String) -> Result<SourceFile, TidyError> {
        let syntax = syn::parse_file(&text).map_err(|source| TidyError::Parse {
            path: path.clone(),
            source,
        })?;
        Ok(SourceFile { path, text, syntax })
    }

    /// The crate's folder name (`crates/<name>/...`).
    fn crate_name(&self) -> Option<&str> {
        let mut parts = self.path.components().map(|c| c.as_os_str().to_str());
        match (parts.next(), parts.next()) {
            (Some(Some("crates")), Some(Some(name))) => Some(name),
            _ => None,
        }
    }

    /// Library or binary code (`crates/*/src/...`), as opposed to tests, benches or build scripts.
    fn is_product_code(&self) -> bool {
        self.path
            .components()
            .nth(2)
            .and_then(|c| c.as_os_str().to_str())
            == Some("src")
    }

    fn is_metric_catalogue(&self) -> bool {
        self.is_product_code()
            && self.path.file_name().and_then(|n| n.to_str()) == Some("metrics.rs")
    }
}

/// Every `.rs` file under `root/crates`, parsed, in path order.
pub fn workspace_sources(root: &Path) -> Result<Vec<SourceFile>, TidyError> {
    let mut paths = Vec::new();
    collect_rust_files(&root.join("crates"), &mut paths)?;
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|source| TidyError::Read {
                path: path.clone(),
                source,
            })?;
            let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            SourceFile::parse(relative, text)
        })
        .collect()
}

fn collect_rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), TidyError> {
    let entries = std::fs::read_dir(dir).map_err(|source| TidyError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let path = entry
            .map_err(|source| TidyError::Read {
                path: dir.to_path_buf(),
                source,
            })?
            .path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if path.is_dir() {
            // Build output and fuzzing corpora are not source.
            if !matches!(name, "target" | "corpus" | "artifacts") && !name.starts_with('.') {
                collect_rust_files(&path, out)?;
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Every finding of every rule over `sources`, sorted.
pub fn check(sources: &[SourceFile]) -> Vec<Finding> {
    let catalogue = metric_catalogue(sources);
    let mut findings: Vec<Finding> = sources
        .iter()
        .flat_map(|source| {
            let mut found = Vec::new();
            found.extend(check_file_header(source));
            found.extend(check_function_lengths(source));
            found.extend(check_metric_names(source, &catalogue));
            found
        })
        .collect();
    findings.sort();
    findings
}

/// A file must open with a `//!` line saying what it owns.
pub fn check_file_header(source: &SourceFile) -> Option<Finding> {
    let first = source.text.lines().next().unwrap_or_default();
    (!first.starts_with("//!")).then(|| Finding {
        path: source.path.clone(),
        line: 1,
        rule: Rule::FileHeader,
        message: "the file does not open with a `//!` line saying what it owns".into(),
    })
}

/// Functions (free, in impls and traits, nested) longer than [`MAX_FUNCTION_LINES`].
pub fn check_function_lengths(source: &SourceFile) -> Vec<Finding> {
    let mut visitor = FunctionLengths {
        path: &source.path,
        findings: Vec::new(),
    };
    visitor.visit_file(&source.syntax);
    visitor.findings
}

struct FunctionLengths<'a> {
    path: &'a Path,
    findings: Vec<Finding>,
}

impl FunctionLengths<'_> {
    fn measure(&mut self, signature: &syn::Signature, body: &syn::Block) {
        let start = signature.fn_token.span.start().line;
        let end = body.brace_token.span.close().end().line;
        let lines = end.saturating_sub(start) + 1;
        if lines > MAX_FUNCTION_LINES {
            self.findings.push(Finding {
                path: self.path.to_path_buf(),
                line: start,
                rule: Rule::LongFunction,
                message: format!(
                    "`{}` is {lines} lines long (at most {MAX_FUNCTION_LINES}): split it into named phases",
                    signature.ident
                ),
            });
        }
    }
}

impl<'ast> Visit<'ast> for FunctionLengths<'_> {
    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        self.measure(&item.sig, &item.block);
        visit::visit_item_fn(self, item);
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        self.measure(&item.sig, &item.block);
        visit::visit_impl_item_fn(self, item);
    }

    fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
        if let Some(body) = &item.default {
            self.measure(&item.sig, body);
        }
        visit::visit_trait_item_fn(self, item);
    }
}

/// The metric names the services' catalogues define: every name-shaped string literal in a
/// `const` or `static` of a `crates/*/src/metrics.rs` (`pub const DIFF_REQUESTS_TOTAL: &str =
/// "diff_requests_total"`, or a breaker's names). Label names used in code are not among them.
pub fn metric_catalogue(sources: &[SourceFile]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for source in sources.iter().filter(|s| s.is_metric_catalogue()) {
        for item in &source.syntax.items {
            let value = match item {
                syn::Item::Const(constant) => &constant.expr,
                syn::Item::Static(static_item) => &static_item.expr,
                _ => continue,
            };
            let mut literals = StringLiterals::default();
            literals.visit_expr(value);
            names.extend(
                literals
                    .found
                    .into_iter()
                    .map(|(_, value)| value)
                    .filter(|value| is_name_shaped(value)),
            );
        }
    }
    names
}

/// Metric names spelled out in product code outside a `metrics.rs`: a string literal that is a
/// catalogued name, or that is name-shaped with a metric's ending. Test code is exempt.
pub fn check_metric_names(source: &SourceFile, catalogue: &BTreeSet<String>) -> Vec<Finding> {
    let exempt = source
        .crate_name()
        .is_some_and(|name| METRIC_NAME_EXEMPT_CRATES.contains(&name));
    if !source.is_product_code() || source.is_metric_catalogue() || exempt {
        return Vec::new();
    }
    let mut literals = StringLiterals::default();
    literals.visit_file(&source.syntax);
    literals
        .found
        .into_iter()
        .filter(|(_, value)| catalogue.contains(value) || looks_like_a_metric(value))
        .map(|(line, value)| Finding {
            path: source.path.clone(),
            line,
            rule: Rule::MetricName,
            message: format!(
                "the metric name \"{value}\" is spelled out here: use the constant from the service's metrics.rs"
            ),
        })
        .collect()
}

/// `snake_case` with at least one underscore, as every metric name of ours is.
fn is_name_shaped(value: &str) -> bool {
    let mut chars = value.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && value.contains('_')
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !value.ends_with('_')
        && !value.contains("__")
}

fn looks_like_a_metric(value: &str) -> bool {
    is_name_shaped(value) && METRIC_SUFFIXES.iter().any(|suffix| value.ends_with(suffix))
}

/// Every string literal outside test code, with its line: in expressions, attributes' values
/// and macro arguments alike.
#[derive(Default)]
struct StringLiterals {
    found: Vec<(usize, String)>,
}

impl StringLiterals {
    fn tokens(&mut self, tokens: TokenStream) {
        for token in tokens {
            match token {
                TokenTree::Group(group) => self.tokens(group.stream()),
                TokenTree::Literal(literal) => {
                    let line = literal.span().start().line;
                    let stream = TokenStream::from(TokenTree::Literal(literal));
                    if let Ok(text) = syn::parse2::<syn::LitStr>(stream) {
                        self.found.push((line, text.value()));
                    }
                }
                TokenTree::Ident(_) | TokenTree::Punct(_) => {}
            }
        }
    }
}

/// `#[cfg(test)]` or `#[test]`: code that exists only in tests.
fn is_test_only(attributes: &[syn::Attribute]) -> bool {
    attributes.iter().any(|attribute| {
        let path = attribute.path();
        if path.is_ident("test") {
            return true;
        }
        path.is_ident("cfg")
            && attribute
                .parse_args::<syn::Ident>()
                .is_ok_and(|ident| ident == "test")
    })
}

impl<'ast> Visit<'ast> for StringLiterals {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attributes = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            _ => return visit::visit_item(self, item),
        };
        if !is_test_only(attributes) {
            visit::visit_item(self, item);
        }
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        if !is_test_only(&item.attrs) {
            visit::visit_impl_item_fn(self, item);
        }
    }

    fn visit_lit_str(&mut self, literal: &'ast syn::LitStr) {
        self.found
            .push((literal.span().start().line, literal.value()));
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
    }
}

/// PromQL words that are not metric names when they stand alone: operators, modifiers, and the
/// aggregations, which may be followed by `by (...)` before their parenthesis.
const PROMQL_KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "atan2",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Clauses whose parenthesised list holds label names, not metrics.
const PROMQL_LABEL_CLAUSES: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression reads: its identifiers other than functions, keywords,
/// label names (in matchers and in `by (...)`-style clauses), strings and durations.
pub fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_past(&chars, i + 1, c);
        } else if c == '{' {
            i = skip_past(&chars, i + 1, '}');
        } else if c == '[' {
            i = skip_past(&chars, i + 1, ']');
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (`5m`, `1e3`).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let called = chars.get(next) == Some(&'(');
            if PROMQL_LABEL_CLAUSES.contains(&word.as_str()) && called {
                i = skip_past(&chars, next + 1, ')');
            } else if !called && !PROMQL_KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index just past the first `close` at or after `from` (a backslash escapes in strings).
fn skip_past(chars: &[char], from: usize, close: char) -> usize {
    let mut i = from;
    while i < chars.len() {
        if chars[i] == '\\' {
            i += 2;
            continue;
        }
        if chars[i] == close {
            return i + 1;
        }
        i += 1;
    }
    chars.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(path: &str, text: &str) -> SourceFile {
        SourceFile::parse(PathBuf::from(path), text.to_owned()).expect("test source parses")
    }

    fn rules(findings: &[Finding]) -> Vec<(Rule, usize)> {
        findings.iter().map(|f| (f.rule, f.line)).collect()
    }

    #[test]
    fn a_file_without_its_opening_doc_line_is_found() {
        let bare = source("crates/a/src/lib.rs", "// a plain comment\nfn f() {}\n");
        let headed = source("crates/a/src/lib.rs", "//! Owns f.\nfn f() {}\n");
        assert_eq!(rules(&check(&[bare])), vec![(Rule::FileHeader, 1)]);
        assert!(check(&[headed]).is_empty());
    }

    #[test]
    fn functions_over_the_limit_are_found_wherever_they_are() {
        let body = |lines: usize| "    let _x = 1;\n".repeat(lines - 2);
        let text = format!(
            "//! Lengths.\nfn ok() {{\n{}}}\nstruct S;\nimpl S {{\n    fn long(&self) {{\n{}    }}\n}}\ntrait T {{\n    fn provided() {{\n{}    }}\n}}\n",
            body(MAX_FUNCTION_LINES),
            body(MAX_FUNCTION_LINES + 1),
            body(MAX_FUNCTION_LINES + 5),
        );
        let findings = check(&[source("crates/a/src/lib.rs", &text)]);
        let names: Vec<&str> = findings
            .iter()
            .map(|f| f.message.split('`').nth(1).unwrap_or_default())
            .collect();
        assert_eq!(names, vec!["long", "provided"], "{findings:#?}");
        assert!(findings.iter().all(|f| f.rule == Rule::LongFunction));
    }

    #[test]
    fn a_nested_function_is_measured_on_its_own() {
        let inner = "        let _x = 1;\n".repeat(MAX_FUNCTION_LINES);
        let text = format!("//! Nested.\nfn outer() {{\n    fn inner() {{\n{inner}    }}\n}}\n");
        let findings = check(&[source("crates/a/src/lib.rs", &text)]);
        // Both the outer function (which holds it) and the inner one are too long.
        assert_eq!(findings.len(), 2, "{findings:#?}");
    }

    #[test]
    fn metric_names_outside_the_catalogue_are_found_in_code_and_macros() {
        let catalogue = source(
            "crates/svc/src/metrics.rs",
            "//! Catalogue.\npub const DIFFS: &str = \"diff_requests_total\";\npub const UP: &str = \"service_up\";\nfn labels() { let _ = [(\"world_id\", 1)]; }\n",
        );
        let user = source(
            "crates/svc/src/run.rs",
            "//! Uses names.\nfn f() {\n    let _a = \"diff_requests_total\";\n    tracing::info!(name = \"service_up\", \"done\");\n    let _c = format!(\"{}\", \"new_thing_seconds\");\n    let _d = \"not a metric\";\n    let _e = \"world_id\";\n}\n",
        );
        let findings = check(&[catalogue, user]);
        assert_eq!(
            rules(&findings),
            vec![
                (Rule::MetricName, 3),
                (Rule::MetricName, 4),
                (Rule::MetricName, 5)
            ],
            "{findings:#?}"
        );
    }

    #[test]
    fn test_code_tests_benches_and_fixtures_may_spell_names_out() {
        let catalogue = source(
            "crates/svc/src/metrics.rs",
            "//! Catalogue.\npub const DIFFS: &str = \"diff_requests_total\";\n",
        );
        let unit_test = source(
            "crates/svc/src/run.rs",
            "//! Tests inside.\n#[cfg(test)]\nmod tests {\n    fn f() { let _a = \"diff_requests_total\"; }\n}\n",
        );
        let integration = source(
            "crates/svc/tests/it/main.rs",
            "//! Integration.\nfn f() { let _a = \"diff_requests_total\"; }\n",
        );
        let fixture = source(
            "crates/test-support/src/lib.rs",
            "//! Fixtures.\npub const NAMES: &[&str] = &[\"diff_requests_total\"];\n",
        );
        assert!(check(&[catalogue, unit_test, integration, fixture]).is_empty());
    }

    #[test]
    fn a_file_that_does_not_parse_is_an_error_naming_it() {
        let error = SourceFile::parse(PathBuf::from("crates/a/src/bad.rs"), "fn (".into())
            .expect_err("invalid Rust");
        assert!(error.to_string().contains("crates/a/src/bad.rs"), "{error}");
    }

    #[test]
    fn promql_metric_names_are_the_identifiers_that_are_neither_calls_nor_labels() {
        let names = |expr: &str| -> Vec<String> { promql_metric_names(expr).into_iter().collect() };
        assert_eq!(
            names(
                "sum by (job, instance) (rate(diff_failures_total{job=\"dm\", le=~\"a|b\"}[5m])) / on (job) group_left(node_id) x:y:z > 0.05"
            ),
            vec!["diff_failures_total", "x:y:z"]
        );
        assert_eq!(
            names("time() - max by (job) (gc_last_run_timestamp offset 3h) > 600 and up == 0"),
            vec!["gc_last_run_timestamp", "up"]
        );
        assert_eq!(
            names("histogram_quantile(0.95, sum by (le) (rate(h_bucket[5m]))) > bool 1e3"),
            vec!["h_bucket"]
        );
        assert_eq!(
            names("label_replace(a, \"dst\", \"$1\", \"src\", \"(.*)\")"),
            vec!["a"]
        );
    }
}
