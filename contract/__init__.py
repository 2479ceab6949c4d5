"""The contract between training and serving: the model card, the image decoder, the predictor.

Imports neither BentoML nor TensorFlow at import time, so the service, the trainer, the clients and
the built bento can all depend on it.
"""
