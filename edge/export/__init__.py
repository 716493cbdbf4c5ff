"""Export step: one module per artifact format (executorch.py -> .pte, onnx.py -> .onnx, gguf.py -> .gguf).

Heavy toolchains are imported inside each module, so importing ``edge.export`` stays light.
"""
