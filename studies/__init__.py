"""The project's studies: experiments on top of the library, kept out of the installed wheel.

Each runs from the repository root as ``python -m studies.<name> --seed S --out DIR`` (``--from-stored``
rebuilds its report from the files under ``--out`` without running anything); ``python -m studies`` lists
them. They import ``fakegradient`` (the evaluation, ``[eval]`` extra) and share :mod:`studies.kit`.
"""

STUDIES = ("seven_mnist", "mnist_recipes", "mnist_classes", "mnist_direction", "ablations", "private", "private_pilot", "file_only",
           "masked_gradient")
