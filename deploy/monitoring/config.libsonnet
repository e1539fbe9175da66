// Selectors and thresholds every rule and dashboard reads: override them here (or with `+::` in
// a mixin of your own) instead of editing the rules.
{
  _config+:: {
    // The scrape jobs of deploy/prometheus/prometheus.yml.
    dagmanagerSelector: 'job="dagmanager"',
    // Where `runbook_url` points: set it to where your operators read docs/runbooks.md.
    runbookUrlBase: 'docs/runbooks.md',

    diffDurationP95ThresholdMs: 200,
    diffFailureRatioThreshold: '0.05',
    gcStallSeconds: 600,
    orphanGrowthWindow: '3h',
  },
}
