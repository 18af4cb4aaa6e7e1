"""Several LoRA adapters on one tiny real DeepSeek-OCR-2 (peft multi-adapter): each reads exactly like the
adapter loaded alone (logits compared: peft's own loader drops these weights), LRU eviction, one base copy,
mixed in one batch, and behind the server as models of their own, in the model process."""

from __future__ import annotations

import httpx
import pytest

from deepsynth.inference.api import ServerSettings, create_app
from deepsynth.inference.engine import InProcessEngine
from deepsynth.inference.pool import ModelPool
from deepsynth.inference.service import OCRService
from deepsynth.models.generation import GenerationConfig
from deepsynth.models.vlm import adapter_class
from deepsynth.models.vlm.multi_lora import BASE, LoraSet, _gathered
from deepsynth.observability import Observability
from deepsynth.testing.tiny_models import build_tiny
from tests.serving_engines import data_uri, running_server
from tests.vlm_helpers import line_image, line_samples, train_steps

pytestmark = pytest.mark.slow
GEN = GenerationConfig(max_new_tokens=6)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Two adapters trained differently on the same tiny base, saved as DeepSynth model directories."""
    root = tmp_path_factory.mktemp("loras")
    out = {}
    for name, n, lr in (("a", 2, 2e-2), ("b", 4, 5e-2)):
        ad = build_tiny("deepseek_ocr2")
        ad.apply_lora({"r": 4})
        train_steps(ad, ad.collate(line_samples(n)), steps=3, lr=lr)
        ad.save(root / name)
        out[name] = root / name
    return out


def test_adapters_on_one_base_read_like_each_adapter_alone(saved):
    cls = adapter_class("deepseek_ocr2")
    refs = {name: cls.load(path) for name, path in saved.items()}
    batch = refs["a"].collate(line_samples(2))
    lora = LoraSet(build_tiny("deepseek_ocr2"), saved, max_loras=1)
    n_base = sum(p.numel() for n, p in lora.base.model.named_parameters() if "lora_" not in n)
    images = [line_image("hello world"), line_image("brown dog 7")]
    for name in ("a", "b", "a"):
        got = lora.engine(name).recognize(images, GEN)
        assert [p.text for p in got] == [p.text for p in refs[name].recognize(images, GEN)]
        with lora._lock:
            lora.activate(name)
            diff = (lora.base.logits(batch) - refs[name].logits(batch)).abs().max().item()
        assert diff == 0.0, name
    assert (lora.loads, lora.evictions, list(lora.loaded)) == (3, 2, ["a"])
    assert sum(p.numel() for n, p in lora.base.model.named_parameters() if "lora_" not in n) == n_base
    assert (refs["a"].logits(batch) - refs["b"].logits(batch)).abs().max().item() > 0  # they differ
    base_alone = build_tiny("deepseek_ocr2")
    assert [p.text for p in lora.engine(None).recognize(images, GEN)] == [
        p.text for p in base_alone.recognize(images, GEN)
    ]
    with pytest.raises(KeyError, match="known: a, b"):
        lora.engine("c")


def test_adapters_share_the_base_queue_and_mix_in_one_batch(distinct):
    """Adapter views of one in-process LoRA base: concurrent requests for two adapters and the base run as
    one batch, each answered like its adapter alone; POST /admin/models loads, reloads and unloads
    adapters."""
    from concurrent.futures import ThreadPoolExecutor

    from deepsynth.inference.pool import ServedModel

    cls = adapter_class("deepseek_ocr2")
    lora = LoraSet(build_tiny("deepseek_ocr2"), {"a": distinct["a"], "b": distinct["b"]}, max_loras=4)
    base = OCRService(
        lora, model_id="base", generation=GEN, trim_repetition=False, obs=Observability("base"),
        max_batch_size=3, max_wait_ms=5000,
    )  # fmt: skip
    entries = [ServedModel("base", base, "deepseek_ocr2:tiny")] + [
        ServedModel(n, base.adapter_view(n, obs=Observability(n)), str(distinct[n]), "base") for n in "ab"
    ]
    pool = ModelPool({e.name: e for e in entries}, default="a")
    images = {"a": line_image("hello world"), "b": line_image("brown dog 7"), "base": line_image("quick 9")}
    refs = {n: cls.load(distinct[n]).recognize([images[n]], GEN)[0].text for n in "ab"}
    refs["base"] = build_tiny("deepseek_ocr2").recognize([images["base"]], GEN)[0].text
    auth = {"Authorization": "Bearer t"}

    def ocr(url, name, image):
        return httpx.post(
            f"{url}/v1/ocr", json={"images": [data_uri(image)], "model": name}, headers=auth, timeout=300
        )

    with running_server(create_app(pool, ServerSettings(warmup=False, token="t"))) as s:
        with ThreadPoolExecutor(3) as ex:
            answers = dict(zip(images, ex.map(lambda n: ocr(s.url, n, images[n]), images), strict=True))
        for name, r in answers.items():
            assert r.status_code == 200 and r.json()["model"] == name and r.json()["text"] == refs[name], name
        assert base.batcher.stats.batch_sizes == [3]  # one batch, one generate() for the three models

        def admin(**body):
            return httpx.post(f"{s.url}/admin/models", json=body, headers=auth, timeout=300)

        r = admin(action="load", name="c", lora=str(distinct["b"]))
        assert r.status_code == 200 and r.json()["status"] == "loaded" and "c" in r.json()["models"], r.text
        assert ocr(s.url, "c", images["b"]).json()["text"] == refs["b"]
        assert admin(action="reload", name="c", lora=str(distinct["a"])).json()["status"] == "reloaded"
        assert ocr(s.url, "c", images["a"]).json()["text"] == refs["a"]
        r = admin(action="unload", name="base")
        assert r.status_code == 409 and "base of LoRA adapter(s) a, b, c" in r.json()["error"]["message"]
        r = admin(action="load", name="d", lora=str(distinct["a"] / "nothing"))
        assert r.status_code == 400 and r.json()["error"]["param"] == "lora", r.text
        assert admin(action="unload", name="c").json()["status"] == "unloaded"
        assert "c" not in lora.paths and "c" not in lora.loaded
        assert ocr(s.url, "c", images["a"]).status_code == 404


def test_serve_command_with_lora_adapters(distinct, tmp_path):
    """`deepsynth serve --lora`: the adapters live in the model process with the base; an adapter loaded
    through POST /admin/models reads like the adapter alone."""
    from tests.test_server_cli import _start_serve

    args = [
        "--model",
        "base=deepseek_ocr2:tiny",
        "--lora",
        f"a={distinct['a']}",
        "--lora",
        f"b={distinct['b']}",
    ]
    args += ["--max-loras", "1", "--max-new-tokens", "6", "--no-warmup", "--token", "t"]
    proc, url = _start_serve(args, tmp_path / "serve.log")
    auth = {"Authorization": "Bearer t"}
    image = line_image("OCR test line")
    try:
        models = httpx.get(f"{url}/v1/models", headers=auth).json()["data"]
        assert [(m["id"], m["parent"]) for m in models] == [("base", None), ("a", "base"), ("b", "base")]
        r = httpx.post(
            f"{url}/admin/models", json={"action": "load", "name": "c", "lora": str(distinct["b"])},
            headers=auth, timeout=300,
        )  # fmt: skip
        assert r.status_code == 200, r.text
        texts = {}
        for name in ("a", "b", "c", "base"):
            r = httpx.post(
                f"{url}/v1/ocr", json={"images": [data_uri(image)], "model": name}, headers=auth, timeout=300
            )
            assert r.status_code == 200 and r.json()["model"] == name, r.text
            texts[name] = r.json()["text"]
        for body, status in (
            ({"action": "unload", "name": "c"}, 200),  # its weights are freed in the model process
            (
                {"action": "load", "name": "d", "lora": str(tmp_path)},
                400,
            ),  # no adapter there: the child says so
        ):
            r = httpx.post(f"{url}/admin/models", json=body, headers=auth, timeout=300)
            assert r.status_code == status, r.text
        assert "adapter_model.safetensors" in r.json()["error"]["message"]
        r = httpx.post(f"{url}/v1/ocr", json={"images": [data_uri(image)], "model": "c"}, headers=auth)
        assert r.status_code == 404
    finally:
        proc.terminate()
        proc.wait(60)
    cls = adapter_class("deepseek_ocr2")
    assert texts["c"] == texts["b"] == cls.load(distinct["b"]).recognize([image], GEN)[0].text
    assert texts["a"] == cls.load(distinct["a"]).recognize([image], GEN)[0].text != texts["b"]
    bad = _run_serve(["--model", "rapidocr", "--lora", f"a={distinct['a']}"])
    assert bad.returncode == 2 and "LoRA adapters need a VLM as their base" in bad.stderr, bad.stderr


def _run_serve(args: list[str]):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "deepsynth.cli.main", "serve", *args, "--port", "1"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def distinct(tmp_path_factory):
    """Adapters with random (non-zero) LoRA B weights, so each one reads differently: two in the language
    model (they may share a batch), one also in the vision tower (it runs alone)."""
    import torch

    root = tmp_path_factory.mktemp("distinct")
    out = {}
    for seed, (name, targets) in enumerate(
        (("a", "language-model"), ("b", "language-model"), ("v", "all-linear"))
    ):
        ad = build_tiny("deepseek_ocr2")
        ad.apply_lora({"r": 4, "targets": targets})
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in ad.model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        ad.save(root / name)
        out[name] = root / name
    return out


def test_mixed_batch_rows_read_like_each_adapter_alone(distinct):
    """One batch mixing two adapters and the base runs in one generate(); every row equals its adapter (or
    the bare base) run alone on that image. While the vision-tower adapter is loaded, or with fewer slots
    than adapters, the rows run in several calls, with the same results."""
    import torch

    cls = adapter_class("deepseek_ocr2")
    refs = {name: cls.load(path) for name, path in distinct.items()} | {None: build_tiny("deepseek_ocr2")}
    texts = ["hello world", "brown dog 7", "the lazy fox 42", "OCR test line", "a b c", "quick 9"]
    images = [line_image(t) for t in texts]
    names = ["a", None, "b", "a", None, "v"]
    alone = [refs[n].recognize([img], GEN)[0] for n, img in zip(names, images, strict=True)]
    assert len({p.text for p in alone}) >= 3  # the adapters really read differently

    def check(lora, n_rows, calls):
        seen = []
        run = lora.base.generate_ids
        lora.base.generate_ids = lambda imgs, *a, **k: seen.append(len(imgs)) or run(imgs, *a, **k)
        got = lora.recognize(images[:n_rows], GEN, names[:n_rows])
        lora.base.generate_ids = run
        for i, (g, ref) in enumerate(zip(got, alone, strict=False)):
            assert (g.text, g.num_tokens, g.finished) == (ref.text, ref.num_tokens, ref.finished), (
                i,
                names[i],
            )
            assert g.confidence == pytest.approx(ref.confidence, rel=1e-5) and g.meta["adapter"] == names[i]
        assert sorted(seen) == calls

    lora = LoraSet(build_tiny("deepseek_ocr2"), distinct, max_loras=3)
    check(lora, 5, [5])  # a, base, b, a, base: one generate()
    for i in (2, 1):  # streamed through adapter b, then the base alone: the same answers, pieces a prefix
        pieces: list[str] = []
        pred = InProcessEngine(lora).recognize_stream(images[i], GEN, pieces.append, adapter=names[i])
        assert pred.text == alone[i].text and pred.text.startswith("".join(pieces)), (i, pieces)
    batch = refs["a"].collate(line_samples(4))
    with torch.no_grad(), _gathered(lora.base.model, ["ds_a", BASE, "ds_b", "ds_a"]):
        mixed = lora.base.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    for i, n in enumerate(["a", None, "b", "a"]):
        ref = refs[n].logits({k: v[i : i + 1] for k, v in batch.items()})[0]
        assert (mixed[i] - ref).abs().max().item() < 1e-5, (i, n)
    check(lora, 6, [1, 1, 2, 2])  # v loaded: a, b, v and the base each run alone
    assert lora.mixable == {"a": True, "b": True, "v": False}
    check(LoraSet(build_tiny("deepseek_ocr2"), distinct, max_loras=1), 6, [1, 1, 4])  # [a+base], [b], [v]


def test_adapters_are_removed_and_replaced(distinct):
    lora = LoraSet(build_tiny("deepseek_ocr2"), {"a": distinct["a"]}, max_loras=2)
    image = [line_image("hello world")]
    base_text = build_tiny("deepseek_ocr2").recognize(image, GEN)[0].text
    assert lora.engine("a").recognize(image, GEN)[0].text != base_text
    lora.add("a", distinct["b"])  # replaced: the old weights are dropped at once
    assert "a" not in lora.loaded
    b_text = adapter_class("deepseek_ocr2").load(distinct["b"]).recognize(image, GEN)[0].text
    assert lora.engine("a").recognize(image, GEN)[0].text == b_text
    lora.remove("a")
    assert not lora.base.has_lora and lora.paths == {}
    assert lora.recognize(image, GEN)[0].text == base_text
    with pytest.raises(KeyError, match="no adapter 'a'; known: none"):
        lora.recognize(image, GEN, ["a"])
