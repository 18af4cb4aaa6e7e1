"""deepsynth.models.ppocr"""
