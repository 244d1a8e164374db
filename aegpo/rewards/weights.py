"""Loading published reward-model weights safely, and converting pickles to safetensors.

Weights are read with safetensors. Some published checkpoints exist only as PyTorch pickles
(`HPS_v2.1_compressed.pt`, `ImageReward.pt`, the LAION aesthetic `.pth`): those are read
with `torch.load(..., weights_only=True)`, which refuses anything but tensors and plain
containers (no code execution), and a warning suggests converting them once:

    python -m aegpo.rewards.weights SRC.pt DST.safetensors

after which `reward.models.<name>` points at the safetensors file.
"""

from __future__ import annotations

import argparse
import logging
import pickle
from pathlib import Path

import torch
from safetensors.torch import save_file

from aegpo.io_utils import CorruptFileError, check_file, load_safetensors, shorten

log = logging.getLogger(__name__)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


DEFAULT_REMEDY = "download it again (see docs/rewards.md for its source) and point the reward's option at it"


def load_state_dict(path: str | Path, nested_keys: tuple[str, ...] = ("state_dict", "model"),
                    remedy: str = DEFAULT_REMEDY) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a pickle read with weights_only=True.

    A pickle holding {"state_dict": {...}} (open_clip/HPS) or {"model": {...}} is unwrapped; a
    "module." prefix (DataParallel) is stripped. A missing, empty, truncated or damaged file, or one that holds
    something else than tensors, raises CorruptFileError naming it and ending with `remedy` (what to do: the
    reward's option to point at a good copy).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        state = load_safetensors(path, remedy)
    elif path.suffix in PICKLE_SUFFIXES:
        check_file(path, remedy)
        log.warning("%s is a pickle: reading it with torch.load(weights_only=True); convert it once with "
                    "`python -m aegpo.rewards.weights %s %s`", path, path, path.with_suffix(".safetensors"))
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CorruptFileError(f"{path}: torch.load(weights_only=True) refused it ({_refusal(err)}): it is damaged "
                                   "or not a plain tensor checkpoint, and arbitrary pickles are never unpickled; "
                                   f"{remedy}") from None
        except Exception as err:  # noqa: BLE001 - a torn zip or pickle fails in many ways (EOFError, OSError, ...)
            raise CorruptFileError(f"{path} is not a readable PyTorch checkpoint (truncated or damaged? "
                                   f"{type(err).__name__}: {shorten(str(err))}); {remedy}") from None
        for key in nested_keys:
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    else:
        raise ValueError(f"{path}: expected a .safetensors file or a PyTorch checkpoint ({', '.join(PICKLE_SUFFIXES)})")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptFileError(f"{path}: expected a mapping of parameter names to tensors, found "
                               f"{_describe(state)}; {remedy}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _refusal(err: pickle.UnpicklingError) -> str:
    """What the restricted unpickler refused, without torch's advice to rerun with weights_only=False."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    reason = text.split(marker, 1)[1] if marker in text else text
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    return shorten(lines[0] if lines else type(err).__name__)


def _describe(state: object) -> str:
    if isinstance(state, dict):
        if not state:
            return "an empty mapping"
        other = next(v for v in state.values() if not isinstance(v, torch.Tensor))
        return f"a mapping with a {type(other).__name__} value"
    return f"a {type(state).__name__}"


def convert(src: str | Path, dst: str | Path) -> Path:
    """Write the tensors of `src` (pickle or safetensors) to the safetensors file `dst`."""
    state = load_state_dict(src)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(dst))
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert a PyTorch weight pickle to safetensors (weights_only load).")
    parser.add_argument("src", help="e.g. HPS_v2.1_compressed.pt, ImageReward.pt, sac+logos+ava1-l14-linearMSE.pth")
    parser.add_argument("dst", help="output .safetensors file")
    args = parser.parse_args(argv)
    out = convert(args.src, args.dst)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
