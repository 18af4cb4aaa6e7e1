"""deepsynth.models.baselines"""
