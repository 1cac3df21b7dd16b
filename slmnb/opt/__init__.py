"""ONNX export for onnxruntime-genai (switchable LoRA adapters or merged), generation, and side-by-side comparison."""
