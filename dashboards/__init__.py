"""Grafana dashboards as code: `python -m dashboards.build` renders dashboards/*.json and docs/dashboards.md."""
