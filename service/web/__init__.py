"""The web layer: CherryPy routes over the data plane. Imports nothing from TensorFlow."""
