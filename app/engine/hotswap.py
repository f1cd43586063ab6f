"""LoRA adapters on a COMPILED denoiser: a fixed pool of slots, refilled by hot-swap.

Compiled code is specialised on the modules it ran: adding or deleting an adapter's
layers, changing the active adapter list or a float scale recompiles the denoiser. So
with COMPILE=true the modules never change shape after start:

- `prepare` loads `LORA_CACHE_SIZE` zero adapters ("slots") of rank `LORA_HOTSWAP_RANK` on
  every linear layer named by `LORA_HOTSWAP_LAYERS`, through diffusers'
  `enable_lora_hotswap` (which turns PEFT's scales into tensors), and makes every slot
  active for good: one graph, compiled at the warm-up;
- a new adapter is copied into the least recently used slot by
  `load_lora_weights(..., adapter_name=<slot>, hotswap=True)` (weights copied into the same
  tensors, smaller ranks zero-padded; layers it does not target are zeroed);
- a call's adapters get their scales, every other slot scale 0, written in place into the
  scale tensors (never `set_adapters`, which would put floats back), after moving them
  into ascending slots in the request's order (the same set always sums in one order).

Every call therefore runs every slot's LoRA layers, at scale 0 when unused: that is the
price of never recompiling. A file the slots cannot take (rank above the slots', layers
outside them, text-encoder weights, LoRA options PEFT's hot-swap refuses) is refused
before anything is copied; the gate and LRU bookkeeping are `AdapterSlots`'.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from app.engine.adapters import AdapterSlots, LoraSet, failure_reason
from app.engine.options import DENOISERS, OptionError
from app.engine.runner import is_fatal_device_error
from app.exceptions import FatalDeviceError, GenerationOutOfMemory, LoraLoadFailed
from app.loras import LoraLibrary, Signature

log = logging.getLogger(__name__)

# `<module>.lora_A.weight` / `<module>.lora_B.weight`: all a hot-swapped file may hold.
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<kind>[AB])\.weight$")


class Refused(ValueError):
    """An adapter file the slots cannot take; the message says why, for the client."""


def layer_names(text: str) -> tuple[str, ...]:
    """Parse LORA_HOTSWAP_LAYERS: comma-separated module-name suffixes."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def check_hotswap_settings(config: Mapping[str, Any]) -> None:
    """Refuse, at start, hot-swap settings that cannot work; raise OptionError saying why."""
    if config["LORA_HOTSWAP_RANK"] < 1:
        raise OptionError(
            f"LORA_HOTSWAP_RANK must be at least 1 (the largest adapter rank served), not "
            f"{config['LORA_HOTSWAP_RANK']}."
        )
    if not layer_names(str(config["LORA_HOTSWAP_LAYERS"])):
        raise OptionError(
            "LORA_HOTSWAP_LAYERS is empty: name the denoiser layers adapters may target "
            "(e.g. to_q,to_k,to_v,to_out.0)."
        )
    if config["LORA_CACHE_SIZE"] < config["MAX_LORAS_PER_REQUEST"]:
        raise OptionError(
            f"With COMPILE=true, LORA_CACHE_SIZE ({config['LORA_CACHE_SIZE']}) is the number of "
            f"hot-swap slots and must be at least MAX_LORAS_PER_REQUEST "
            f"({config['MAX_LORAS_PER_REQUEST']}): raise it or lower MAX_LORAS_PER_REQUEST."
        )


class HotswapSlots(AdapterSlots):
    """`AdapterSlots` whose loads are hot-swaps into a fixed pool of always-active slots."""

    def __init__(
        self, library: LoraLibrary, cache_size: int, rank: int, layers: tuple[str, ...]
    ) -> None:
        super().__init__(library, cache_size)
        self.rank = rank
        self.layers = layers
        width = len(str(self.cache_size))
        # Same-length names: PEFT's hot-swap finds a slot's tensors by substring.
        self.slots = [f"slot{i:0{width}d}" for i in range(self.cache_size)]
        self._component = ""  # "transformer" or "unet"
        self._shapes: dict[str, tuple[int, int]] = {}  # slot layer -> (in, out) features
        self._lora_layers: list[Any] = []  # PEFT LoraLayer modules of the denoiser
        self._base: dict[str, list[torch.Tensor]] = {}  # slot -> each layer's alpha/r
        self._scales: dict[str, float] = {}  # slot -> scale now written in its tensors

    # -- at load (before compiling) ------------------------------------------------------

    def prepare(self, shared: Any) -> None:
        """Load the zero slots into the shared denoiser and make them all active."""
        if not hasattr(shared, "load_lora_weights"):
            return  # requests naming adapters are refused by `check`
        component = next((n for n in DENOISERS if getattr(shared, n, None) is not None), None)
        if component is None:
            return
        model = getattr(shared, component)
        self._component = component
        self._shapes = {
            name: (module.in_features, module.out_features)
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
            and any(name == t or name.endswith(f".{t}") for t in self.layers)
        }
        if not self._shapes:
            raise OptionError(
                f"LORA_HOTSWAP_LAYERS={','.join(self.layers)} names no linear layer of the "
                f"served {component}: name some of its layers (e.g. to_q,to_k,to_v,to_out.0)."
            )
        for slot in self.slots:
            self._load_zero_slot(shared, slot)
        model.set_adapter(self.slots)
        self._index_layers(model, self.slots)
        per_slot = sum(self.rank * (fin + fout) for fin, fout in self._shapes.values())
        log.info(
            "LoRA hot-swap: %d slots of rank %d on %d layers of the %s, %.1f M parameters "
            "each; every call runs every slot (LORA_CACHE_SIZE x LORA_HOTSWAP_RANK)",
            len(self.slots), self.rank, len(self._shapes), component, per_slot / 1e6,
        )  # fmt: skip

    def _load_zero_slot(self, shared: Any, slot: str) -> None:
        model = getattr(shared, self._component)
        # A plain float parameter's dtype and device: with QUANTIZE, Linear weights are
        # torchao tensors, which make no zeros (and FLUX's first parameter is one).
        like = next(p for p in model.parameters()
                    if type(p.data) is torch.Tensor and p.is_floating_point())  # fmt: skip
        zeros = {}
        for name, (features_in, features_out) in self._shapes.items():
            for kind, shape in (("A", (self.rank, features_in)), ("B", (features_out, self.rank))):
                zeros[f"{self._component}.{name}.lora_{kind}.weight"] = torch.zeros(
                    shape, dtype=like.dtype, device=like.device
                )
        # Before each load, so PEFT makes every slot's scales tensors, not only the first's.
        shared.enable_lora_hotswap(target_rank=self.rank, check_compiled="ignore")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            shared.load_lora_weights(zeros, adapter_name=slot)

    def _index_layers(self, model: torch.nn.Module, empty: list[str]) -> None:
        """List the LoRA layers; `empty` slots (just loaded, zero) get their scale 0."""
        from peft.tuners.lora import LoraLayer

        self._lora_layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        for slot in empty:
            self._read_base(slot)
            self._write_scale(slot, 0.0)

    def _read_base(self, slot: str) -> None:
        """Remember each layer's alpha/r of the adapter now in `slot` (hot-swap sets it)."""
        self._base[slot] = [layer.scaling[slot].clone() for layer in self._lora_layers]
        self._scales.pop(slot, None)

    def _write_scale(self, slot: str, scale: float) -> None:
        if self._scales.get(slot) == scale:
            return
        tensors = [layer.scaling[slot] for layer in self._lora_layers]
        torch._foreach_copy_(tensors, torch._foreach_mul(self._base[slot], scale))
        self._scales[slot] = scale

    # -- in the lane, with no other call running (AdapterSlots._switch_to) ----------------

    def _ensure_loaded(self, shared: Any, name: str, signature: Signature, keep: set[str]) -> None:
        known = self._loaded.get(name)
        if known and known[1] == signature:
            return
        if known:  # the file changed since it was loaded: its slot is free again
            self._unload(shared, name)
        failed = self._failed.get(name)
        if failed and failed[0] == signature:
            raise LoraLoadFailed(name, failed[1])
        path = str(self.library.path(name))
        slot = None
        try:
            self._check_file(shared, path)
            slot = self._free_slot(shared, keep)
            shared.load_lora_weights(path, adapter_name=slot, hotswap=True)
            self._read_base(slot)
        except Exception as exc:
            if slot is not None:
                try:
                    self._repair(shared, slot)
                except Exception:  # the answer stays about the file; the log says the rest
                    log.exception("LoRA slot %s could not be rebuilt", slot)
            if isinstance(exc, torch.OutOfMemoryError):
                raise GenerationOutOfMemory() from exc
            if is_fatal_device_error(exc):
                raise FatalDeviceError() from exc
            reason = str(exc) if isinstance(exc, Refused) else failure_reason(exc)
            self._failed[name] = (signature, reason)
            log.warning("adapter %r refused: %s", name, reason,
                        exc_info=None if isinstance(exc, Refused) else exc)  # fmt: skip
            raise LoraLoadFailed(name, reason) from exc
        self._failed.pop(name, None)
        with self._cond:
            self._loaded[name] = (slot, signature)
        log.info("adapter %r hot-swapped into %s", name, slot)

    def _free_slot(self, shared: Any, keep: set[str]) -> str:
        """Return an unused slot, or the least recently used one outside `keep`."""
        used = {slot for slot, _ in self._loaded.values()}
        free = [slot for slot in self.slots if slot not in used]
        if free:
            return free[0]
        victim = next(name for name in self._loaded if name not in keep)
        slot = self._loaded[victim][0]
        self._unload(shared, victim)
        return slot

    def _unload(self, shared: Any, name: str) -> None:
        """Forget `name`: its slot goes to scale 0 and its up-projections to zero, so the
        slot adds exact zeros (an infinity left in old weights times 0 would be NaN)."""
        with self._cond:
            slot, _ = self._loaded.pop(name)
        self._write_scale(slot, 0.0)
        self._zero(slot)
        log.info("adapter %r left %s", name, slot)

    def _zero(self, slot: str) -> None:
        for layer in self._lora_layers:
            if slot in layer.lora_B:
                layer.lora_B[slot].weight.data.zero_()

    def _repair(self, shared: Any, slot: str) -> None:
        """Make `slot` an empty slot again after a hot-swap failed part way.

        diffusers deletes an adapter whose hot-swap raised, so a lost slot is loaded anew:
        that changes the modules, and the next call recompiles (logged by the watch).
        """
        model = getattr(shared, self._component)
        if slot not in getattr(model, "peft_config", {}):
            log.warning("LoRA slot %s was lost by a failed hot-swap; rebuilding it", slot)
            self._load_zero_slot(shared, slot)
            model.set_adapter(self.slots)
            self._index_layers(model, [slot])  # the other slots keep their weights and scales
            return
        self._zero(slot)  # a partial copy
        self._write_scale(slot, 0.0)

    def _activate(self, shared: Any, loras: LoraSet) -> None:
        self._order(loras)
        scales = dict.fromkeys(self.slots, 0.0)
        for name, scale in loras:
            scales[self._loaded[name][0]] = scale
        for slot, scale in scales.items():
            self._write_scale(slot, scale)

    def _order(self, loras: LoraSet) -> None:
        """Put the set's adapters in ascending slots, in the request's order.

        PEFT adds the active slots' outputs in slot order and float addition is not
        associative, so a set whose adapters sat in other slots (whatever ran before it)
        would round differently. Moving them keeps the same request's pixels the same
        (unused slots add exact zeros); it copies weights in place, so nothing recompiles.
        """
        names = [name for name, _ in loras]
        current = [self._loaded[name][0] for name in names]
        wanted = sorted(current)
        if current == wanted:
            return
        moves = [(n, src, dst) for n, src, dst in zip(names, current, wanted, strict=True)
                 if src != dst]  # fmt: skip
        saved = {src: ([(layer.lora_A[src].weight.detach().clone(),
                         layer.lora_B[src].weight.detach().clone())
                        for layer in self._lora_layers], self._base[src])
                 for _, src, _ in moves}  # fmt: skip
        for name, src, dst in moves:
            weights, base = saved[src]
            for layer, (down, up) in zip(self._lora_layers, weights, strict=True):
                layer.lora_A[dst].weight.data.copy_(down)
                layer.lora_B[dst].weight.data.copy_(up)
            self._base[dst] = base
            self._scales.pop(dst, None)
            with self._cond:
                self._loaded[name] = (dst, self._loaded[name][1])
        log.info("adapters %s moved to slots %s", names, wanted)

    # -- what a file must be ---------------------------------------------------------------

    def _check_file(self, shared: Any, path: str) -> None:
        """Raise Refused unless every tensor of the file fits a slot."""
        # (state_dict, metadata), or (state_dict, network_alphas, metadata) for SD and SDXL.
        loaded = shared.lora_state_dict(path, return_lora_metadata=True)
        state_dict, metadata = loaded[0], loaded[-1]
        alphas = loaded[1] if len(loaded) == 3 else None
        prefix = f"{self._component}."
        others = sorted({key.split(".", 1)[0] for key in state_dict if not key.startswith(prefix)})
        if any(name.startswith("text_encoder") for name in others):
            raise Refused(
                "it has text-encoder weights, which diffusers cannot hot-swap (COMPILE=true "
                f"serves adapters of the {self._component} only)."
            )
        weights = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if others or not weights:
            raise Refused(
                "none of its weights match a layer of the served model (the diffusers/PEFT "
                "layout is read; diffusers converts no kohya layout for this family)."
            )
        if not any("lora_A" in key for key in weights):
            from diffusers.utils import convert_unet_state_dict_to_peft

            weights = convert_unet_state_dict_to_peft(weights)
        ranks = {}
        for key, value in weights.items():
            match = _KEY.match(key)
            if match is None:
                raise Refused(
                    f"it holds {key.rsplit('.', 1)[-1]!r} tensors (a LoRA bias, DoRA or "
                    "another adapter type), which hot-swap does not take."
                )
            module, kind = match["module"], match["kind"]
            if module not in self._shapes:
                known = any(n == module for n, _ in getattr(shared, self._component)
                            .named_modules())  # fmt: skip
                raise Refused(
                    f"it adapts {module}, outside the hot-swap slots' layers "
                    f"(LORA_HOTSWAP_LAYERS={','.join(self.layers)})."
                    if known
                    else "it names layers the served model does not have."
                )
            features_in, features_out = self._shapes[module]
            rank, fits = (
                (value.shape[0], value.shape[1:] == (features_in,))
                if kind == "A"
                else (value.shape[-1], value.shape[:-1] == (features_out,))
            )
            if value.ndim != 2 or not fits:
                raise Refused("its weights do not fit the model's layers (wrong shapes).")
            if rank > self.rank:
                raise Refused(
                    f"its rank {rank} is above the hot-swap slots' LORA_HOTSWAP_RANK={self.rank}."
                )
            if ranks.setdefault(module, rank) != rank:
                raise Refused("its weights do not fit the model's layers (wrong shapes).")
        self._check_config(shared, weights, metadata, ranks, alphas)

    def _check_config(
        self,
        shared: Any,
        weights: dict[str, Any],
        metadata: Any,
        ranks: dict[str, int],
        alphas: dict[str, float] | None = None,
    ) -> None:
        """Refuse what PEFT's hot-swap would refuse (after diffusers drops the slot)."""
        from diffusers.utils.peft_utils import _create_lora_config
        from peft.utils.hotswap import check_hotswap_configs_compatible

        model = getattr(shared, self._component)
        prefix = f"{self._component}."
        if metadata:  # diffusers' reading: the keys of this component only
            metadata = {k.removeprefix(prefix): v for k, v in metadata.items()
                        if k.startswith(prefix)}  # fmt: skip
        if alphas:  # kohya SD/SDXL files: alphas per layer, read as diffusers reads them
            alphas = {k.removeprefix(prefix): v for k, v in alphas.items()
                      if k.startswith(prefix)}  # fmt: skip
        ranks_b = {f"^{module}.lora_B.weight": rank for module, rank in ranks.items()}
        try:
            config = _create_lora_config(weights, alphas or None, metadata or None, ranks_b)
            check_hotswap_configs_compatible(model.peft_config[self.slots[0]], config)
        except (ValueError, TypeError) as exc:
            raise Refused(
                "its LoRA settings differ from the slots' in a way PEFT's hot-swap does not "
                "take (rank or alpha varying by layer, dropout, rsLoRA or DoRA)."
            ) from exc
