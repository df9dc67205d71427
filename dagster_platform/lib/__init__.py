"""What several areas use: the warehouse, logs, metrics, redaction, tracking, charts, Markdown,
YAML-to-model loading, the packaged models and the collector pause. Imports only settings."""
