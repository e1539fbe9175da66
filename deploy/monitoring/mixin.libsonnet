// The QMTL monitoring mixin: one object with prometheusAlerts, prometheusRules and
// grafanaDashboards, as the Prometheus monitoring mixins are shaped. Rendered into the repository's
// alert_rules.yml by scripts/monitoring/render.sh.
(import 'config.libsonnet') +
(import 'alerts.libsonnet') +
(import 'rules.libsonnet') +
{
  prometheusAlerts+:: { groups+: [] },
  prometheusRules+:: { groups+: [] },
  grafanaDashboards+:: {},
}
