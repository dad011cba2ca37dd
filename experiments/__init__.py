"""Runnable Sacred experiments and the training machinery they share."""
