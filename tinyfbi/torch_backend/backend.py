"""`python -m tinyfbi.train --backend torch`: the one training run (training.run) on PyTorch, up to 13B.

    python -m tinyfbi.train --backend torch --size tiny --data corpus.txt --tokenizer byte
    torchrun --nproc-per-node=8 -m tinyfbi.train --backend torch --size 1.3b --teacher Llama-2-7b-hf \\
        --data hf:roneneldan/TinyStories --batch-size 64 --steps 20000

`TorchBackend` is what training.run asks of a backend (training.backend.Backend): teachers (a tinyfbi checkpoint or a local
Hugging Face LLaMA folder, bf16 on GPUs), learners (torch_backend.learner) built on the meta device
and sharded or replicated (torch_backend.distributed), evaluation and sampling split over ranks,
and the throughput report (tokens/s, MFU). `--dry-run` plans memory instead (torch_backend.planner).
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import TinyFBIError
from ..formats.checkpoint import load_checkpoint
from ..formats.hf_folder import config_from_hf
from ..formats.run_checkpoint import SHARD_BYTES, resolve_checkpoint
from ..runtime.inference import sample_next
from ..training.run import run
from ..training.setup import model_config
from ..training.spec import RunSpec
from .device import device_name, peak_bf16_flops
from .distributed import Dist, put_full, replicate, setup, shard, teardown, use_fsdp
from .learner import TorchLearner, autocast
from .model import TorchModel
from .planner import GiB, flops_per_token, main_plan, plan


def run_torch(spec: RunSpec):
    if spec.dry_run:
        return main_plan(spec)
    if spec.cpu_offload and not torch.cuda.is_available():
        raise TinyFBIError("--cpu-offload moves FSDP's weights and AdamW state off the GPU: it needs CUDA")
    d = setup(force_group=spec.fsdp == "on" or spec.cpu_offload)
    d.cpu_bf16 = spec.cpu_bf16
    try:
        with contextlib.ExitStack() as stack:
            if not d.is_main:  # one rank speaks: the others' prints (data, samples) would repeat it
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            return run(spec, TorchBackend(spec, d))
    finally:
        teardown(d)


def build_model(config, d: Dist, read_params, sharded=False, cpu_offload=False, storage_dtype=torch.float32,
                compute_dtype=None, checkpoint_layers=False) -> TorchModel:
    """A TorchModel on this rank's device, filled from `read_params()` (called on rank 0 only: a dict
    name -> array; None leaves the memory unset for a checkpoint to fill). Built on the meta device,
    sharded if asked, then materialized: no rank ever holds a random copy of a 13B model."""
    with torch.device("meta"):
        model = TorchModel(config).to(storage_dtype)
    model.checkpoint_layers = checkpoint_layers
    if sharded:
        shard(model, d, cpu_offload, param_dtype=compute_dtype)
    model.to_empty(device="cpu" if cpu_offload else d.device)
    if read_params is None:
        return model
    params = d.on_main(read_params)
    for name, p in model.named_parameters():
        put_full(p, params[name] if d.is_main else None, d)
    return model


def load_torch_model(path, dtype=torch.float32, device="cpu") -> TorchModel:
    """A TorchModel from any checkpoint folder (formats.loading), in one process."""
    config = config_from_hf(resolve_checkpoint(path))
    return build_model(config, Dist(device=torch.device(device)), lambda: load_checkpoint(path)[1],
                       storage_dtype=dtype)


def load_teacher_torch(path, d: Dist, sharded: bool, config=None) -> TorchModel:
    """A frozen teacher: bf16 on GPUs, float32 on a CPU; sharded like the student under FSDP."""
    config = config or config_from_hf(resolve_checkpoint(path))   # config.json and the weights' headers
    dtype = torch.bfloat16 if d.device.type == "cuda" else torch.float32
    teacher = build_model(config, d, lambda: load_checkpoint(path)[1], sharded=sharded, storage_dtype=dtype)
    return teacher.eval().requires_grad_(False)


class NumpyForward:
    """A torch model behind the NumPy forward (x -> logits array) that the teacher cache calls."""

    def __init__(self, model, d):
        self.model, self.d, self.config = model, d, model.config

    @torch.no_grad()
    def forward(self, x):
        with autocast(self.d):
            return self.model(torch.from_numpy(x).to(self.d.device)).float().cpu().numpy()

    def drop_caches(self):
        """Nothing to drop: a no-grad forward keeps no activations."""


class TorchBackend:
    name = "torch"

    def __init__(self, spec: RunSpec, d: Dist):
        """Checks the run fits before any work: the micro-batch (given, or for --recipe paper the largest
        the memory plan fits on this device), rank 0's host memory, and a teacher for paper sizes."""
        self.spec, self.d, self.is_main = spec, d, d.is_main
        self.sharded = None   # FSDP or not, decided with the student's size
        p = plan(spec, world=d.world_size, device_gib=spec.gpu_gib or device_gib(d), strict=True)
        self.grad_accum = p["grad_accum"]
        d.on_main(lambda: check_host_memory(p["params"]["total"], spec.resume))
        if spec.teacher == "auto" and spec.paper_size and not spec.full_precision:
            raise TinyFBIError(f"--size {spec.size} distills a full-precision teacher: give --teacher PATH "
                               "(e.g. a Llama-2-7b-hf folder, as the paper does), or --teacher none --loss ce")

    def describe(self) -> str:
        d = self.d
        parallel = " (FSDP)" if self.sharded else " (DDP)" if d.world_size > 1 else ""
        return f" on {d.world_size} x {device_name(d.device)}{parallel}"

    def on_main(self, fn):
        return self.d.on_main(fn)

    def on_main_first(self, fn):
        """fn() on rank 0 first (it writes caches: tokenizers, token files, teacher cache), then on
        the others, which find them."""
        out = self.d.on_main(fn)
        return out if self.d.is_main else fn()

    def rows(self, n: int) -> slice:
        return self.d.rows(n)   # this rank's rows of a global batch of n

    def sync(self):
        if self.d.device.type == "cuda":
            torch.cuda.synchronize()

    def load_teacher(self, path, config):
        # sharded when the student is; a teacher cache is built by rank 0 alone, so then replicated
        student = model_config(self.spec, config.vocab_size, binarized=self.spec.binarized)
        sharded = use_fsdp(self.spec.fsdp, student.num_params(), self.d.world_size,
                           self.spec.cpu_offload) and not self.spec.teacher_cache
        return load_teacher_torch(path, self.d, sharded, config)

    def numpy_forward(self, model):
        return NumpyForward(model, self.d)

    def learner(self, config, init_params, cfg, optim, run_dir, tokenizer, teacher, teacher_cache, extra_fbi):
        spec, d = self.spec, self.d
        self.sharded = use_fsdp(spec.fsdp, config.num_params(), d.world_size, spec.cpu_offload)
        cuda = d.device.type == "cuda"
        checkpointing = (spec.paper_size and cuda if spec.activation_checkpointing == "auto"
                         else spec.activation_checkpointing == "on")
        module = build_model(config, d, init_params, sharded=self.sharded, cpu_offload=spec.cpu_offload,
                             compute_dtype=torch.bfloat16 if cuda else None, checkpoint_layers=checkpointing).train()
        module.use_fused_linear(spec.fbi_linear == "fused")
        wrapped = replicate(module, d) if d.world_size > 1 and not self.sharded else module
        if spec.compile:   # the student's forward and, through AOTAutograd, its backward
            wrapped = torch.compile(wrapped)
        d.barrier()
        return TorchLearner(module, wrapped, cfg, optim, run_dir, tokenizer, d, teacher, teacher_cache,
                            self.grad_accum, extra_fbi, fused_head=spec.head_loss == "fused")

    @torch.no_grad()
    def evaluate(self, model, batches) -> float:
        """Mean next-token cross-entropy (nats) over the global (x, y) batches, rows split over ranks."""
        d, was_training = self.d, model.training
        model.eval()
        total, count = 0.0, 0
        for x, y in batches:
            mine = np.array_split(np.arange(len(x)), d.world_size)[d.rank]
            rows = mine if len(mine) else np.arange(1)  # a rank without rows still joins FSDP's gathers
            with autocast(d):
                logits = model(torch.from_numpy(x[rows]).to(d.device))
            nll = F.cross_entropy(logits.float().flatten(0, 1), torch.from_numpy(y[rows]).to(d.device).flatten(),
                                  reduction="sum")
            if len(mine):
                total, count = total + nll.item(), count + y[rows].size
        total, count = d.all_reduce_sum([total, count])
        model.train(was_training)
        return total / max(count, 1)

    @torch.no_grad()
    def sample(self, model, tokenizer, prompt_ids, n_tokens, seed) -> str:
        """Temperature 0.8, top-k 40 with the NumPy backend's sampler, without a KV cache."""
        d, rng = self.d, np.random.default_rng(seed)
        ids, max_len = list(prompt_ids) or [0], model.config.max_position_embeddings
        was_training = model.training
        model.eval()
        for _ in range(n_tokens):
            with autocast(d):
                logits = model(torch.tensor([ids[-max_len:]], device=d.device))[0, -1]
            nxt = sample_next(logits.float().cpu().numpy(), rng, temperature=0.8, top_k=40)
            ids.append(int(d.broadcast_object(nxt)))
        model.train(was_training)
        return tokenizer.decode(ids)

    def report(self, learner, teacher_config, tok_s) -> dict:
        flops = flops_per_token(learner.model.config, teacher_config, self.spec.seq_len)["total"]
        return {"device": device_name(self.d.device), "world_size": self.d.world_size, "fsdp": self.sharded,
                "tok_s_per_device": tok_s and tok_s / self.d.world_size, "flops_per_token": flops,
                "mfu": mfu(tok_s, self.d, flops)}


def check_host_memory(num_params: int, resume: bool):
    """Pre-flight for rank 0, which builds a new student's first weights whole in NumPy (float32, 4 B per
    parameter) and streams checkpoints in shards of SHARD_BYTES (weights, m, v): refuse in one line,
    before allocating, where that cannot fit."""
    need = (0 if resume else 4 * num_params) + 3 * SHARD_BYTES
    available = available_host_bytes()
    if available is not None and need > available:
        raise TinyFBIError(f"rank 0 needs about {need / GiB:.1f} GiB of host memory to build the student's first "
                           f"weights ({num_params / 1e9:.2f}B parameters in float32) and write checkpoint shards, "
                           f"this machine has {available / GiB:.1f} GiB available: use a node with more RAM "
                           "(initializing each shard where it lives is not implemented yet)")


def available_host_bytes() -> int | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def device_gib(d: Dist) -> float:
    """Memory of this rank's device: the GPU's, or on a CPU the machine's RAM."""
    if d.device.type == "cuda":
        return torch.cuda.get_device_properties(d.device).total_memory / GiB
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB


def mfu(tok_s, d: Dist, flops_per_token):
    """Model FLOPs utilization per GPU against its bf16 dense peak (None on a CPU or an unknown GPU)."""
    if not tok_s or d.device.type != "cuda":
        return None
    peak = peak_bf16_flops(d.device)
    return tok_s / d.world_size * flops_per_token / peak if peak else None
