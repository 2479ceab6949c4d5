"""The serving peers' servers (benchmarks/peers.py): one module per peer, each run by the peer's own venv's
Python with the repository on PYTHONPATH, so that the model, its test-time augmentation and the image
decoder are ours (`contract/`), and only the server around them differs."""
