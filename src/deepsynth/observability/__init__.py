"""deepsynth.observability"""
