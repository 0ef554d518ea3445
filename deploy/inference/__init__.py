"""The recognizer's network as an engine runs it: the inference backends (`backends`: torch,
ONNX Runtime, AOTInductor, TensorRT, Triton, one interface), export to their formats
(`export`), and the names the command line offers for them (`choices`, importable without
torch).
"""
