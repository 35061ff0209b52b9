"""The fused IF kernels against the eager loop, case by case. test_kernels.py runs the CPU
kernel's cases in its own process and the Triton kernel's in a child process started with
TRITON_INTERPRET=1, so that kernel runs on CPU under Triton's interpreter.

Why a child process: this Triton reads TRITON_INTERPRET when `triton.jit` wraps a function, and
the kernel calls library functions (`tl.sum`) that Triton wraps when `triton.language` is first
imported; the variable must therefore be set before Triton is imported at all, which only a fresh
process guarantees. `python tests/kernel_check.py` prints one JSON line: per case, whether
outputs, membranes (bit patterns, signed zeros included) and spike counts are all identical.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import torch
from torch import Tensor

from rmp_cli.convert import balance_thresholds, to_spiking
from rmp_cli.models import create_model
from rmp_cli.snn import ChunkedRun, IFNeuron, SpikingNet, run_batch

Result = list[tuple[Tensor, Tensor, Tensor | None]]
DEVICE = "cpu"  # where the cases run ("cuda": the compiled Triton kernel on a GPU)


def run_neuron(
    backend: str,
    currents: Tensor,  # [steps, B, ...], or [B, ...] when constant
    steps: int,
    chunk: int,
    *,
    theta: Tensor,
    reset: str = "soft",
    v_init: float = 0.0,
    constant: bool = False,
    channels_last: bool = False,
    count: bool = True,
    signed: bool = False,
    max_spikes: int = 1,
) -> Result:
    """(output, membrane, counts) after every chunk of one neuron run through `steps` steps."""
    if DEVICE != "cpu":
        currents, theta = currents.to(DEVICE), theta.to(DEVICE)
    neuron = IFNeuron(reset=reset, v_init=v_init).to(currents.device)
    neuron.set_threshold(theta)
    neuron.signed, neuron.max_spikes = signed, max_spikes
    neuron.backend = backend
    neuron.count_spikes = count
    batch = currents.shape[0] if constant else currents.shape[1]
    results, t0 = [], 0
    for tc in [min(chunk, steps - t) for t in range(0, steps, chunk)]:
        x = currents if constant else currents[t0 : t0 + tc].flatten(0, 1)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        neuron.configure(tc, batch)
        out = neuron(x)
        counts = None if neuron.last_counts is None else neuron.last_counts.clone()
        v = neuron.v.clone()
        if signed:  # the net count is state too: compare it with the membrane
            v = torch.cat([v.flatten(), neuron.net_count.flatten()])
        results.append((out.clone(), v, counts))
        t0 += tc
    return results


def mismatch(fused: Result, eager: Result) -> str | None:
    """None when identical, else what differs first."""
    for i, ((out_a, v_a, n_a), (out_b, v_b, n_b)) in enumerate(zip(fused, eager, strict=True)):
        if out_a.dtype != torch.float32 or out_a.stride() != out_b.stride():
            return f"chunk {i}: output {out_a.dtype} {out_a.stride()} vs {out_b.stride()}"
        if not torch.equal(out_a, out_b):
            return f"chunk {i}: {int((out_a != out_b).sum())} spikes differ"
        bits_a, bits_b = v_a.contiguous().view(torch.int32), v_b.contiguous().view(torch.int32)
        if not torch.equal(bits_a, bits_b):
            return f"chunk {i}: {int((bits_a != bits_b).sum())} membranes differ"
        if (n_a is None) != (n_b is None) or (
            n_a is not None and (n_a.dtype != n_b.dtype or not torch.equal(n_a, n_b))
        ):
            return f"chunk {i}: counts {n_a} vs {n_b}"
    if len(fused) != len(eager):
        return "different number of chunks"
    return None


def currents(shape: tuple[int, ...], seed: int, dyadic: bool = False) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen) * 0.9 - 0.1  # some negative currents too
    if dyadic:  # multiples of 1/8: membranes land exactly on the threshold, testing `>=`
        x = (x * 8).round() / 8
    return x


Check = Callable[[str], str | None]  # kernel name -> None when identical, else what differs


def neuron_case(x: Tensor, steps: int, chunk: int, **kw: object) -> Check:
    def check(kernel: str) -> str | None:
        eager = run_neuron("eager", x, steps, chunk, **kw)
        if kw.get("count", True) and sum(int(c.sum()) for _, _, c in eager) == 0:
            return "no spikes: the case tests nothing"
        return mismatch(run_neuron(kernel, x, steps, chunk, **kw), eager)

    return check


# Small nets of the registry on 8x8 images (no pytest needed, so this also runs on a GPU machine
# without it): (model, input shape, width).
NETS = {"resnet20": ("resnet20", (3, 8, 8), 0.25), "digits_cnn": ("digits_cnn", (1, 8, 8), None)}


def calibrated(name: str, per_channel: bool) -> SpikingNet:
    model, shape, width = NETS[name]
    torch.manual_seed(0)
    ann = create_model(model, num_classes=10, input_shape=shape, batch_norm=True, width=width)
    ann.eval()
    net = to_spiking(ann)
    calib = torch.rand(16, *shape, generator=torch.Generator().manual_seed(1))
    balance_thresholds(net, ann, calib, method="max_act", scale=0.8, per_channel=per_channel)
    return net


def simulation_case(
    name: str,
    reset: str,
    precision: str,
    channels_last: bool,
    per_channel: bool,
    signed: bool = False,
    max_spikes: int = 1,
    offset: str | None = None,
) -> Check:
    def check(kernel: str) -> str | None:
        net = calibrated(name, per_channel)
        net.reset_mode = reset
        net.v_init = 0.5 if reset == "soft" else 0.0
        net.signed, net.max_spikes = signed, max_spikes
        pre = {"presteps": 3, "offset": offset} if offset else {}
        x = torch.rand(3, *NETS[name][1], generator=torch.Generator().manual_seed(2))
        traces = {}
        for backend in ("eager", kernel):
            net.neuron_backend = backend
            with (
                torch.inference_mode(),
                ChunkedRun(
                    net,
                    chunk=5,
                    precision=precision,
                    channels_last=channels_last,
                    device=DEVICE,
                    **pre,
                ) as run,
            ):
                traces[backend] = run_batch(run, x, [2, 9])
        a, b = traces["eager"], traces[kernel]
        if int(a.layer_spikes.sum()) == 0:
            return "no spikes: the case tests nothing"
        if not torch.equal(a.potentials, b.potentials):
            return "readout potentials differ"
        if not torch.equal(a.layer_spikes, b.layer_spikes):
            return "spikes per layer and step differ"
        if not torch.equal(a.layer_events, b.layer_events):
            return "synaptic events differ"
        return None

    return check


def cases(kernel: str) -> dict[str, Check]:
    """Every case the kernel can take (the CPU kernel reads float32 and bfloat16 currents)."""
    table: dict[str, Check] = {}
    conv = currents((11, 3, 4, 5, 5), seed=1)
    for reset in ("soft", "hard"):
        for per_channel in (False, True):
            theta = torch.tensor([0.3, 0.55, 0.8, 1.0]) if per_channel else torch.tensor(0.45)
            for cl in (False, True):
                for v_init in (0.0, 0.5):
                    name = (
                        f"conv-{reset}-{'channel' if per_channel else 'layer'}-"
                        f"{'nhwc' if cl else 'nchw'}-v{v_init}"
                    )
                    table[name] = neuron_case(
                        conv, 11, 4, theta=theta, reset=reset, v_init=v_init, channels_last=cl
                    )
        dyadic = currents((16, 2, 3, 4, 4), seed=2, dyadic=True)
        table[f"threshold-ties-{reset}"] = neuron_case(
            dyadic, 16, 16, theta=torch.tensor([0.5, 0.75, 1.0]), reset=reset, v_init=0.5
        )
        constant = currents((2, 3, 4, 4), seed=3)  # [B, ...]: the stem's output
        table[f"constant-{reset}-layer"] = neuron_case(
            constant, 13, 5, theta=torch.tensor(0.3), reset=reset, constant=True
        )
        table[f"constant-{reset}-channel"] = neuron_case(
            constant, 13, 5, theta=torch.tensor([0.2, 0.4, 0.7]), reset=reset, constant=True
        )
    features = currents((9, 4, 37), seed=4)  # [B, F]: linear layers
    table["features-layer"] = neuron_case(features, 9, 4, theta=torch.tensor(0.5))
    table["features-channel"] = neuron_case(features, 9, 4, theta=torch.linspace(0.2, 0.9, 37))
    # 2*24*24 = 1152 neurons per image: two blocks, the second partly masked
    big = currents((3, 2, 2, 24, 24), seed=5)
    for cl in (False, True):
        table[f"two-blocks-{'nhwc' if cl else 'nchw'}"] = neuron_case(
            big, 3, 3, theta=torch.tensor([0.3, 0.6]), reset="hard", channels_last=cl
        )
    for dtype in ("bfloat16", "float16") if kernel == "triton" else ("bfloat16",):
        half = currents((10, 3, 4, 3, 3), seed=6).to(getattr(torch, dtype))
        table[f"currents-{dtype}"] = neuron_case(
            half, 10, 4, theta=torch.tensor([0.3, 0.5, 0.7, 0.9]), v_init=0.5
        )
    table["not-counting"] = neuron_case(conv, 4, 4, theta=torch.tensor(0.3), count=False)
    for name, reset, precision, cl, per_channel in [
        ("resnet20", "soft", "fp32", True, False),
        ("resnet20", "hard", "fp32", False, True),
        ("digits_cnn", "hard", "fp32", True, True),
        ("digits_cnn", "soft", "fp32", False, False),
        ("resnet20", "soft", "bf16", True, True),
    ]:
        layout = "nhwc" if cl else "nchw"
        theta = "channel" if per_channel else "layer"
        table[f"simulate-{name}-{reset}-{precision}-{layout}-{theta}"] = simulation_case(
            name, reset, precision, cl, per_channel
        )
    # Bursts and signed spikes (the general rule); currents of both signs make negative spikes.
    swing = currents((12, 3, 4, 5, 5), seed=7) * 2.5 - 0.9
    for per_channel in (False, True):
        theta = torch.tensor([0.3, 0.55, 0.8, 1.0]) if per_channel else torch.tensor(0.45)
        which = "channel" if per_channel else "layer"
        for cl in (False, True):
            layout = "nhwc" if cl else "nchw"
            for reset in ("soft", "hard"):
                table[f"burst3-{reset}-{which}-{layout}"] = neuron_case(
                    swing, 12, 5, theta=theta, reset=reset, channels_last=cl, max_spikes=3
                )
            table[f"signed-{which}-{layout}"] = neuron_case(
                swing, 12, 5, theta=theta, v_init=0.5, channels_last=cl, signed=True
            )
            table[f"signed-burst2-{which}-{layout}"] = neuron_case(
                swing, 12, 5, theta=theta, channels_last=cl, signed=True, max_spikes=2
            )
    table["burst4-constant"] = neuron_case(
        currents((2, 3, 4, 4), seed=8) * 3,
        9,
        4,
        theta=torch.tensor(0.3),
        constant=True,
        max_spikes=4,
    )
    table["signed-features"] = neuron_case(
        currents((9, 4, 37), seed=9) * 2 - 0.7, 9, 4, theta=torch.tensor(0.5), signed=True
    )
    table["burst2-currents-bfloat16"] = neuron_case(
        (swing[:8]).to(torch.bfloat16), 8, 3, theta=torch.tensor(0.4), max_spikes=2
    )
    for name, signed, max_spikes, offset in [
        ("resnet20", True, 1, None),
        ("resnet20", False, 2, "srp"),
        ("digits_cnn", True, 2, "cos"),
    ]:
        label = f"simulate-{name}-signed{int(signed)}-burst{max_spikes}-{offset}"
        table[label] = simulation_case(
            name, "soft", "fp32", True, True, signed=signed, max_spikes=max_spikes, offset=offset
        )
    return table


def main() -> None:
    """`python tests/kernel_check.py [--device cuda]`: the Triton kernel's cases, under the
    interpreter on CPU (with TRITON_INTERPRET=1) or compiled on a GPU."""
    global DEVICE
    DEVICE = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
    torch.set_num_threads(1)
    from rmp_cli.snn.kernels import triton_if

    interpreted = type(triton_if.if_chunk_kernel).__name__ == "InterpretedFunction"
    report = {}
    for name, check in cases("triton").items():
        try:
            report[name] = check("triton")
        except Exception as exc:  # reported per case, so one failure does not hide the rest
            report[name] = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"interpreted": interpreted, "device": DEVICE, "cases": report}))


if __name__ == "__main__":
    main()
