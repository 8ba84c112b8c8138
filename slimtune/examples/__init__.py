"""Ready-made examples that run offline: reference architectures and the scikit-learn digits task.

Import the submodules directly (``slimtune.examples.models``, ``slimtune.examples.digits``); nothing heavy is
imported here.
"""
