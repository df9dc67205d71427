"""Knowledge base: documents, chunking, lexical and vector retrieval."""
