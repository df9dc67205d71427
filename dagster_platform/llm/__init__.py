"""The LLM resource's logic: one interface over transformers, a vLLM engine or a vLLM server."""
