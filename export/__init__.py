"""SadTalker and GFPGAN re-implemented in PyTorch, exported to ONNX and to a Triton model repository.

Nothing in here is imported by the gateway at run time: the gateway talks to Triton only.
"""
