"""Runnable Sacred experiments and the training machinery they share."""

from ingredients.sacred_import import import_sacred_without_pandas

import_sacred_without_pandas()  # before anything here imports Sacred
