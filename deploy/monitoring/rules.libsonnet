// Recording rules, named level:metric:operations. The in-process *_p95 gauges cover one
// instance's recent window; these histogram forms aggregate across instances.
{
  local c = $._config,
  prometheusRules+:: {
    groups+: [
      {
        name: 'qmtl-dagmanager.rules',
        rules: [
          {
            record: 'job:diff_duration_seconds:p95_5m',
            expr: 'histogram_quantile(0.95, sum by (job, le) (rate(diff_duration_seconds_bucket{%s}[5m])))' % c.dagmanagerSelector,
          },
        ],
      },
      {
        name: 'qmtl-gateway.rules',
        rules: [
          {
            record: 'job:gateway_request_duration_seconds:p95_5m',
            expr: 'histogram_quantile(0.95, sum by (job, route, le) (rate(gateway_request_duration_seconds_bucket{%s}[5m])))' % c.gatewaySelector,
          },
        ],
      },
    ],
  },
}
