"""The dashboard, /metrics and OpenTelemetry."""
