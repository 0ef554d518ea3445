"""mfvan.model.data: dataset loaders and SynthME, the synthetic micro-expression generator."""
