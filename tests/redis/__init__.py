"""The Redis backend's own behaviour: documents, scripts, history index, waiting."""
