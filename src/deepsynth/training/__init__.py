"""deepsynth.training"""
