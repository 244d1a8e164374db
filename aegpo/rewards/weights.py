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
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def load_state_dict(path: str | Path,
                    nested_keys: tuple[str, ...] = ("state_dict", "model")) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a pickle read with weights_only=True.

    A pickle holding {"state_dict": {...}} (open_clip/HPS) or {"model": {...}} is unwrapped; a
    "module." prefix (DataParallel) is stripped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    elif path.suffix in PICKLE_SUFFIXES:
        log.warning("%s is a pickle: reading it with torch.load(weights_only=True); convert it once with "
                    "`python -m aegpo.rewards.weights %s %s`", path, path, path.with_suffix(".safetensors"))
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - report any refusal the same way
            raise ValueError(f"{path}: not loadable with torch.load(weights_only=True) ({err}); it is not a plain "
                             "tensor checkpoint, and arbitrary pickles are never unpickled") from None
        for key in nested_keys:
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    else:
        raise ValueError(f"{path}: expected a .safetensors file or a PyTorch checkpoint ({', '.join(PICKLE_SUFFIXES)})")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a mapping of parameter names to tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


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
