"""ember: a gRPC inference server for text embedding and reranking models.

Kept import-light on purpose: `ember.v1` (the generated stubs) and the Python client import this
package, and must work without onnxruntime installed.
"""
__version__ = "0.1.0"
