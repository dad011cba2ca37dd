"""Runnable Sacred experiments and the training machinery they share."""

import warnings

# Sacred 0.8.7 imports pkg_resources, which warns on every start; the pin (setuptools<82) keeps it working.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
