"""ModelPool: several named models behind one server, each with its own :class:`OCRService`.

Every model keeps its own engine, batcher queue, limits and metrics, so a slow model never holds up the
requests of another. A request picks its model by name (the OpenAI ``model`` field, ``model`` on
``/v1/ocr``) or by document type through a :class:`RoutingTable` (doc type → model name, with a default
for unknown types). Models are loaded, reloaded and unloaded while serving: the table is switched at once
and the replaced model is closed only after every request that had already picked it has finished.
A spec ``models:/NAME@ALIAS`` is served from MLflow's Model Registry: :meth:`ModelPool.follow` reloads it
(by that same switch) when the alias has moved to another version.

A LoRA adapter is a model too: its entry is an adapter view of its base's service (same queue and engine,
so one batch mixes adapters; see :meth:`OCRService.adapter_view`), added with :meth:`ModelPool.load_adapter`
and removed with :meth:`ModelPool.unload`, which also frees its weights in the base's process.

    pool = ModelPool({"print": OCRService("ppocr"), "fraktur": OCRService("ppocr:runs/fraktur/best")},
                     default="print", routing=RoutingTable({"book": "fraktur"}))
    with pool.lease(model=None, doc_type="book") as service:   # -> the "fraktur" service
        preds = await service.recognize_async(images)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from deepsynth.inference.inputs import InputError
from deepsynth.inference.service import OCRService
from deepsynth.models.registered import RegisteredVersion, RegistryError, RegistryReader, is_model_uri
from deepsynth.models.registry import ModelLoadError

log = logging.getLogger("deepsynth.inference")

MODEL_NAME = re.compile(r"^[^\s=]{1,200}$")  # a bare spec names its model too (ppocr:runs/x/best)
_SHORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")  # the NAME of NAME=SPEC
ServiceFactory = Callable[[str, str], OCRService]  # (name, spec) -> a service, not yet started


class ModelConflict(InputError):
    """An admin action that would break the serving table (unload the default, a routed model)."""

    def __init__(self, message: str, param: str = "name"):
        super().__init__(409, "model_conflict", message, param)


@dataclass
class RoutingTable:
    """Document type → model name; ``default`` (None: the pool's default) serves every other type."""

    routes: dict[str, str] = field(default_factory=dict)
    default: str | None = None

    @classmethod
    def from_yaml(cls, path: str | Path) -> RoutingTable:
        """Read ``{default: NAME, routes: {doc_type: NAME, ...}}`` (``default`` optional)."""
        import yaml

        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"routing table {path}: cannot read it ({exc})") from exc
        if not isinstance(raw, dict) or set(raw) - {"default", "routes"}:
            raise ValueError(
                f"routing table {path}: expected a mapping with 'routes' (doc type: model) and an optional "
                f"'default', got {type(raw).__name__ if not isinstance(raw, dict) else sorted(raw)}"
            )
        routes = raw.get("routes") or {}
        if not isinstance(routes, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in routes.items()
        ):
            raise ValueError(f"routing table {path}: 'routes' must map doc type names to model names")
        default = raw.get("default")
        if default is not None and not isinstance(default, str):
            raise ValueError(f"routing table {path}: 'default' must be a model name")
        return cls(dict(routes), default)

    def models(self) -> set[str]:
        return set(self.routes.values()) | ({self.default} if self.default else set())

    def check(self, names: set[str]) -> None:
        """Raise ValueError naming every doc type routed to a model that is not served."""
        missing = [f"{t!r} -> {m!r}" for t, m in self.routes.items() if m not in names]
        if self.default and self.default not in names:
            missing.append(f"default -> {self.default!r}")
        if missing:
            raise ValueError(
                f"routing table names model(s) that are not served: {', '.join(missing)}; "
                f"served: {', '.join(sorted(names))}"
            )


@dataclass
class ServedModel:
    """One entry of the pool: its service (own queue, batching and time limits), its spec, open leases."""

    name: str
    service: OCRService
    spec: str | None = None  # for a LoRA adapter: its directory
    base: str | None = None  # for a LoRA adapter: the model whose weights it runs on
    source: RegisteredVersion | None = None  # the registry version a ``models:/`` spec resolved to
    active: int = 0
    idle: asyncio.Event | None = None  # set by release() when ``active`` drops to 0 during a drain

    def release(self) -> None:
        self.active -= 1
        if self.active == 0 and self.idle is not None:
            self.idle.set()

    async def wait_idle(self, timeout_s: float) -> None:
        """Return once no request holds this model (or after ``timeout_s``)."""
        if self.active == 0:
            return
        self.idle = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle.wait(), timeout_s)


class ModelPool:
    """Named :class:`OCRService` s, a default model and a routing table (see module docstring)."""

    def __init__(
        self,
        models: dict[str, OCRService | ServedModel],
        *,
        default: str | None = None,
        routing: RoutingTable | None = None,
        factory: ServiceFactory | None = None,
        registry: RegistryReader | None = None,
    ):
        if not models:
            raise ValueError("a server needs at least one model")
        self.models: dict[str, ServedModel] = {}
        for name, m in models.items():
            check_name(name)
            entry = m if isinstance(m, ServedModel) else ServedModel(name, m)
            if entry.service.model_id != name:
                raise ValueError(
                    f"model {name!r}: its service is labelled {entry.service.model_id!r}; "
                    f"build it with model_id={name!r}"
                )
            self.models[name] = entry
        self.routing = routing or RoutingTable()
        self.default = default or self.routing.default or next(iter(self.models))
        self.check_names(set(self.models), default=self.default, routing=self.routing)
        self.factory = factory or (lambda name, spec: OCRService(spec, model_id=name))  # geometry: spec's
        self.registry = registry
        self._admin = asyncio.Lock()
        self._follow = asyncio.Lock()
        self._failed: dict[str, tuple[str, str]] = {}  # model -> (version that failed to load, why)

    @staticmethod
    def check_names(names: set[str], *, default: str | None, routing: RoutingTable | None) -> None:
        """Raise ValueError when the default or a routed model is not among ``names`` (before any load)."""
        served = ", ".join(sorted(names))
        if default is not None and default not in names:
            raise ValueError(f"default model {default!r} is not served; served: {served}")
        if routing is not None:
            routing.check(names)

    # -- lookup --------------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.models)

    @property
    def services(self) -> list[OCRService]:
        return [m.service for m in self.models.values()]

    def resolve(self, model: str | None = None, doc_type: str | None = None) -> ServedModel:
        """The model named ``model``, else the one routed for ``doc_type``, else the default (404 for an
        unknown name, naming the served ones)."""
        name = model or self.routing.routes.get(doc_type or "") or self.routing.default or self.default
        entry = self.models.get(name)
        if entry is None:
            raise InputError(
                404,
                "model_not_found",
                f"model {name!r} is not served here; known models: {', '.join(self.models)}",
                "model",
            )
        return entry

    @contextlib.contextmanager
    def lease(self, model: str | None = None, doc_type: str | None = None) -> Iterator[OCRService]:
        """Hold a model for one request: an unload or reload waits until the request has finished."""
        entry = self.resolve(model, doc_type)
        entry.active += 1
        try:
            yield entry.service
        finally:
            entry.release()

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self, *, warmup: bool = True) -> None:
        """Start every model (concurrently: one slow warm-up does not delay the others)."""
        await asyncio.gather(*(s.start(warmup=warmup) for s in self.services))

    async def aclose(self, *, drain: bool = True, timeout_s: float | None = None) -> None:
        """Close every model (see :meth:`OCRService.aclose`; ``timeout_s`` bounds the drain)."""
        await asyncio.gather(*(s.aclose(drain=drain, timeout_s=timeout_s) for s in self.services))

    async def load(self, name: str, spec: str, *, warmup: bool = True, drain_timeout_s: float = 30.0) -> str:
        """Load ``spec`` as ``name`` (replacing a model of that name: a reload). Returns "loaded" or
        "reloaded". The new model serves every request that starts after the switch; the old one finishes
        the requests that had already picked it, then is closed."""
        check_name(name)
        async with self._admin:
            self._check_no_adapters(name, "reloaded")
            if name in self.models and self.models[name].base is not None:
                raise ModelConflict(
                    f"model {name!r} is a LoRA adapter: reload it with its directory ('lora')"
                )
            entry = await asyncio.to_thread(build_model, name, spec, self.factory, self.registry)
            try:
                await entry.service.start(warmup=warmup)
            except BaseException:
                await entry.service.aclose(drain=False)
                raise
            old = self.models.get(name)
            self.models[name] = entry
            version = entry.source.version if entry.source else None
            log.info(
                "model loaded",
                extra={"model": name, "spec": spec, "version": version, "reload": old is not None},
            )
            if old is not None:
                await self._retire(old, drain_timeout_s)
            return "reloaded" if old else "loaded"

    async def reload(self, name: str, spec: str | None = None, **kwargs) -> str:
        """Load ``name`` again from ``spec`` (default: the spec it was loaded from; for a LoRA adapter, its
        directory)."""
        entry = self.resolve(name)
        if entry.base is not None:
            return await self.load_adapter(name, spec or entry.spec, base=entry.base)  # type: ignore[arg-type]
        spec = spec or entry.spec
        if spec is None:
            raise InputError(
                400, "invalid_request", f"model {name!r} was not loaded from a spec; give 'spec'", "spec"
            )
        return await self.load(name, spec, **kwargs)

    async def unload(self, name: str, *, drain_timeout_s: float = 30.0) -> str:
        """Stop serving ``name`` once its in-flight requests are done (the default and routed models are
        refused with a 409)."""
        async with self._admin:
            entry = self.resolve(name)
            if name == self.default:
                raise ModelConflict(f"model {name!r} is the default model and cannot be unloaded")
            routed = sorted(t for t, m in self.routing.routes.items() if m == name)
            if routed or self.routing.default == name:
                raise ModelConflict(
                    f"model {name!r} is named by the routing table ({', '.join(routed) or 'default'}); "
                    "it cannot be unloaded"
                )
            self._check_no_adapters(name, "unloaded")
            del self.models[name]
            await self._retire(entry, drain_timeout_s)
            if entry.base is not None:  # its requests are done: free its weights in the base's process
                await asyncio.to_thread(self.models[entry.base].service.engine.remove_adapter, name)
            log.info("model unloaded", extra={"model": name})
            return "unloaded"

    async def load_adapter(self, name: str, path: str, *, base: str | None = None) -> str:
        """Serve the LoRA adapter saved in ``path`` as model ``name`` on ``base`` (default: the one model
        that serves adapters). Returns "loaded", or "reloaded" for an adapter of that name (requests batched
        from now on read with the new weights). A directory that does not fit the base is a 400."""
        check_name(name)
        async with self._admin:
            host = self._lora_base(base)
            old = self.models.get(name)
            if old is not None and old.base is None:
                raise ModelConflict(f"model {name!r} is served, and is not a LoRA adapter")
            if old is not None and old.base != host.name:
                raise ModelConflict(f"adapter {name!r} runs on {old.base!r}; unload it first", "base")
            try:
                await asyncio.to_thread(host.service.engine.add_adapter, name, path)
            except (OSError, ValueError, KeyError) as exc:
                raise ModelLoadError(f"adapter {name!r} ({path}): {exc}") from exc
            if old is None:
                self.models[name] = ServedModel(name, host.service.adapter_view(name), path, host.name)
            else:
                old.spec = path
            log.info("adapter loaded", extra={"model": name, "spec": path, "base": host.name})
            return "reloaded" if old else "loaded"

    def _lora_base(self, base: str | None) -> ServedModel:
        """The entry whose engine serves LoRA adapters: ``base``, else the only such model."""
        if base is not None:
            entry = self.resolve(base)
            if entry.base is None and entry.service.engine.serves_adapters:
                return entry
            raise ModelConflict(f"model {base!r} serves no LoRA adapters", "base")
        hosts = [m for m in self.models.values() if m.base is None and m.service.engine.serves_adapters]
        if len(hosts) == 1:
            return hosts[0]
        if not hosts:
            raise ModelConflict(
                "no model here serves LoRA adapters (start the server with --lora or --enable-lora)", "base"
            )
        raise InputError(
            400,
            "invalid_request",
            f"several LoRA bases ({', '.join(m.name for m in hosts)}): give 'base'",
            "base",
        )

    def _check_no_adapters(self, name: str, action: str) -> None:
        adapters = sorted(m.name for m in self.models.values() if m.base == name)
        if adapters:
            raise ModelConflict(
                f"model {name!r} is the base of LoRA adapter(s) {', '.join(adapters)}; it cannot be {action} "
                "before they are unloaded"
            )

    async def follow(self, *, retry: bool = False, **kwargs) -> list[dict[str, str | None]]:
        """Reload every model served from a registry alias (``models:/NAME@ALIAS``) whose alias now points at
        another version, by :meth:`load`'s switch (in-flight requests finish on the old version). Returns one
        row per such model: name, registered model, alias, ``previous_version`` and ``version``, ``status``
        (unchanged / reloaded / failed) and ``error``. A model whose new version fails to load keeps serving
        its current one; that version is tried again only with ``retry`` (POST /admin/reload), not by the poll."""
        async with self._follow:  # the poll and POST /admin/reload never reload the same move twice
            followed = [(n, e) for n, e in self.models.items() if e.source and e.source.alias and e.spec]
            return [await self._follow_one(name, entry, retry, **kwargs) for name, entry in followed]

    async def _follow_one(
        self, name: str, entry: ServedModel, retry: bool, **kwargs
    ) -> dict[str, str | None]:
        src, now = entry.source, None
        assert src is not None and src.alias is not None and entry.spec is not None
        row: dict[str, str | None] = {"name": name, "registered_model": src.name, "alias": src.alias,
                                      "previous_version": src.version, "version": src.version,
                                      "status": "unchanged", "error": None}  # fmt: skip
        try:
            if self.registry is None:
                raise RegistryError(f"{entry.spec}: no registry to read (--tracking-uri)")
            now = await asyncio.to_thread(self.registry.version_by_alias, src.name, src.alias)
            if now is None:
                raise RegistryError(f"{entry.spec}: the alias no longer exists; still serving v{src.version}")
            if now == src.version:
                return row
            if not retry and self._failed.get(name, ("", ""))[0] == now:  # the poll does not reload it again
                return {**row, "status": "failed", "error": self._failed[name][1]}
            await self.load(name, entry.spec, **kwargs)
        except Exception as exc:  # noqa: BLE001 - keep serving the current version, say why
            error = f"v{now}: {type(exc).__name__}: {exc}" if now else str(exc)
            if now:
                self._failed[name] = (now, error)
            log.warning("registry follow failed", extra={"model": name, "error": error})
            return {**row, "status": "failed", "error": error}
        self._failed.pop(name, None)
        new = self.models[name].source
        return {**row, "version": new.version if new else None, "status": "reloaded"}

    @staticmethod
    async def _retire(entry: ServedModel, drain_timeout_s: float) -> None:
        await entry.wait_idle(drain_timeout_s)
        await entry.service.aclose(drain=True)


def build_model(
    name: str, spec: str, factory: ServiceFactory, registry: RegistryReader | None = None
) -> ServedModel:
    """``spec`` as model ``name`` (not yet started): a ``models:/`` spec is resolved through ``registry`` to
    its version's directory, which ``factory`` loads like any saved model. Blocking (loads the model)."""
    source = None
    if is_model_uri(spec):
        if registry is None:
            raise RegistryError(f"{spec}: serving a registered model needs a registry (--tracking-uri)")
        source = registry.fetch(spec)
    return ServedModel(name, factory(name, str(source.path) if source else spec), spec, source=source)


def check_name(name: str) -> None:
    if not MODEL_NAME.match(name):
        raise InputError(
            400, "invalid_request", f"model name {name!r}: 1-200 characters, no spaces and no '='", "name"
        )


def parse_model_option(value: str) -> tuple[str | None, str]:
    """``NAME=SPEC`` → (NAME, SPEC); a bare ``SPEC`` (which may itself hold '=' after a ':' or '/') →
    (None, SPEC)."""
    name, sep, spec = value.partition("=")
    if sep and _SHORT_NAME.match(name) and spec:
        return name, spec
    return None, value
