"""The fused IF kernels against the eager loop: same spikes, membranes and counts, bit for bit.

The CPU kernel (a compiled C loop) runs here directly. The Triton kernel runs on CPU under
Triton's interpreter, in one child process started with TRITON_INTERPRET=1 (tests/kernel_check.py
says why it must be a fresh process); each case reads its verdict from that run. With CUDA, the
compiled Triton kernel is checked on the GPU as well. Triton tests are skipped where Triton is
not installed (CPU-only torch builds), CPU kernel tests where no C compiler works.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rmp_cli.errors import RmpError
from rmp_cli.snn import IFNeuron
from rmp_cli.snn.kernels import cpu_if, triton_available
from tests import kernel_check
from tests.snn_nets import single_thread  # noqa: F401 - autouse fixture
from tests.test_simulator import calibrated

ROOT = Path(__file__).resolve().parents[1]
needs_triton = pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
needs_compiler = pytest.mark.skipif(cpu_if.library() is None, reason="no C compiler works")
needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and triton_available()), reason="needs CUDA and Triton"
)


# --- the CPU kernel ---------------------------------------------------------------------------------
@needs_compiler
@pytest.mark.parametrize("case", list(kernel_check.cases("cpu")))
def test_cpu_kernel_equals_eager(case: str) -> None:
    assert kernel_check.cases("cpu")[case]("cpu") is None


@needs_compiler
def test_cpu_kernel_is_exact_with_one_and_two_threads() -> None:
    x = kernel_check.currents((8, 16, 8, 32, 32), seed=9)  # 512 work items
    kw = dict(theta=torch.tensor(0.4), reset="soft", v_init=0.0)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        assert (
            kernel_check.mismatch(
                kernel_check.run_neuron("cpu", x, 8, 8, **kw),
                kernel_check.run_neuron("eager", x, 8, 8, **kw),
            )
            is None
        )
    torch.set_num_threads(1)


@needs_compiler
@pytest.mark.parametrize("block", [7, 100, 4096])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize(
    "options",
    [
        {"reset": "hard"},
        {"reset": "hard", "max_spikes": 3},  # the per-neuron loop of hard bursts
        {"reset": "soft", "signed": True, "max_spikes": 2},  # the pass-by-pass loop
    ],
    ids=["plain", "hard-burst", "signed-burst"],
)
def test_cpu_kernel_work_items_may_split_images(
    block: int, per_channel: bool, options: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 3*7*11 = 231 neurons per image: items of 7 or 100 neurons end inside images, 4096 hold
    # several; the counts must still land on the right (step, image).
    monkeypatch.setattr(cpu_if, "BLOCK", block)
    x = kernel_check.currents((6, 20, 3, 7, 11), seed=10)
    if len(options) > 1:
        x = x * 3 - 0.8  # bursts and negative spikes
    theta = torch.tensor([0.2, 0.5, 0.8]) if per_channel else torch.tensor(0.45)
    for cl in (False, True):
        kw = dict(theta=theta, v_init=0.5, channels_last=cl, **options)
        fused = kernel_check.run_neuron("cpu", x, 6, 4, **kw)
        assert kernel_check.mismatch(fused, kernel_check.run_neuron("eager", x, 6, 4, **kw)) is None


@needs_compiler
def test_auto_uses_the_cpu_kernel_on_cpu_and_eager_where_it_cannot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []
    run_chunk = cpu_if.run_chunk
    monkeypatch.setattr(cpu_if, "run_chunk", lambda *a, **k: calls.append(1) or run_chunk(*a, **k))
    neuron = IFNeuron(0.5)
    assert neuron.backend == "auto"
    neuron.configure(3, 2)
    neuron(torch.rand(6, 4))
    assert calls == [1]
    neuron(torch.rand(6, 4, dtype=torch.float16))  # the CPU kernel takes no float16: eager
    neuron(torch.rand(4, 6).t())  # neither contiguous nor channels_last: eager
    neuron(torch.rand(6, 4, requires_grad=True))  # autograd cannot see into a kernel: eager
    assert calls == [1]


@needs_compiler
def test_cpu_kernel_is_built_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RMP_KERNEL_CACHE", str(tmp_path))
    cpu_if.library.cache_clear()
    try:
        assert cpu_if.library() is not None
        built = list(tmp_path.glob("if_chunk-*.so"))
        assert len(built) == 1
        stamp = built[0].stat().st_mtime_ns
        cpu_if.library.cache_clear()
        assert cpu_if.library() is not None
        assert built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
    finally:
        cpu_if.library.cache_clear()


def test_without_a_compiler_the_neuron_runs_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_if, "_compiler", lambda: None)
    cpu_if.library.cache_clear()
    try:
        neuron = IFNeuron(0.5)
        neuron.configure(4, 2)
        x = torch.rand(8, 3)
        reference = IFNeuron(0.5)
        reference.backend = "eager"
        reference.configure(4, 2)
        assert torch.equal(neuron(x), reference(x))
        neuron.backend = "cpu"
        with pytest.raises(RmpError, match="cpu kernel cannot run here: no C compiler"):
            neuron(x)
    finally:
        cpu_if.library.cache_clear()


# --- the Triton kernel under the interpreter ---------------------------------------------------------
@pytest.fixture(scope="module")
def interpreted_run() -> dict:
    """Every Triton case of kernel_check.py, run once in a child process under the interpreter."""
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "kernel_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_triton
def test_the_child_process_ran_the_interpreted_kernel(interpreted_run: dict) -> None:
    assert interpreted_run["interpreted"] is True
    assert list(interpreted_run["cases"]) == list(kernel_check.cases("triton"))


@needs_triton
@pytest.mark.parametrize("case", list(kernel_check.cases("triton")))
def test_triton_kernel_equals_eager_under_the_interpreter(interpreted_run: dict, case: str) -> None:
    assert interpreted_run["cases"][case] is None, interpreted_run["cases"][case]


# The interpreter never compiles: compile the kernel for an H100 (sm_90) here, no GPU needed,
# so that the GPU path at least builds and its arithmetic can be read.
# Each compile takes seconds (cached by Triton afterwards): one in the fast suite.
PTX_CASES = [  # currents, hard, constant, per_channel, count[, max_spikes, signed]
    ("*fp32", False, False, True, True),
    ("*fp32", False, False, True, True, 3, True),  # bursts and signed spikes
    pytest.param(("*bf16", True, True, False, False), marks=pytest.mark.slow),
    pytest.param(("*fp16", False, False, False, True), marks=pytest.mark.slow),
    pytest.param(("*fp32", True, False, False, True, 2, False), marks=pytest.mark.slow),
]


def compile_for_sm90(
    current: str,
    hard: bool,
    constant: bool,
    per_channel: bool,
    count: bool,
    max_spikes: int = 1,
    signed: bool = False,
):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from rmp_cli.snn.kernels import triton_if

    names = list(triton_if.if_chunk_kernel.arg_names)
    pointers = [current, "*fp32", "*fp32", "*fp32", "*i32", "*fp32"]
    flags = {"HARD": hard, "CONSTANT": constant, "PER_CHANNEL": per_channel, "COUNT": count}
    flags |= {"BLOCK": 1024, "MAX_SPIKES": max_spikes, "SIGNED": signed}
    signature = dict(zip(names, pointers + ["i32"] * 5 + ["constexpr"] * 7, strict=True))
    try:
        source = ASTSource(
            fn=triton_if.if_chunk_kernel,
            signature=signature,
            constexprs={(names.index(k),): v for k, v in flags.items()},
        )
    except TypeError as exc:  # another Triton's compiler API: nothing to check with it here
        pytest.skip(f"this Triton's ASTSource differs: {exc}")
    # the options run_chunk launches with
    options = {"num_warps": 4, "enable_fp_fusion": False}
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


@needs_triton
@pytest.mark.parametrize("case", PTX_CASES, ids=lambda c: "-".join(map(str, c)))
def test_triton_kernel_compiles_for_the_gpu_without_fused_multiply_adds(case: tuple) -> None:
    ptx = compile_for_sm90(*case).asm["ptx"]
    assert "fma." not in ptx  # separate add.rn / mul.rn / sub.rn, as the eager rule rounds
    assert "add.rn.f32" in ptx and "setp.ge.f32" in ptx
    assert ("atom." in ptx or "red." in ptx) == case[4]  # the counts' atomic add


@needs_triton
def test_forcing_a_kernel_on_what_it_cannot_take_is_refused() -> None:
    neuron = IFNeuron(0.5)
    neuron.name = "features.1"
    neuron.configure(2, 2)
    for backend in ("triton", "cpu"):
        neuron.backend = backend
        with pytest.raises(RmpError, match=rf"'features\.1': the {backend} kernel.*float64"):
            neuron(torch.rand(4, 3, dtype=torch.float64))


def test_the_environment_sets_the_default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RMP_NEURON_BACKEND", "eager")
    assert IFNeuron().backend == "eager"
    assert {n.backend for n in calibrated("vgg").neurons} == {"eager"}
    monkeypatch.setenv("RMP_NEURON_BACKEND", "gpu")
    with pytest.raises(RmpError, match="unknown neuron backend 'gpu'"):
        IFNeuron()


def test_unknown_backend_is_rejected() -> None:
    with pytest.raises(RmpError, match="unknown neuron backend 'cuda'; choose one of"):
        IFNeuron().backend = "cuda"
    net = calibrated("vgg")
    with pytest.raises(RmpError, match="unknown neuron backend"):
        net.neuron_backend = "fast"
    net.neuron_backend = "eager"
    assert {n.backend for n in net.neurons} == {"eager"}


# --- the compiled Triton kernel on a GPU --------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_compiled_triton_kernel_equals_eager_on_cuda(
    reset: str, channels_last: bool, per_channel: bool
) -> None:
    steps, run = 40, kernel_check.run_neuron
    x = kernel_check.currents((steps, 16, 8, 17, 17), seed=8).cuda()  # 2 blocks per image
    theta = (torch.linspace(0.2, 0.9, 8) if per_channel else torch.tensor(0.4)).cuda()
    kw = dict(theta=theta, reset=reset, v_init=0.5, channels_last=channels_last)
    fused, eager = run("triton", x, steps, 16, **kw), run("eager", x, steps, 16, **kw)
    assert kernel_check.mismatch(fused, eager) is None
    kw["constant"] = True  # and "auto" picks the kernel on CUDA
    fused, eager = run("auto", x[0], steps, 16, **kw), run("eager", x[0], steps, 16, **kw)
    assert kernel_check.mismatch(fused, eager) is None


@needs_cuda
@pytest.mark.parametrize("case", list(kernel_check.cases("triton")))
def test_compiled_triton_kernel_cases_on_cuda(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The interpreter's cases again, on the GPU (currents and thresholds moved there)."""
    monkeypatch.setattr(kernel_check, "DEVICE", "cuda")
    assert kernel_check.cases("triton")[case]("triton") is None
