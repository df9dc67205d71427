"""The ontology: declared object, link and action types, built into tables and a graph."""
