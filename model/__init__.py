"""mfvan.model: the MFVAN network and its baselines, their data (SynthME, the dataset
loaders, cropped pairs), the training pipeline, evaluation (LOSO, spotting) and the
reproduction of the paper's protocol (PyTorch).

Imports only mfvan.kernels of this project; never mfvan.stream or mfvan.deploy
(tests/test_layout.py checks it).
"""
