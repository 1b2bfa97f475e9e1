"""Grafana dashboards as code: `python -m dashboards.build` writes the Helm chart's files/dashboards/*.json
and docs/dashboards.md."""
