"""Python and command-line clients for the CIFAR-10 service."""

from clients.client import AsyncCIFAR10Client, CIFAR10Client, ServiceError

__all__ = ["AsyncCIFAR10Client", "CIFAR10Client", "ServiceError"]
