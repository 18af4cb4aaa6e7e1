"""deepsynth.models.vlm"""
