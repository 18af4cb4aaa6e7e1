"""`deepsynth bench compression` (issue 15): vision tokens are what the model really spends, the Fox-style table
is filled per text-token bin and mode, with a tiny DeepSeek-OCR-2 (numbers meaningless, plumbing real) and the
embedded PP-OCRv6 on real lines and pages."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from deepsynth.cli.main import app
from deepsynth.data import open_sources
from deepsynth.data.sample import Sample
from deepsynth.evaluation.compression import auto_bins, compression_benchmark
from deepsynth.models.registry import load_engine
from deepsynth.models.tokens import CTCTokens, token_counter
from tests.test_eval_harness import InfoEngine


def test_tiny_deepseek_ocr2_modes_count_processor_tokens_and_tiles(shared_data):
    engine = load_engine("deepseek_ocr2:tiny")
    page = Image.open(next((shared_data / "fondue_en_print20/images/pages").glob("*.png"))).convert("RGB")
    samples = [Sample.from_image(f"p{i}", page.resize((300 + 200 * i, 500)), "word " * (40 + 100 * i)) for i in range(2)]  # fmt: skip
    result = compression_benchmark(engine, samples, max_new_tokens=4, bins=[0, 400, 1000])
    assert list(result["modes"]) == ["base", "gundam"]  # the modes the tiny vision tower can run
    pages = {(r["id"], r["mode"]): r for r in result["pages"]}
    counter = token_counter(engine)
    for s in samples:
        base, gundam = pages[(s.id, "base")], pages[(s.id, "gundam")]
        enc = engine.encode_prompts([s.image], engine.prompt, counter.modes()["gundam"])
        assert gundam["vision_tokens"] == int((enc["input_ids"][0] == engine.tokenizer.image_token_id).sum())
        assert base["vision_tokens"] == 145 < gundam["vision_tokens"]  # one 12x12 view (+ separator) vs tiles
        assert base["text_tokens"] == len(engine.tokenizer(s.text, add_special_tokens=False)["input_ids"])
        assert base["compression"] == pytest.approx(base["text_tokens"] / 145)
    bins = [row["text_tokens"] for row in result["table"]]
    assert len(bins) == 2 and all(set(row["modes"]) == {"base", "gundam"} for row in result["table"])
    with pytest.raises(ValueError, match="unknown mode 'tiny'"):
        compression_benchmark(engine, samples, modes=["tiny"])


def test_ctc_frames_are_the_frames_the_recogniser_emits(shared_data):
    engine = load_engine("ppocr-onnx", threads=1)
    lines = list(open_sources([str(shared_data / "fondue_en_print20")], decode=True))[:6]
    counter = token_counter(engine)
    assert isinstance(counter, CTCTokens)
    for s in lines:
        assert counter.vision_tokens(s.image) == engine.probabilities([s.image]).shape[1]
    result = compression_benchmark(engine, lines, normalize="none")
    assert result["n_pages"] == 6 and all(
        r["compression"] < 1 for r in result["pages"]
    )  # CTC: < 1 char/frame
    assert sum(r["precision"] for r in result["pages"]) / 6 > 0.9


def test_engines_without_token_accounting_and_auto_bins():
    with pytest.raises(ValueError, match="engine info-engine: vision tokens cannot be counted"):
        compression_benchmark(InfoEngine(), [])
    assert auto_bins([612, 688, 1250]) == [600, 800, 1000, 1200, 1400]
    assert auto_bins([5, 7]) == [0, 10]


@pytest.mark.slow
def test_cli_on_real_pages_with_the_embedded_page_engine(shared_data, tmp_path):
    runner = CliRunner()
    data = ["-d", str(shared_data / "fondue_en_print20"), "--limit", "1"]
    res = runner.invoke(app, ["bench", "compression", "-e", "ppocr-page", *data, "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "compression.json").read_text())
    (page,) = result["pages"]
    assert page["vision_tokens"] > page["text_tokens"] > 500 and page["precision"] > 0.95
    assert (tmp_path / "compression.png").stat().st_size > 1000
    assert "<table>" in (tmp_path / "compression.html").read_text()
    bad = runner.invoke(
        app, ["bench", "compression", "-e", "ppocr-page", *data, "-o", str(tmp_path), "--bins", "9,3"]
    )
    assert bad.exit_code == 2 and "--bins needs at least two increasing edges" in bad.output
