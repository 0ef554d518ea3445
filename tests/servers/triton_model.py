"""A Triton Python-backend model that runs mfvan's exported ONNX graph with ONNX Runtime,
for tests: the `tritonserver` that the nvidia-pytriton wheel carries has the Python
backend only (no ONNX Runtime backend). It sits in `MODEL/1/model.py` next to
`model.onnx`; `site-packages.txt` there names the folders holding numpy and onnxruntime
(the stub's interpreter does not see the test's virtual environment otherwise).

Tensors cross the stub by DLPack: the stub's NumPy bridge predates NumPy 2's array layout.
"""

import sys
from pathlib import Path

_site = Path(__file__).with_name("site-packages.txt")
if _site.exists():
    sys.path[:0] = _site.read_text().split()

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            feed = {
                name: np.from_dlpack(pb_utils.get_input_tensor_by_name(request, name))
                for name in (i.name for i in self.session.get_inputs())
            }
            (logits,) = self.session.run(["logits"], feed)
            out = pb_utils.Tensor.from_dlpack("logits", np.ascontiguousarray(logits, np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
