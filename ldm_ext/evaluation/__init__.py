"""Evaluation: protocol prompts and subjects, scorers and metrics, results folders and
their provenance, reports, ``eval.py --compare``; shared by ``eval.py``, the training-time
evaluation callback and the web app."""
