//! The operator's half held to the code: `alert_rules.yml` is what the mixin renders, Prometheus
//! loads it, every alert has a `promtool test rules` case that fires and one that stays quiet, a
//! runbook section, and uses only metrics some service's catalogue defines.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root")
}

/// Runs a tool from the workspace root; its stdout, or the test fails saying how to install it.
fn run(tool: &str, args: &[&str], install: &str) -> String {
    let output = Command::new(tool)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{tool} is not installed ({e}): {install}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{tool} {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

const JSONNET: &str = "run ./scripts/tools/jsonnet.sh, or ./scripts/test.sh which does";
const PROMTOOL: &str = "run ./scripts/tools/promtool.sh, or ./scripts/test.sh which does";

/// The mixin's alerting groups, as JSON.
fn alerts() -> Vec<Value> {
    let text = run(
        "jsonnet",
        &[
            "-J",
            "deploy/monitoring",
            "-e",
            "(import 'mixin.libsonnet').prometheusAlerts",
        ],
        JSONNET,
    );
    let alerts: Value = serde_json::from_str(&text).expect("the mixin renders JSON");
    alerts["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().expect("rules").clone())
        .collect()
}

fn test_files() -> Vec<PathBuf> {
    let dir = root().join("deploy/prometheus/tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.to_string_lossy().ends_with(".test.yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no promtool tests in {}", dir.display());
    files
}

#[test]
fn the_committed_rules_are_what_the_mixin_renders() {
    let rendered = run(
        "jsonnet",
        &[
            "-S",
            "-J",
            "deploy/monitoring",
            "deploy/monitoring/alert_rules.jsonnet",
        ],
        JSONNET,
    );
    let committed =
        std::fs::read_to_string(root().join("alert_rules.yml")).expect("alert_rules.yml");
    assert!(
        committed == rendered,
        "alert_rules.yml differs from what deploy/monitoring renders: run scripts/monitoring/render.sh"
    );
}

#[test]
fn prometheus_loads_the_rules_and_every_promtool_test_passes() {
    run("promtool", &["check", "rules", "alert_rules.yml"], PROMTOOL);
    let files: Vec<String> = test_files()
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let mut args = vec!["test", "rules"];
    args.extend(files.iter().map(String::as_str));
    run("promtool", &args, PROMTOOL);
}

#[test]
fn every_alert_has_a_firing_case_and_a_quiet_case() {
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for file in test_files() {
        let text = std::fs::read_to_string(&file).expect("a test file");
        let documents =
            YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for test in documents[0]["tests"].as_vec().expect("tests") {
            for case in test["alert_rule_test"].as_vec().into_iter().flatten() {
                let name = case["alertname"].as_str().expect("alertname").to_owned();
                match &case["exp_alerts"] {
                    Yaml::Array(expected) if !expected.is_empty() => firing.insert(name),
                    _ => quiet.insert(name),
                };
            }
        }
    }
    for alert in alerts() {
        let name = alert["alert"].as_str().expect("an alert name");
        assert!(
            firing.contains(name),
            "{name} has no promtool case where it fires"
        );
        assert!(
            quiet.contains(name),
            "{name} has no promtool case where it stays quiet"
        );
    }
}

#[test]
fn every_alert_says_how_bad_what_and_where_to_read_more() {
    let runbooks = std::fs::read_to_string(root().join("docs/runbooks.md")).expect("runbooks");
    for alert in alerts() {
        let name = alert["alert"].as_str().expect("an alert name");
        let severity = alert["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["warning", "critical"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        let annotations = &alert["annotations"];
        for key in ["summary", "description"] {
            let text = annotations[key].as_str().unwrap_or_default();
            assert!(
                text.contains("$labels") || text.contains("$value"),
                "{name}: its {key} names neither a label nor the value: {text:?}"
            );
        }
        let anchor = format!("#{}", name.to_ascii_lowercase());
        assert!(
            annotations["runbook_url"]
                .as_str()
                .is_some_and(|url| url.ends_with(&anchor)),
            "{name}: runbook_url"
        );
        assert!(
            runbooks.contains(&format!("\n## {name}\n")),
            "{name} has no section in docs/runbooks.md"
        );
    }
}

#[test]
fn every_metric_a_rule_reads_is_in_a_service_catalogue() {
    let sources = tidy::workspace_sources(&root()).expect("the workspace's sources");
    let catalogue = tidy::metric_catalogue(&sources);
    let rules = run(
        "jsonnet",
        &[
            "-J",
            "deploy/monitoring",
            "-e",
            "local m = import 'mixin.libsonnet'; m.prometheusAlerts.groups + m.prometheusRules.groups",
        ],
        JSONNET,
    );
    let groups: Value = serde_json::from_str(&rules).expect("JSON");
    let mut unknown = BTreeSet::new();
    for rule in groups
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
    {
        let expr = rule["expr"].as_str().expect("an expr");
        for metric in tidy::promql_metric_names(expr) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| metric.strip_suffix(suffix))
                .filter(|base| catalogue.contains(*base))
                .unwrap_or(&metric);
            if !catalogue.contains(base) && metric != "up" {
                unknown.insert(metric);
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "rules read metrics no service exports: {unknown:?}"
    );
}

/// The scrape jobs and their targets of `deploy/prometheus/prometheus.yml`.
fn scrape_jobs() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(root().join("deploy/prometheus/prometheus.yml"))
        .expect("prometheus.yml");
    let config = &YamlLoader::load_from_str(&text).expect("YAML")[0];
    config["scrape_configs"]
        .as_vec()
        .expect("scrape_configs")
        .iter()
        .map(|job| {
            let targets = job["static_configs"]
                .as_vec()
                .into_iter()
                .flatten()
                .flat_map(|c| c["targets"].as_vec().cloned().unwrap_or_default())
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect();
            (
                job["job_name"].as_str().expect("job_name").to_owned(),
                targets,
            )
        })
        .collect()
}

#[test]
fn prometheus_loads_its_configuration_and_scrapes_every_job_the_rules_select() {
    run(
        "promtool",
        &["check", "config", "deploy/prometheus/prometheus.yml"],
        PROMTOOL,
    );
    let jobs: BTreeSet<String> = scrape_jobs().into_iter().map(|(name, _)| name).collect();
    let config = run(
        "jsonnet",
        &[
            "-J",
            "deploy/monitoring",
            "-e",
            "(import 'mixin.libsonnet')._config",
        ],
        JSONNET,
    );
    let config: Value = serde_json::from_str(&config).expect("JSON");
    let mut selected = BTreeSet::new();
    for value in config.as_object().expect("_config").values() {
        let Some(selector) = value.as_str() else {
            continue;
        };
        for prefix in ["job=\"", "job=~\""] {
            if let Some(rest) = selector.strip_prefix(prefix) {
                let names = rest.trim_end_matches('"');
                selected.extend(names.split('|').map(str::to_owned));
            }
        }
    }
    assert!(selected.len() >= 4, "selectors found: {selected:?}");
    let missing: Vec<_> = selected.difference(&jobs).collect();
    assert!(
        missing.is_empty(),
        "rules select jobs prometheus.yml does not scrape: {missing:?}"
    );
}

#[test]
fn the_scrape_targets_are_the_ports_qmtl_yml_gives_the_services() {
    let text = std::fs::read_to_string(root().join("qmtl.yml")).expect("qmtl.yml");
    let settings = &YamlLoader::load_from_str(&text).expect("YAML")[0];
    let port = |section: &str, key: &str| -> String {
        let port = settings[section][key]
            .as_i64()
            .unwrap_or_else(|| panic!("qmtl.yml has no {section}.{key}"));
        format!("127.0.0.1:{port}")
    };
    let expected = [
        ("dagmanager", port("dagmanager", "admin_port")),
        ("gateway", port("gateway", "port")),
        ("sdk", port("sdk", "metrics_port")),
    ];
    let jobs = scrape_jobs();
    for (job, target) in expected {
        let targets = &jobs
            .iter()
            .find(|(name, _)| name == job)
            .unwrap_or_else(|| panic!("no scrape job {job}"))
            .1;
        assert_eq!(targets, &vec![target], "job {job}");
    }
}
