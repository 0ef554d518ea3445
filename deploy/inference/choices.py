"""The names the command line offers for backends and precisions, without importing what
runs them: building `mfvan`'s parser must not import torch (4 s and a few hundred MB in
every stage process, ingest and spot included). `mfvan.deploy.inference.backends` checks its
registry against these at import."""

BACKENDS = ("torch", "onnxruntime", "aoti", "tensorrt", "triton")
PRECISIONS = ("fp32", "fp16", "bf16")
