"""The metaflow-sandbox extension. Modules that the light launcher uses never import metaflow."""
