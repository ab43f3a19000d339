"""The contract in PyTorch: eager by default; torch.compile, channels_last, CUDA graphs."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.backends.base import Backend, Feed, Step, Variant, refuse_no_gpu, refuse_precision
from pipeline.backends.torch.layers import from_native, to_native, torch_module
from pipeline.errors import Unavailable
from pipeline.probe import speedo, telemetry
from pipeline.spec import LOSS_SCALE, LOSS_SCALE_GROWTH, ModelSpec, Optim, init_weights


AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}  # autocast's compute dtype per 16-bit precision


class TorchBackend(Backend):
    NAME = "torch"
    MODEL_SUFFIX = ".pt"
    DEFAULT = "eager"
    VARIANTS = {"eager": Variant("PyTorch eager (default)"),
                "compile": Variant("torch.compile of the whole training step (forward, backward, optimizer "
                                   "update), static shapes, inductor", asked_by="compile"),
                "channels_last": Variant("eager, weights and activations in channels_last (NHWC) memory: the "
                                         "layout cuDNN's and oneDNN's fastest convolutions want (CNN only)",
                                         asked_by="channels_last", conv_only=True),
                "cuda_graphs": Variant("torch.compile(mode='reduce-overhead') of the whole step: inductor "
                                       "kernels replayed as one CUDA graph, Adam capturable (CUDA only)",
                                       asked_by="cuda_graphs")}
    ABSENT = {"fit": "Keras' own training loop: PyTorch has none"}
    # torch.optim's first add_param_group imports TorchDynamo (with sympy, ~840 modules): 1.0 s in every child on
    # the 2-core CPU this was built on, 3.3-4.6 s there without bytecode (as a lent GPU box's PyTorch has none);
    # its first zero_grad imports the profiler's CUPTI monitor (PyTorch 2.13)
    LAZY_IMPORTS = ("torch._dynamo", "torch.profiler._cupti_monitor")

    def __init__(self, threads: int, device: str, seed: int, precision: str):
        if threads:
            torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):  # already set in this process
            torch.set_num_interop_threads(1)  # like TF's inter-op pool: ops run one after another
        use = telemetry.run_device(device)  # one device for every framework of the run, not what each finds
        if use == "cuda" and not torch.cuda.is_available():
            refuse_no_gpu(device, "PyTorch", "its CPU-only build is installed (README \"Install\": TORCH_INDEX)"
                          if torch.version.cuda is None else f"its CUDA {torch.version.cuda} build finds no device",
                          built_for=torch.version.cuda)
        self.device = torch.device(use)
        name = torch.cuda.get_device_name(0) if use == "cuda" else "cpu"
        refuse_precision(precision, name, torch.cuda.get_device_capability(0) if use == "cuda" else None)
        # fp32 means fp32: TF32 off for matmuls and cuDNN convolutions (PyTorch's defaults differ between the two,
        # and from TensorFlow's); tf32 turns both on, as the TensorFlow backend does
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        # bf16 / fp16: autocast around the forward pass (matmuls and convolutions in 16 bits, the loss and the
        # weights in float32), the same split as Keras' mixed_bfloat16 / mixed_float16 policies
        self.amp = AMP.get(precision)
        # cuDNN times each convolution's candidate algorithms once per shape and keeps the fastest, as TensorFlow
        # does by default: off (PyTorch's default) a tuned TensorFlow CNN would meet PyTorch's heuristic picks
        torch.backends.cudnn.benchmark = True
        self.reseed(seed)
        tf32 = torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        self.info = {"framework": self.NAME, "framework_version": torch.__version__, "device": name,
                     "intra_op_threads": torch.get_num_threads(), "inter_op_threads": torch.get_num_interop_threads(),
                     "conv_autotune": torch.backends.cudnn.benchmark,
                     "precision": "tf32" if tf32 else next((p for p, t in AMP.items() if t is self.amp), "fp32")}

    def _forward(self, net: Any, xb: torch.Tensor, keep: tuple | None = None) -> torch.Tensor:
        """Logits in float32, computed at the backend's precision; `keep`: the shared dropout masks (Step)."""
        run = net if keep is None else lambda x: _masked(net, x, keep)
        if self.amp is None:
            return run(xb)
        with torch.autocast(self.device.type, dtype=self.amp):
            return run(xb).float()

    def reseed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def build(self, spec: ModelSpec, weights: list[np.ndarray]) -> nn.Module:
        model = nn.Sequential(*(torch_module(layer) for layer in spec.layers))
        with torch.no_grad():
            for p, w in zip(model.parameters(), to_native(spec, weights), strict=True):
                p.copy_(torch.from_numpy(w))
        return model.to(self.device)

    def get_weights(self, model: nn.Module, spec: ModelSpec) -> list[np.ndarray]:
        # a copy: on a CPU .numpy() shares the parameter's memory, which the next update would change
        return from_native(spec, [p.detach().cpu().numpy().copy() for p in model.parameters()])

    def put(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """NHWC float32 images -> NCHW device tensors kept in memory for the whole run."""
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        return xt.to(self.device), torch.from_numpy(y.astype(np.int64)).to(self.device)

    def take(self, data: tuple[torch.Tensor, torch.Tensor], idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.from_numpy(idx).to(self.device)
        return data[0].index_select(0, i), data[1].index_select(0, i)

    def array(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def _layout(self, model: nn.Module, variant: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """The variant's input layout; channels_last also converts the model's conv weights, in place."""
        if variant == "cuda_graphs" and self.device.type != "cuda":
            raise Unavailable(f"cuda_graphs: CUDA graphs need a CUDA device; this child runs on {self.device.type}")
        if variant != "channels_last":
            return lambda xb: xb
        model.to(memory_format=torch.channels_last)
        return lambda xb: xb.contiguous(memory_format=torch.channels_last)  # free for 1 channel: same strides

    def _compiled(self, fn: Callable, variant: str) -> Callable:
        """`compile` hands the whole step (forward, loss, backward, optimizer update) to torch.compile with static
        shapes, so it is compared with XLA's whole step, not with a compiled forward pass alone; `cuda_graphs`
        does the same in reduce-overhead mode, whose outputs live in the graph's buffers until its next replay."""
        if variant == "compile":
            return torch.compile(fn, dynamic=False)
        if variant != "cuda_graphs":
            return fn
        graphed = torch.compile(fn, mode="reduce-overhead", dynamic=False)

        def run(*args: torch.Tensor) -> Any:
            torch.compiler.cudagraph_mark_step_begin()  # a new step: last replay's outputs may be overwritten
            out = graphed(*args)
            return out.clone() if isinstance(out, torch.Tensor) else tuple(t.clone() for t in out)
        return run

    def make_step(self, model: nn.Module, optim: Optim, variant: str) -> Step:
        """One update in `variant` (VARIANTS): the same maths, another layout or launch path."""
        layout = self._layout(model, variant)
        opt = make_optimizer(model, optim, capturable=variant == "cuda_graphs")
        scaler = self._scaler(variant)

        def step(xb: torch.Tensor, yb: torch.Tensor, keep: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self._forward(model, layout(xb), keep)
            loss = F.cross_entropy(logits, yb)  # mean over the batch, on logits
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:  # fp16: backward on the scaled loss; on a non-finite gradient no update, and the scale halves
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            return loss.detach() * len(yb), (logits.argmax(1) == yb).sum()
        run = self._compiled(step, variant)

        def train_step(xb: torch.Tensor, yb: torch.Tensor, *keep: tuple) -> tuple[torch.Tensor, torch.Tensor]:
            model.train()
            return run(xb, yb, *keep)

        def set_lr(lr: float) -> None:
            for group in opt.param_groups:
                group["lr"] = lr
        return Step(train_step, opt, set_lr, scaler)

    def _scaler(self, variant: str) -> torch.amp.GradScaler | None:
        """fp16's dynamic loss scaling with spec's settings, as the TensorFlow backend's LossScaleOptimizer has them;
        None at any other precision."""
        if self.amp is not torch.float16:
            return None
        if variant in ("compile", "cuda_graphs"):
            raise Unavailable(f"{variant}: at fp16 the loss scaler reads its overflow check back to decide each "
                              "update, which splits a compiled whole step")
        return torch.amp.GradScaler(self.device.type, init_scale=LOSS_SCALE, growth_factor=2.0, backoff_factor=0.5,
                                    growth_interval=LOSS_SCALE_GROWTH)

    def make_predict(self, model: nn.Module, variant: str) -> Callable[[Any], Any]:
        layout = self._layout(model, variant)
        net = self._compiled(model, variant)

        def predict(xb: torch.Tensor) -> torch.Tensor:
            model.eval()
            with torch.inference_mode():
                return self._forward(net, layout(xb))
        return predict

    def calibrate(self, threads: int, seconds: float = speedo.SECONDS) -> float:
        """On CUDA: a fixed matmul on the device at this backend's precision (bf16 and fp16 in their 16 bits, else
        float32 with the TF32 setting in force), synchronised; on a CPU the shared NumPy GEMM."""
        if self.device.type != "cuda":
            return super().calibrate(threads, seconds)
        n = speedo.DEVICE_SIZE
        g = torch.Generator(device=self.device).manual_seed(0)
        a, b = (torch.randn(n, n, device=self.device, dtype=self.amp or torch.float32, generator=g) for _ in "ab")
        return speedo.burst_rate(lambda: a @ b, 2.0 * n**3, lambda out: self.sync(), seconds)

    def reading(self, threads: int) -> float:
        if self.device.type == "cuda":
            return super().reading(threads)
        n = speedo.SIZE  # the CPU speedometer's matmul, in torch's own BLAS and threads
        g = torch.Generator().manual_seed(0)
        a, b = (torch.randn(n, n, generator=g) for _ in "ab")
        return speedo.burst_rate(lambda: a @ b, 2.0 * n**3, seconds=speedo.READING_S)

    def speedometer(self) -> str:
        if self.device.type != "cuda":
            return super().speedometer()
        n = speedo.DEVICE_SIZE
        return f"torch matmul {n}x{n} {self.info['precision']} on {self.info['device']}"

    def reset_memory_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def memory_peak_mb(self) -> float:
        return torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else super().memory_peak_mb()

    def numpy(self, t: Any) -> np.ndarray:
        return t.detach().cpu().numpy()

    def sync(self, out: Any = None) -> None:
        """Wait for queued device work, so a timer measures it (CUDA kernels run asynchronously)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def save(self, model: nn.Module, path: Path) -> None:
        # serialised in memory, then written by Python: torch's C++ writer reports a full disk as "unexpected pos"
        # (a RuntimeError with no errno), Python's write as the OSError it is (no space left, permission denied)
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        path.write_bytes(buf.getbuffer())

    def load(self, spec: ModelSpec, path: Path) -> nn.Module:
        model = self.build(spec, init_weights(spec, 0))
        model.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
        return model

    def loader_settings(self, workers: list[int]) -> list[int | str]:
        return list(workers)

    def make_loader(self, feed: Feed, workers: int | str) -> Iterator[tuple[Any, Any]]:
        """Endless shuffled device batches through torch.utils.data.DataLoader, `workers` = num_workers."""
        n = int(workers)
        loader = torch.utils.data.DataLoader(
            _PerSample(feed.images, feed.labels, feed.mean, feed.std, feed.shift), batch_size=feed.batch_size,
            shuffle=True, drop_last=True, num_workers=n, pin_memory=feed.pin_memory and self.device.type == "cuda",
            persistent_workers=feed.persistent_workers and n > 0, prefetch_factor=feed.prefetch if n > 0 else None,
            generator=torch.Generator().manual_seed(feed.seed))
        while True:
            for xb, yb in loader:
                yield xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)


def _masked(net: nn.Sequential, x: torch.Tensor, keep: tuple) -> torch.Tensor:
    """The network's forward pass with each nn.Dropout replaced by its shared mask, kept units scaled by 1/(1-p)."""
    masks = iter(keep)
    for m in net:
        x = x * (next(masks).to(x.dtype) * (1.0 / (1.0 - m.p))) if isinstance(m, nn.Dropout) else m(x)
    return x


def make_optimizer(model: nn.Module, o: Optim, capturable: bool = False) -> torch.optim.Optimizer:
    """Every hyperparameter explicit. `capturable` keeps Adam's step count on the device, as a CUDA graph needs;
    the maths is the same. Momentum buffers start at zero here, not as a clone of the first gradient inside the
    first step: the same update (0.9 x 0 + g is g, exactly, with no dampening), but a buffer made inside a CUDA graph
    lives in the graph's memory, which its next replay overwrites (PyTorch raises "accessing tensor output of
    CUDAGraphs that has been overwritten")."""
    if o.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                weight_decay=0.0, amsgrad=False, capturable=capturable)
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum if o.name == "momentum" else 0.0,
                          dampening=0.0, nesterov=False, weight_decay=0.0)
    if o.name == "momentum":
        for p in model.parameters():
            opt.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return opt


class _PerSample(torch.utils.data.Dataset):
    """Per-sample work, as a real image pipeline has: uint8 -> float, normalise, random shift."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: float, std: float, shift: int):
        self.images, self.labels, self.mean, self.std, self.shift = images, labels, mean, std, shift

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.images[i]).float().div_(255.0).sub_(self.mean).div_(self.std)
        if self.shift:
            s, (h, w) = self.shift, x.shape
            dy, dx = torch.randint(0, 2 * s + 1, (2,)).tolist()
            x = F.pad(x, (s, s, s, s))[dy:dy + h, dx:dx + w]
        return x.unsqueeze(0), int(self.labels[i])


BACKEND = TorchBackend
