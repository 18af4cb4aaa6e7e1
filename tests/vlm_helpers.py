"""Shared helpers for the VLM tests: rendered line samples and a few-step LoRA loop."""

from __future__ import annotations

from PIL import Image, ImageDraw

from deepsynth.data.sample import Sample
from deepsynth.training.config import OptimSettings
from deepsynth.training.schedule import build_optimizer

TEXTS = ["hello world", "the lazy fox 42", "OCR test line", "brown dog 7"]


def line_image(text: str, width: int = 160, height: int = 32) -> Image.Image:
    img = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(img).text((4, 10), text, fill="black")
    return img


def line_samples(n: int = 2) -> list[Sample]:
    return [Sample.from_image(f"line{i}", line_image(t), t) for i, t in enumerate(TEXTS[:n])]


def train_steps(adapter, batch, steps: int = 5, lr: float = 2e-2) -> list[float]:
    """Plain optimizer loop over one batch; returns the loss of every step."""
    opt = build_optimizer(adapter.model, OptimSettings(lr=lr, weight_decay=0.0))  # the trainer's builder
    adapter.train_mode()
    losses = []
    for _ in range(steps):
        loss = adapter.loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses
