"""Serving: SavedModel and ONNX export, and a local server with TF Serving's REST API."""
