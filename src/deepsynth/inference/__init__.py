"""deepsynth.inference"""
