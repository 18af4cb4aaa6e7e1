"""DeepSynth: fine-tune, evaluate and serve OCR models on your own documents."""

__version__ = "0.1.0"
