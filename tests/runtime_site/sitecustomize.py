"""Run by the service processes the tests start (their PYTHONPATH names this folder; `tests.service_processes`).

TensorFlow and Keras import JAX, Matplotlib and scikit-learn whenever they are installed: the test and training
extras install them, the service's runtime install (`pip install .`, the container image) does not. Hidden here, a
`brain-tumor serve` of the tests starts as the shipped one does, without them: 4-5 s less of its 10-12 s of CPU
to start on the 2-core test machine.
"""

import sys

for _name in ("jax", "jaxlib", "matplotlib", "sklearn"):
    sys.modules.setdefault(_name, None)
