// Selectors and thresholds every rule and dashboard reads: override them here (or with `+::` in
// a mixin of your own) instead of editing the rules.
{
  _config+:: {
    // The scrape jobs of deploy/prometheus/prometheus.yml.
    dagmanagerSelector: 'job="dagmanager"',
    gatewaySelector: 'job="gateway"',
    sdkSelector: 'job="sdk"',
    // Both sides count cross-context reuse: the DAG Manager's diff and the SDK runtime's cache.
    crossContextSelector: 'job=~"dagmanager|sdk"',
    // Every QMTL job, for the stack-wide alerts.
    qmtlSelector: 'job=~"dagmanager|gateway|sdk|dagmanager-metrics"',
    // Where `runbook_url` points: set it to where your operators read docs/runbooks.md.
    runbookUrlBase: 'docs/runbooks.md',

    diffDurationP95ThresholdMs: 200,
    diffFailureRatioThreshold: '0.05',
    gcStallSeconds: 600,
    orphanGrowthWindow: '3h',
    gatewayLatencyP95ThresholdMs: 150,
    gatewayErrorRatioThreshold: '0.05',
    nodeP95ThresholdMs: 500,
    nodeCacheBytesThreshold: 5e9,
    processMemoryBytesThreshold: 2147483648,
  },
}
