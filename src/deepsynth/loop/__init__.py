"""The improvement loop: labelled data arrives in an inbox, a per-type trigger starts a fine-tune, a gate compares
the candidate with the champion on every type's holdout, and an MLflow Model Registry keeps versions and aliases.

Modules: ``config`` (the YAML policy), ``state`` (accounting and the never-leaking holdout), ``inbox``,
``trigger``, ``gate``, ``registry`` and ``runner`` (one pass: ``run_once``). Lower layers never import this package.
"""
