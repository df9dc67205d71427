"""Kafka: the embedded development broker, topic layout and client helpers."""
