"""Plain values of the domain: what an upload, an image, a request and a result are; no I/O."""
