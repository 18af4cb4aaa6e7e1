"""deepsynth.evaluation"""
