// What Prometheus loads: the mixin's alerting and recording groups in one file.
local mixin = import 'mixin.libsonnet';
'# Rendered from deploy/monitoring/ by scripts/monitoring/render.sh: edit the mixin, not this file.\n' +
std.manifestYamlDoc(
  { groups: mixin.prometheusAlerts.groups + mixin.prometheusRules.groups },
  indent_array_in_object=true,
  quote_keys=false,
)
