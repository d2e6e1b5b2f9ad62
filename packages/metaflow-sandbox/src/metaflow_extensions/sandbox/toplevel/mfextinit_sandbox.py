"""Top-level hook of metaflow-sandbox: loaded at the end of `import metaflow`."""

toplevel = "sandbox_toplevel"
