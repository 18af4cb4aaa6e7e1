"""One router per API surface: DeepSynth OCR, OpenAI-compatible, admin (health, readiness, metrics)."""
