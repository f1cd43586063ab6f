"""LoRA adapters on the SHARED modules: loading, the LRU of loaded adapters, activation.

PEFT keeps an adapter's layers and which adapters are active (with their scales) on the
shared transformer and text encoders, so every request's pipeline sees them. Only the
code that runs a batch changes that state, through `AdapterSlots.applied`, which works
like a readers-writer lock keyed by adapter set:

- pipeline calls with the same adapter set (same names and scales) may run at once;
- a call with another set waits until no call is running, then loads what is missing,
  evicts the least recently used adapters beyond `LORA_CACHE_SIZE`, activates its set and
  runs; loading and eviction also mutate the modules, so they only happen there;
- calls take their turns in arrival order, so one adapter set never starves another.

With `MAX_CONCURRENT_GENERATIONS=1` (the default) there is never anyone to wait for.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from app.engine.runner import is_fatal_device_error
from app.exceptions import (
    DeadlineExceeded,
    FatalDeviceError,
    GenerationOutOfMemory,
    LoraLoadFailed,
    UnsupportedParameter,
)
from app.loras import LoraLibrary, Signature

log = logging.getLogger(__name__)

# A request's adapters: (name, scale) pairs in the request's order; () is the bare model.
LoraSet = tuple[tuple[str, float], ...]

# Seconds between checks of the batch's deadlines while it waits for its turn.
_POLL = 0.25


def failure_reason(exc: BaseException) -> str:
    """Say in one sentence, without internals, why an adapter file did not load."""
    chain, cause = [], exc
    while cause is not None and len(chain) < 8:  # diffusers re-raises file errors as OSError
        chain.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    text = " | ".join(chain)
    if "Safetensor" in text or "header" in text.lower() or "deserializ" in text.lower():
        return "the file is not a readable safetensors file."
    if "size mismatch" in text or "shape" in text.lower():
        return "its weights do not fit the model's layers (wrong shapes)."
    if "Target modules" in text or "not found in the base model" in text:
        return "it names layers the served model does not have."
    if "version of PEFT" in text:
        return "its text-encoder weights need a newer peft than this server has (0.22 or later)."
    if "lora" in text.lower() and "param names" in text:
        return "its tensors are not LoRA weights."
    return "diffusers could not load it (the reason was logged)."


class AdapterSlots:
    """Load, keep and activate LoRA adapters on one shared pipeline's modules."""

    def __init__(self, library: LoraLibrary, cache_size: int) -> None:
        self.library = library
        self.cache_size = max(1, cache_size)
        # name -> (PEFT adapter name, file signature), least recently used first. PEFT
        # names are made up here: module-dict keys may not hold the '.' a stem can.
        self._loaded: OrderedDict[str, tuple[str, Signature]] = OrderedDict()
        # name -> (signature, reason): the same file version is refused without a retry.
        self._failed: dict[str, tuple[Signature, str]] = {}
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._active: LoraSet | None = ()  # None: unknown after a failed switch
        self._running = 0
        self._switching = False
        self._turns: deque[object] = deque()
        _quiet_partial_adapter_warnings()

    def prepare(self, shared: Any) -> None:
        """Ready the shared modules once, after loading (nothing to do without COMPILE)."""

    # -- before queueing (request threads; reads only) ------------------------------------

    def check(self, shared: Any, loras: LoraSet) -> None:
        """Refuse a request whose adapters are missing or known not to load."""
        if loras and not hasattr(shared, "load_lora_weights"):
            raise UnsupportedParameter("loras", "The served model does not take LoRA adapters.")
        for name, _ in loras:
            signature = self.library.signature(name)
            failed = self._failed.get(name)
            if failed and failed[0] == signature:
                raise LoraLoadFailed(name, failed[1])

    def loaded(self) -> list[str]:
        """Return the names of the loaded adapters, least recently used first."""
        with self._cond:
            return list(self._loaded)

    # -- in the lane (the thread that runs a batch) ---------------------------------------

    @contextmanager
    def applied(self, shared: Any, loras: LoraSet, expired: Callable[[], bool]) -> Iterator[None]:
        """Hold the shared modules with `loras` active for one pipeline call.

        Raises DeadlineExceeded when `expired()` turns true while waiting for the turn,
        LoraNotFound or LoraLoadFailed when an adapter cannot be used.
        """
        signatures = {name: self.library.signature(name) for name, _ in loras}
        turn = object()
        with self._cond:
            self._turns.append(turn)
            try:
                while not self._may_enter(turn, loras, signatures):
                    if expired():
                        raise DeadlineExceeded(ran=False)
                    self._cond.wait(_POLL)
                switch = self._active != loras or not self._current(signatures)
                if switch:
                    self._switching = True
                else:
                    self._running += 1
                    self._touch(loras)
            finally:
                self._turns.remove(turn)
                self._cond.notify_all()
        if switch:
            self._switch_to(shared, loras, signatures)
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def _may_enter(self, turn: object, loras: LoraSet, signatures: dict[str, Signature]) -> bool:
        if self._turns[0] is not turn or self._switching:
            return False
        return self._running == 0 or (self._active == loras and self._current(signatures))

    def _current(self, signatures: dict[str, Signature]) -> bool:
        """Return whether every adapter is loaded from the file version on disk."""
        return all(
            name in self._loaded and self._loaded[name][1] == signature
            for name, signature in signatures.items()
        )

    def _touch(self, loras: LoraSet) -> None:
        for name, _ in loras:
            self._loaded.move_to_end(name)

    def _switch_to(self, shared: Any, loras: LoraSet, signatures: dict[str, Signature]) -> None:
        """Load what `loras` lacks and activate it; no other call runs meanwhile."""
        try:
            keep = {name for name, _ in loras}
            for name, _ in loras:
                self._ensure_loaded(shared, name, signatures[name], keep)
            with self._cond:
                self._touch(loras)
            for old in list(self._loaded)[: max(0, len(self._loaded) - self.cache_size)]:
                if old not in keep:  # least recently used first; a set keeps its own
                    self._unload(shared, old)
            self._activate(shared, loras)
        except BaseException:
            with self._cond:
                self._active, self._switching = None, False
                self._cond.notify_all()
            raise
        with self._cond:
            self._active, self._switching = loras, False
            self._running += 1
            self._cond.notify_all()

    def _ensure_loaded(self, shared: Any, name: str, signature: Signature, keep: set[str]) -> None:
        known = self._loaded.get(name)
        if known and known[1] == signature:
            return
        if known:  # the file changed since it was loaded
            self._unload(shared, name)
        failed = self._failed.get(name)
        if failed and failed[0] == signature:
            raise LoraLoadFailed(name, failed[1])
        for old in list(self._loaded):
            if len(self._loaded) < self.cache_size:
                break
            if old not in keep:
                self._unload(shared, old)
        adapter_id = f"lora{next(self._ids)}"
        try:
            shared.load_lora_weights(str(self.library.path(name)), adapter_name=adapter_id)
            if not _adapter_present(shared, adapter_id):
                raise ValueError("no tensor of the file matches a layer of the served model")
        except Exception as exc:
            _delete_layers(shared, adapter_id)
            if not self._loaded:
                shared.unload_lora_weights()  # back to the plain modules
            if isinstance(exc, torch.OutOfMemoryError):
                # The device, not the file: no 400, nothing remembered, the next try loads.
                raise GenerationOutOfMemory() from exc
            if is_fatal_device_error(exc):
                raise FatalDeviceError() from exc
            reason = failure_reason(exc)
            if "no tensor" in str(exc):
                reason = (
                    "none of its weights match a layer of the served model (the diffusers/"
                    "PEFT layout is read; diffusers converts no kohya layout for this family)."
                )
            self._failed[name] = (signature, reason)
            log.warning("adapter %r failed to load: %s", name, reason, exc_info=exc)
            raise LoraLoadFailed(name, reason) from exc
        self._failed.pop(name, None)
        with self._cond:
            self._loaded[name] = (adapter_id, signature)
        log.info("adapter %r loaded as %s (%d loaded)", name, adapter_id, len(self._loaded))

    def _unload(self, shared: Any, name: str) -> None:
        with self._cond:
            adapter_id, _ = self._loaded.pop(name)
        shared.delete_adapters(adapter_id)
        if not self._loaded:
            shared.unload_lora_weights()
        log.info("adapter %r unloaded", name)

    def _activate(self, shared: Any, loras: LoraSet) -> None:
        if not loras:
            if self._loaded:
                shared.disable_lora()
            return
        shared.enable_lora()  # set_adapters does not undo disable_lora
        shared.set_adapters(
            [self._loaded[name][0] for name, _ in loras], [scale for _, scale in loras]
        )


class _PartialAdapterFilter(logging.Filter):
    """Drop diffusers' warning, on every load, that an adapter skips some component."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No LoRA keys associated")


def _quiet_partial_adapter_warnings() -> None:
    logger = logging.getLogger("diffusers.loaders.lora_base")
    if not any(isinstance(f, _PartialAdapterFilter) for f in logger.filters):
        logger.addFilter(_PartialAdapterFilter())


def _adapter_present(shared: Any, adapter_id: str) -> bool:
    """Return whether any component of `shared` holds layers of `adapter_id`."""
    return any(adapter_id in names for names in shared.get_list_adapters().values())


def _delete_layers(shared: Any, adapter_id: str) -> None:
    """Remove every layer and config entry of `adapter_id`, however far loading got."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for component in getattr(shared, "_lora_loadable_modules", ()):
        model = getattr(shared, component, None)
        if model is None:
            continue
        for module in model.modules():
            if isinstance(module, BaseTunerLayer) and adapter_id in module.lora_A:
                module.delete_adapter(adapter_id)
        config = getattr(model, "peft_config", None)
        if isinstance(config, dict):
            config.pop(adapter_id, None)
