"""File ingestion: declared sources, strict readers, and data-quality suites run with GX."""
