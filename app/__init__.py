"""The brain-tumor inference service (research use only)."""

import os

# On the JAX backend, take GPU memory as needed (the counterpart of TensorFlow's memory growth). JAX reads this when
# it first starts a device, so it is set here, before `keras` (and with it `jax`) is imported by any module of ours.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
