"""The CIFAR-10 BentoML service: HTTP API, image decoding, micro-batching."""
