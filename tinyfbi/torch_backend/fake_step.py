"""`--fake-step`: the dry-run plan checked by PyTorch's own accounting of the same training step.

    python -m tinyfbi.train --backend torch --size 7b --recipe paper --dry-run --world-size 8 --fake-step [--json]

The plan (planner.py) is arithmetic. This runs the step itself, with no storage: the real TorchModel
student and its TorchLearner (AdamW, the fused head and distillation loss, fused FBI-Linear), the
bf16 teacher's forward, activation checkpointing, FSDP2 (`fully_shard`, bf16 gathers, float32
reduce) or DDP, and the plan's micro-batch and gradient accumulation, on fake tensors
(torch._subclasses.fake_tensor.FakeTensorMode: shapes and dtypes, no bytes). Rank 0 of any world
size runs in this one process over a fake process group (torch.testing._internal.distributed.fake_pg:
collectives that move nothing). torch.distributed._tools' MemTracker (FSDPMemTracker under FSDP)
sees every tensor the step creates and frees, by kind; two steps run, and the second, with AdamW's
moments in place, is the steady state that is reported. torch.utils.flop_counter.FlopCounterMode
counts the FLOPs of one micro-batch without recomputation, the model FLOPs of the MFU formula.

Fake tensors live on the cpu device (autograd on fake cuda tensors needs a CUDA build): the bytes of
every tensor are the same, the CUDA caching allocator's 512-byte rounding is not applied, and the
CPU's kernels stand in for CUDA's (SDPA's CPU flash kernel keeps the same output and logsumexp as
CUDA's flash kernel; autocast's bf16 op list on the cpu device covers linear, matmul and SDPA as
CUDA's does). Not seen: the allocator's fragmentation, the CUDA context, NCCL's buffers: what the
plan's 10% headroom is for (docs/scaling.md says how much they take).
"""
from __future__ import annotations

import contextlib
import time

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from ..core.errors import TinyFBIError
from ..training.setup import optim_config, train_config
from ..training.spec import RunSpec
from .distributed import Dist, replicate, shard
from .learner import TorchLearner
from .model import TorchModel

GiB = 1 << 30
STEPS = 2                 # the first creates AdamW's moments; the second is the steady state
# micro-batches run in the steady step: the second holds the first's gradients, and every later one
# of the plan's accumulation repeats it tensor for tensor (same shapes, same tensors alive), so its
# peak is theirs; the first step runs one, which is all AdamW's moments need
MICRO_BATCHES = 2
MEMORY_TOLERANCE = 0.10   # plan and tracker agree within 10%, in total and per part (issue 29)
FLOPS_TOLERANCE = 0.05    # FlopCounterMode against the MFU formula
# the plan's parts the tracker can tell apart (activations and the loss's temporaries it cannot)
CHECKED_PARTS = ("weights", "gradients", "optimizer", "fsdp_buffers", "teacher", "teacher_forward")
aten = torch.ops.aten

# the tracker's kinds of memory, grouped under the plan's names (FSDPMemTracker's names, then MemTracker's)
PARAMS = ("Sharded Param", "Parameter")
GRADS = ("Sharded Grad", "Gradient")
OPT = ("OptState", "Optstate")
BUFFERS = ("Unsharded Param", "Unsharded Grad", "All Gather", "Reduce Scatter")
TRANSIENT = ("Activation", "Temp", "Inputs", "Buffer", "Other")


def flat(snapshot) -> dict:
    """A tracker snapshot {device: {kind: bytes}} as {kind name: bytes} (one device: rank 0's)."""
    return {getattr(k, "value", k): v for dev in snapshot.values() for k, v in dev.items()}


class _PlanParts:
    """Mixed into MemTracker / FSDPMemTracker: from `restart` on, the tracker's bytes grouped under the
    plan's names at every op, their values at the peak, and each one's own peak. The teacher's
    storages (its weights and, under FSDP, their gathered bf16 copies) are told apart by identity,
    and its forward by hooks on its decoder (what grows from its start to its end is its transient)."""

    def restart(self, teacher_storages, teacher_weight_bytes, gradient_buckets=()):
        for bucket in gradient_buckets:   # DDP's flat gradient buffers (the gradients are views of them)
            self._update_and_maybe_create_winfos(bucket, _MemRefType.GRAD)
        self._teacher = {}                       # id(winfo) -> bytes counted as the teacher's now
        for st in teacher_storages:
            winfo, _ = self._WINFO.get(st, (None, None))
            if winfo is not None:
                self._teacher[id(winfo)] = winfo.mem_consumed
        self._teacher_now, self._teacher_weights = sum(self._teacher.values()), teacher_weight_bytes
        self._teacher_base = None                # transient bytes when the teacher's forward began
        self.at_peak = self.parts()
        self.part_peaks = dict(self.at_peak)

    def teacher_forward(self, starts: bool):
        if hasattr(self, "part_peaks"):
            self._teacher_base = self.parts()["transient"] if starts else None

    def parts(self) -> dict:
        snap = flat(self._curr_mem_snap)
        total = snap.get("Total", 0)

        def group(kinds):
            return sum(snap.get(k, 0) for k in kinds)
        transient = group(TRANSIENT)
        out = {"weights": group(PARAMS) - self._teacher_weights, "gradients": group(GRADS),
               "optimizer": group(OPT),
               "fsdp_buffers": group(BUFFERS) - (self._teacher_now - self._teacher_weights),
               "teacher": self._teacher_now, "transient": transient,
               "teacher_forward": transient - self._teacher_base if self._teacher_base is not None else 0,
               "activations_and_loss": transient if self._teacher_base is None else 0,
               "total": total}
        return out

    def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
        # MemTracker hooks every parameter of a module it sees run for its gradient, which a frozen
        # teacher's parameters refuse: they are tracked, without hooks (they get no gradient)
        frozen = not all(q.requires_grad for q in module.parameters())
        return super()._track_module_params_and_buffers(module, install_grad_hooks and not frozen)

    def _update_snap(self, u_type, winfo, old_mem_consumed=None, old_reftype=None):
        super()._update_snap(u_type, winfo, old_mem_consumed, old_reftype)
        counted = getattr(self, "_teacher", {})
        if id(winfo) in counted:
            now = 0 if u_type.name == "DEL" else winfo.mem_consumed
            self._teacher_now += now - counted[id(winfo)]
            counted[id(winfo)] = now

    def _update_peak_stats(self, peak_state):
        # replaces MemTracker's, which also walks every module's statistics at every op (quadratic in
        # the model's depth; unused here): the device's peak snapshot, then the plan's parts
        for dev, dev_snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < dev_snap["Total"]:
                self._peak_mem[dev] = dev_snap["Total"]
                self._peak_mem_snap[dev] = dict(dev_snap)
        if not hasattr(self, "part_peaks"):
            return
        now = self.parts()
        for k, v in now.items():
            if v > self.part_peaks[k]:
                self.part_peaks[k] = v
        if now["total"] > self.at_peak["total"]:
            self.at_peak = now


class PlanMemTracker(_PlanParts, MemTracker):
    pass


class PlanFSDPMemTracker(_PlanParts, FSDPMemTracker):
    pass


def make_tracker(student, teacher, opt, sharded: bool):
    if not sharded:
        tracker = PlanMemTracker()
        tracker.track_external(student, opt, *(() if teacher is None else (teacher,)))
        return tracker
    tracker = PlanFSDPMemTracker(student, opt)
    if teacher is not None:   # the teacher is fully_shard'ed too: instrument its units beside the student's
        tracker._root_mod = torch.nn.ModuleList([student, teacher])
    return tracker


def local_storage(t):
    return (t.to_local() if hasattr(t, "to_local") else t).untyped_storage()


def fsdp_params(model) -> list:
    """FSDP2's records of a fully_shard'ed model's parameters (none for a model that is not)."""
    out = []
    for module in model.modules():
        group = module._get_fsdp_state()._fsdp_param_group if hasattr(module, "_get_fsdp_state") else None
        out += group.fsdp_params if group is not None else []
    return out


def teacher_weight_storages(teacher) -> list:
    """The teacher's weights: this rank's shards under FSDP (teacher.parameters() would name the
    gathered copies while its root stays gathered after its forward), else its parameters."""
    sharded = fsdp_params(teacher)
    return ([local_storage(fp.sharded_param) for fp in sharded] if sharded
            else [p.untyped_storage() for p in teacher.parameters()])


def teacher_storages(teacher) -> list:
    """The teacher's weights and, under FSDP, the unsharded copies its all-gathers fill."""
    return teacher_weight_storages(teacher) + [fp._unsharded_param.untyped_storage() for fp in fsdp_params(teacher)
                                               if hasattr(fp, "_unsharded_param")]


def fake_group(world: int):
    """A fake process group of `world` ranks, this process rank 0 (no collective moves data)."""
    from torch.testing._internal.distributed.fake_pg import FakeStore
    dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())


def meta_model(config, dtype, d: Dist, sharded: bool, checkpointing: bool) -> TorchModel:
    """As backend.build_model builds a model up to its materialization: on the meta device, in its
    storage dtype, sharded per decoder layer with bf16 gathers (as on GPUs) under FSDP."""
    with torch.device("meta"):
        model = TorchModel(config).to(dtype)
    model.checkpoint_layers = checkpointing
    if sharded:
        shard(model, d, param_dtype=torch.bfloat16)
    return model


def replicate_fake(model, d: Dist):
    """distributed.replicate (DDP, gradients as views of its buckets) around fake parameters: DDP's
    constructor compares and broadcasts the parameters' values across ranks, which fake tensors do
    not have, so those two calls are skipped; the reducer and its buckets are built as usual, and
    each bucket's all-reduce is the fake group's (see in_place_all_reduce)."""
    import torch.nn.parallel.distributed as ddp
    saved = ddp._verify_param_shape_across_processes, ddp._sync_module_states
    ddp._verify_param_shape_across_processes = ddp._sync_module_states = lambda *args, **kwargs: None
    try:
        wrapped = replicate(model, d)
    finally:
        ddp._verify_param_shape_across_processes, ddp._sync_module_states = saved
    wrapped.buckets = []
    wrapped.register_comm_hook(wrapped.buckets, in_place_all_reduce)
    wrapped.reducer = KeepBuckets(wrapped.reducer)
    return wrapped


class KeepBuckets:
    """DDP's reducer, except that it keeps its first buckets: after the first backward DDP rebuilds
    them in the order gradients arrived, which reads values through a broadcast; the buckets hold the
    same gradients either way (their sum is every parameter's gradient, 4 bytes each)."""

    def __init__(self, reducer):
        self._reducer = reducer

    def _rebuild_buckets(self):
        return False

    def __getattr__(self, name):
        return getattr(self._reducer, name)


def in_place_all_reduce(buckets: list, bucket):
    """DDP's default hook all-reduces each bucket in place and hands the same buffer back; the fake
    process group's future carries no tensor, so the bucket itself is handed back, already done. The
    buckets are noted: they were allocated with DDP, before any tracker, and hold the gradients."""
    buckets.append(bucket.buffer())
    future = torch.futures.Future()
    future.set_result(bucket.buffer())
    return future


def train_step(learner: TorchLearner, x, y, micro_batches: int, tracker):
    """learner.forward_backward then learner.optimizer_step, without their .item() and float(): a fake
    tensor has no value. Same micro-batches (the first `micro_batches` of them), DDP no_sync, loss
    scaling, clipping and AdamW."""
    wrapped, accum = learner.wrapped, learner.grad_accum
    rows = len(x) // accum
    for i in range(micro_batches):
        tracker.reset_mod_stats()   # the tracker's per-module records take one forward per module
        last = i == micro_batches - 1
        sync = wrapped.no_sync() if hasattr(wrapped, "no_sync") and not last else contextlib.nullcontext()
        with sync:
            loss = learner.loss(x[i * rows:(i + 1) * rows], y[i * rows:(i + 1) * rows], None, None)
            (loss / accum).backward()
    clip = learner.optim_cfg.grad_clip if learner.optim_cfg.grad_clip > 0 else float("inf")
    torch.nn.utils.clip_grad_norm_([p for _, p in learner.named], clip)
    learner.opt.step()
    learner.opt.zero_grad(set_to_none=True)


def cpu_sdpa_flops():
    """FlopCounterMode's own SDPA formulas (it has none for the CPU flash kernel that stands in for
    CUDA's here): query, key and value come first, after grad_out in the backward."""
    def forward(q, k, v, *_, out_shape=None, **__):
        return sdpa_flop_count(q, k, v)

    def backward(grad_out, q, k, v, *_, out_shape=None, **__):
        return sdpa_backward_flop_count(grad_out, q, k, v)
    return {aten._scaled_dot_product_flash_attention_for_cpu: forward,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}


def count_flops(learner: TorchLearner, x, y) -> int:
    """FLOPs of one micro-batch's forward (teacher and student) and backward, without the
    recomputation of activation checkpointing: the model FLOPs that MFU divides by."""
    model, saved = learner.model, learner.model.checkpoint_layers
    model.checkpoint_layers = False
    try:
        with FlopCounterMode(display=False, custom_mapping=cpu_sdpa_flops()) as counter:
            learner.loss(x, y, None, None).backward()
    finally:
        model.checkpoint_layers = saved
    learner.opt.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure_step(spec: RunSpec, p: dict, config, teacher_config, fake: bool = True) -> dict:
    """Run plan p's step (two of them) on fake tensors: rank 0's memory by part, in bytes, at the
    tracker's peak and each part's own peak over the second step, and model FLOPs per token.
    fake=False runs it on real (uninitialized) tensors instead: the test that fake tensors are
    accounted as real ones are."""
    if spec.cpu_offload:
        raise TinyFBIError("--fake-step runs the step on one device: it does not model --cpu-offload's host state")
    if spec.teacher_cache:
        raise TinyFBIError("--fake-step runs the teacher's forward: it does not model --teacher-cache")
    world, sharded = p["world_size"], p["parallel"] == "fsdp"
    grouped = world > 1 or sharded
    if grouped:
        fake_group(world)
    d = Dist(world_size=world, grouped=grouped, cpu_bf16=True)   # bf16 autocast, as on GPUs
    started = time.perf_counter()
    try:
        student = meta_model(config, torch.float32, d, sharded, p["activation_checkpointing"])
        teacher = meta_model(teacher_config, torch.bfloat16, d, sharded, False) if teacher_config else None
        rows, T, V = spec.batch_size // world, spec.seq_len, config.vocab_size
        micro = p["micro_batch_per_gpu"]
        with FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext():
            student.to_empty(device="cpu")
            student.train().use_fused_linear(spec.fbi_linear == "fused")
            if teacher is not None:
                teacher.to_empty(device="cpu")
                teacher.eval().requires_grad_(False)
            wrapped = replicate_fake(student, d) if world > 1 and not sharded else student
            learner = TorchLearner(student, wrapped, train_config(spec, config.binarized), optim_config(spec),
                                   spec.run_dir, None, d, teacher, None, p["grad_accum"], None,
                                   fused_head=spec.head_loss == "fused")
            for group in learner.opt.param_groups:   # AdamW's default on CUDA tensors (a CPU's is a loop per tensor)
                group["foreach"] = True
            x, y = torch.randint(0, V, (rows, T)), torch.randint(0, V, (rows, T))        # this rank's rows
            tracker = make_tracker(student, teacher, learner.opt, sharded)
            hooks = [] if teacher is None else [
                teacher.register_forward_pre_hook(lambda *_: tracker.teacher_forward(True)),
                teacher.register_forward_hook(lambda *_: tracker.teacher_forward(False))]
            steady = min(MICRO_BATCHES, p["grad_accum"])
            with tracker:
                train_step(learner, x, y, 1, tracker)
                weights_t = sum(st.nbytes() for st in teacher_weight_storages(teacher)) if teacher else 0
                tracker.restart(teacher_storages(teacher) if teacher else [], weights_t,
                                getattr(wrapped, "buckets", ()))
                held = {}   # the gradients AdamW steps with (the loss's own head gradient, counted as one
                # by the tracker's gradient hook until it is accumulated, is gone by then)
                hook = learner.opt.register_step_pre_hook(lambda *_: held.update(tracker.parts()))
                train_step(learner, x, y, steady, tracker)
                hook.remove()
                moments = tracker.parts()["optimizer"]   # after the step: AdamW's moments alone
            for h in hooks:
                h.remove()
            flops = count_flops(learner, x[:micro], y[:micro])
    finally:
        if grouped:
            dist.destroy_process_group()
    parts = {**tracker.part_peaks, "gradients": held["gradients"], "optimizer": moments,
             "optimizer_step": tracker.part_peaks["optimizer"] - moments}
    return {"at_peak": tracker.at_peak, "part_peaks": parts, "steps": STEPS, "micro_batches": steady,
            "flops_per_token": flops / (micro * T), "seconds": time.perf_counter() - started}
