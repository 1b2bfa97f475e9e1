"""admission-webhook-exporter: probe Kubernetes admission webhooks before they take the cluster down."""

__version__ = "0.1.0"
