"""The base layer: data contract, ingestion, identity, unified history and customer features."""
