"""mfvan.model: the MFVAN network, its data, training and evaluation (PyTorch).

Imports only mfvan.kernels of this project; never mfvan.stream or mfvan.deploy.
"""
