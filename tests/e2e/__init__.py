"""End-to-end harnesses: a real Prometheus server that scrapes the exporter and the test kube-apiserver."""
