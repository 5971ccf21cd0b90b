"""Developer tooling of ximilar-async: reading template.yaml, and (later) the local stack and CLI."""
