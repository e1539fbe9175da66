// Alerting rules, one group per service. Counters alert on increase()/rate(), so every alert
// clears on its own once the cause is gone.
{
  local c = $._config,
  local runbook(name) = '%s#%s' % [c.runbookUrlBase, std.asciiLower(name)],
  local alert(name, expr, severity, summary, description, forDuration='') = {
    alert: name,
    expr: expr,
    labels: { severity: severity },
    annotations: {
      summary: summary,
      description: description,
      runbook_url: runbook(name),
    },
  } + (if forDuration == '' then {} else { 'for': forDuration }),

  prometheusAlerts+:: {
    groups+: [
      {
        name: 'qmtl-dagmanager',
        rules: [
          alert(
            'DiffDurationHigh',
            'max by (job, instance) (diff_duration_ms_p95{%s}) > %d' % [c.dagmanagerSelector, c.diffDurationP95ThresholdMs],
            'warning',
            'DAG Manager diffs are slow on {{ $labels.instance }}',
            'The p95 of diffs over the recent window is {{ $value | printf "%%.0f" }} ms (threshold %d ms).' % c.diffDurationP95ThresholdMs,
            '5m',
          ),
          alert(
            'DiffFailureRateHigh',
            |||
              sum by (job, instance) (rate(diff_failures_total{%(sel)s}[5m]))
                /
              sum by (job, instance) (rate(diff_requests_total{%(sel)s}[5m]))
                > %(ratio)s
            ||| % { sel: c.dagmanagerSelector, ratio: c.diffFailureRatioThreshold },
            'warning',
            'Many DAG Manager diffs fail on {{ $labels.instance }}',
            '{{ $value | humanizePercentage }} of diffs failed over the last 5 minutes (threshold %s).' % c.diffFailureRatioThreshold,
            '5m',
          ),
          alert(
            'QueueCreateErrors',
            'increase(queue_create_error_total{%s}[5m]) > 0' % c.dagmanagerSelector,
            'warning',
            'The DAG Manager could not create queues on {{ $labels.instance }}',
            '{{ $value | printf "%.0f" }} queue creations failed in the last 5 minutes; the diffs that needed them failed.',
          ),
          alert(
            'SentinelGap',
            'increase(sentinel_gap_count{%s}[10m]) > 0' % c.dagmanagerSelector,
            'warning',
            'A strategy version created no new node on {{ $labels.instance }}',
            '{{ $value | printf "%.0f" }} diffs in the last 10 minutes carried a version sentinel but created no new node.',
          ),
          alert(
            'OrphanQueuesGrowing',
            'delta(orphan_queue_total{%s}[%s]) > 0' % [c.dagmanagerSelector, c.orphanGrowthWindow],
            'warning',
            'Orphan queues keep growing on {{ $labels.instance }}',
            'Orphan queues rose by {{ $value | printf "%%.0f" }} over %s: GC is not keeping up or its policies keep them.' % c.orphanGrowthWindow,
            '15m',
          ),
          alert(
            'GCSchedulerStall',
            'time() - max by (job, instance) (gc_last_run_timestamp{%s}) > %d' % [c.dagmanagerSelector, c.gcStallSeconds],
            'warning',
            'Queue GC has not run on {{ $labels.instance }}',
            'The last completed GC run was {{ $value | humanizeDuration }} ago (threshold %ds).' % c.gcStallSeconds,
            '5m',
          ),
          alert(
            'CrossContextCacheHit',
            'increase(cross_context_cache_hit_total{%s}[5m]) > 0' % c.crossContextSelector,
            'critical',
            'A queue was offered to another compute context on {{ $labels.instance }}',
            'Node {{ $labels.node_id }} was reused across contexts (world {{ $labels.world_id }}, domain {{ $labels.execution_domain }}); the SLO is zero.',
          ),
          alert(
            'KafkaBreakerOpen',
            'max by (job, instance) (kafka_breaker_state{%(sel)s}) == 1 or max by (job, instance) (increase(kafka_breaker_open_total{%(sel)s}[10m])) > 0' % { sel: c.dagmanagerSelector },
            'critical',
            'The DAG Manager cannot reach Kafka from {{ $labels.instance }}',
            'The Kafka circuit breaker of {{ $labels.instance }} opened in the last 10 minutes or is open now: diffs that create queues fail at once until the broker answers the health probe.',
          ),
          alert(
            'QueueLagHigh',
            'queue_lag_seconds > on (job, instance, topic) queue_lag_threshold_seconds',
            'warning',
            'Queue {{ $labels.topic }} lags',
            'The oldest unconsumed record of {{ $labels.topic }} is {{ $value | humanizeDuration }} old, over its threshold.',
            '5m',
          ),
        ],
      },
      {
        name: 'qmtl-gateway',
        rules: [
          alert(
            'GatewayLatencyHigh',
            'max by (job, instance) (gateway_e2e_latency_p95{%s}) > %d' % [c.gatewaySelector, c.gatewayLatencyP95ThresholdMs],
            'warning',
            'Submissions are slow on {{ $labels.instance }}',
            'The p95 of POST /strategies over the recent window is {{ $value | printf "%%.0f" }} ms (threshold %d ms).' % c.gatewayLatencyP95ThresholdMs,
            '5m',
          ),
          alert(
            'GatewayErrorRateHigh',
            |||
              sum by (job, instance) (rate(gateway_request_duration_seconds_count{%(sel)s, status=~"5.."}[5m]))
                /
              sum by (job, instance) (rate(gateway_request_duration_seconds_count{%(sel)s}[5m]))
                > %(ratio)s
            ||| % { sel: c.gatewaySelector, ratio: c.gatewayErrorRatioThreshold },
            'warning',
            'The Gateway answers many requests with 5xx on {{ $labels.instance }}',
            '{{ $value | humanizePercentage }} of requests got a 5xx over the last 5 minutes (threshold %s).' % c.gatewayErrorRatioThreshold,
            '5m',
          ),
          alert(
            'LostRequests',
            'increase(lost_requests_total{%s}[5m]) > 0' % c.gatewaySelector,
            'critical',
            'The Gateway lost accepted submissions on {{ $labels.instance }}',
            '{{ $value | printf "%.0f" }} submissions accepted in the last 5 minutes could not be carried to the DAG Manager.',
          ),
          alert(
            'DagManagerBreakerOpen',
            'max by (job, instance) (dagclient_breaker_state{%(sel)s}) == 1 or max by (job, instance) (increase(dagclient_breaker_open_total{%(sel)s}[10m])) > 0' % { sel: c.gatewaySelector },
            'critical',
            'The Gateway cannot reach the DAG Manager from {{ $labels.instance }}',
            'The DAG Manager circuit breaker of {{ $labels.instance }} opened in the last 10 minutes or is open now: submissions are accepted and wait, queued, until the probe closes it.',
          ),
        ],
      },
      {
        name: 'qmtl-sdk',
        rules: [
          alert(
            'NodeSlowProcessing',
            'histogram_quantile(0.95, sum by (job, instance, node_id, le) (rate(node_process_duration_ms_bucket{%s}[5m]))) > %d' % [c.sdkSelector, c.nodeP95ThresholdMs],
            'warning',
            'Node {{ $labels.node_id }} computes slowly on {{ $labels.instance }}',
            'The p95 of node {{ $labels.node_id }} is {{ $value | printf "%%.0f" }} ms over the last 5 minutes (threshold %d ms).' % c.nodeP95ThresholdMs,
            '10m',
          ),
          alert(
            'NodeFailures',
            'increase(node_process_failure_total{%s}[5m]) > 0' % c.sdkSelector,
            'warning',
            'Node {{ $labels.node_id }} fails on {{ $labels.instance }}',
            'Node {{ $labels.node_id }} failed {{ $value | printf "%.0f" }} times in the last 5 minutes; its strategy goes on without those outputs.',
          ),
          alert(
            'BackfillFailures',
            'increase(backfill_failure_total{%s}[15m]) > 0' % c.sdkSelector,
            'warning',
            'Backfill of {{ $labels.node_id }} fails on {{ $labels.instance }}',
            'Backfill of node {{ $labels.node_id }} (interval {{ $labels.interval }}) failed {{ $value | printf "%.0f" }} times in the last 15 minutes.',
          ),
          alert(
            'RecordsRefused',
            'increase(runtime_bad_records_total{%s}[10m]) > 0' % c.sdkSelector,
            'warning',
            'The SDK runtime refused records as invalid on {{ $labels.instance }}',
            '{{ $value | printf "%.0f" }} records read from queues in the last 10 minutes were not valid envelopes and were skipped.',
          ),
          alert(
            'NodeCacheMemoryHigh',
            'max by (job, instance) (nodecache_resident_bytes{%s, scope="total"}) > %d' % [c.sdkSelector, c.nodeCacheBytesThreshold],
            'warning',
            'The node cache is large on {{ $labels.instance }}',
            'Node caches hold {{ $value | humanize1024 }}B (threshold %s).' % std.toString(c.nodeCacheBytesThreshold),
            '10m',
          ),
          alert(
            'GatewayClientBreakerOpen',
            'max by (job, instance) (gatewayclient_breaker_state{%(sel)s}) == 1 or max by (job, instance) (increase(gatewayclient_breaker_open_total{%(sel)s}[10m])) > 0' % { sel: c.sdkSelector },
            'critical',
            'The SDK runtime cannot reach the Gateway from {{ $labels.instance }}',
            'The Gateway circuit breaker of {{ $labels.instance }} opened in the last 10 minutes or is open now: submissions fail at once until the Gateway answers GET /health.',
          ),
        ],
      },
      {
        name: 'qmtl-stack',
        rules: [
          alert(
            'ServiceDown',
            'up{%s} == 0' % c.qmtlSelector,
            'critical',
            '{{ $labels.job }} on {{ $labels.instance }} is down',
            'Prometheus could not scrape {{ $labels.job }} on {{ $labels.instance }} for a minute.',
            '1m',
          ),
          alert(
            'ServiceUnhealthy',
            'qmtl_ready{%s} == 0' % c.qmtlSelector,
            'critical',
            '{{ $labels.job }} on {{ $labels.instance }} is up but not ready',
            '{{ $labels.job }} on {{ $labels.instance }} answers its scrapes but has said not ready (/readyz) for 2 minutes: a dependency it needs is away.',
            '2m',
          ),
          alert(
            'ProcessMemoryHigh',
            'process_resident_memory_bytes{%s} > %d' % [c.qmtlSelector, c.processMemoryBytesThreshold],
            'warning',
            '{{ $labels.job }} on {{ $labels.instance }} uses much memory',
            '{{ $labels.job }} holds {{ $value | humanize1024 }}B resident (threshold %s).' % std.toString(c.processMemoryBytesThreshold),
            '15m',
          ),
        ],
      },
    ],
  },
}
