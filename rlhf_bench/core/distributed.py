"""Data parallelism over processes: ``accelerate launch -m rlhf_bench ...`` or ``torchrun``.

Every process takes its share of each batch; gradients are averaged across processes before
the optimiser step, so that ``N`` processes with batch ``b`` take the same steps as one process
with batch ``N * b`` (up to the order of float sums). The process group is set up by
``accelerate``'s ``PartialState`` from the environment the launcher writes (gloo on CPU, NCCL
on CUDA). One process, no launcher: everything here is a no-op.

``parallel.strategy`` says how the models are held:
  ddp   every process holds every model whole; ``average_gradients`` all-reduces the gradients.
  deepspeed  every process holds every model whole, and each optimizer is DeepSpeed ZeRO's
        (``zero_optimizer``): each process keeps 1/N of the AdamW moments and fp32 master weights
        (``parallel.zero_stage=1``) and of the averaged gradients too (2), steps its part and
        all-gathers the updated weights. The engine does backward, gradient averaging, clipping
        and step (``train.optimizer_step``); checkpoints hold the whole optimizer state
        (``full_zero_optimizer_state``), as a 1-process run's. ZeRO-3 (sharded parameters) is
        fsdp's job here.
  fsdp  the models loaded by every process together (``Run``'s loaders, while
        ``sharding()``) are sharded with FSDP2 (``shard_model``): each process keeps 1/N of
        every parameter, all-gathers a layer's for its forward and backward and reduce-scatters
        its gradients (their mean: FSDP's own, so ``average_gradients`` leaves them alone).
        Sampling all-gathers the whole model for the length of a ``generate`` call
        (``gathered``), so that every process may stop at its own EOS. Whatever one process
        does alone (write a stage, save a policy, evaluate) sees whole weights: a full state
        dict is gathered first (``full_state_dict``), and models loaded ``whole_models()`` are
        not sharded.

Only the main process writes: run records, W&B, cached stages, checkpoints. The others train
in lockstep, and wait for it where it writes.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

STRATEGIES = ("ddp", "fsdp", "deepspeed")
_STATE: dict[str, Any] = {"rank": 0, "world": 1, "strategy": "ddp", "whole": 0, "zero_stage": 2, "done": False}


def setup(device: torch.device | None = None, strategy: str = "ddp", zero_stage: int = 2) -> None:
    """Join the process group a launcher described (WORLD_SIZE > 1); otherwise nothing.
    ``strategy`` (``parallel.strategy``): ddp, fsdp or deepspeed, ``zero_stage``
    (``parallel.zero_stage``) deepspeed's (see the module's docstring)."""
    from rlhf_bench.errors import ConfigError

    if strategy not in STRATEGIES:
        raise ConfigError("parallel.strategy", f"must be one of {', '.join(STRATEGIES)}", strategy)
    if device is not None and device.type == "cpu":  # where DeepSpeed is installed, every transformers
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # save imports it: no warning that it found no GPU
    if strategy == "deepspeed" or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        _check_deepspeed_launch(strategy, zero_stage)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":  # accelerate launch with an FSDP config
        if strategy != "fsdp":
            raise ConfigError(
                "parallel.strategy",
                "must be fsdp under an accelerate config with distributed_type: FSDP (pass parallel.strategy=fsdp)",
                strategy,
            )
        for unsupported in ("FSDP_OFFLOAD_PARAMS", "FSDP_ACTIVATION_CHECKPOINTING"):
            if os.environ.get(unsupported, "false").lower() == "true":
                raise ConfigError(
                    "parallel.strategy",
                    f"fsdp does not implement accelerate's {unsupported.lower()}: set it false "
                    "(activation checkpointing: model.gradient_checkpointing=true)",
                )
        # its fsdp_cpu_ram_efficient_loading (on by default) makes transformers load the weights on the
        # main process only, for FSDP1 to broadcast: here every process loads them and shards its copy
        os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
    _STATE.update(strategy=strategy, zero_stage=zero_stage, done=False)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or _STATE["world"] > 1:
        return
    if device is not None and device.type == "cpu":
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")  # gloo, not NCCL, for CPU training
    from accelerate import PartialState

    state = PartialState(cpu=device is not None and device.type == "cpu")
    _STATE.update(rank=state.process_index, world=state.num_processes)
    atexit.register(_destroy_process_group)


def all_done() -> None:
    """Every process has finished its work: wait for the others, then let the process group be
    destroyed at exit. Left alive, gloo's worker threads may abort the interpreter's finalisation
    (``terminate called without an active exception``, SIGABRT: a finished run would exit non-zero;
    pytorch/pytorch#190489). A process that fails skips this, and its group is left alone: destroying
    one while the others still wait in a collective can hang (pytorch/torchtitan#1342)."""
    barrier()
    _STATE["done"] = True


def _destroy_process_group() -> None:
    if _STATE["done"] and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _check_deepspeed_launch(strategy: str, zero_stage: int) -> None:
    """parallel.strategy=deepspeed needs DeepSpeed; an accelerate launch with a DeepSpeed config
    needs parallel.strategy=deepspeed and the same ZeRO stage, and none of what is not built."""
    from rlhf_bench.errors import ConfigError

    try:
        import deepspeed  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "parallel.strategy", f"deepspeed needs DeepSpeed ({exc}): pip install 'rlhf-bench[deepspeed]'", strategy
        ) from exc
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return
    if strategy != "deepspeed":
        raise ConfigError(
            "parallel.strategy",
            "must be deepspeed under an accelerate config with distributed_type: DEEPSPEED (pass parallel.strategy=deepspeed)",
            strategy,
        )
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    if stage is not None and int(stage) != zero_stage:
        raise ConfigError(
            "parallel.zero_stage",
            f"is {zero_stage} but the accelerate config says zero_stage: {stage}: make them agree "
            f"(parallel.zero_stage={stage}; ZeRO-3 is parallel.strategy=fsdp here)",
        )
    for device_key in ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"):
        if os.environ.get(device_key, "none").lower() not in ("none", ""):
            raise ConfigError(
                "parallel.strategy",
                f"deepspeed does not implement accelerate's {device_key.lower()}: set offload_*_device: none",
            )
    clipping = os.environ.get("ACCELERATE_GRADIENT_CLIPPING", "none").lower()
    if clipping not in ("none", "", "auto"):
        raise ConfigError(
            "parallel.strategy",
            f"deepspeed clips at each stage's max_grad_norm (sft.max_grad_norm, reward_model.max_grad_norm, "
            f"method.max_grad_norm), not at the accelerate config's gradient_clipping ({clipping}): remove it "
            "from the accelerate config and set those keys",
        )
    accumulation = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1").lower()
    if accumulation not in ("1", "auto"):
        raise ConfigError(
            "parallel.strategy",
            f"deepspeed steps once per batch here; the accelerate config's gradient_accumulation_steps "
            f"({accumulation}) is not implemented: set it to 1 (larger batches: method.prompts_per_step or method.batch_size)",
        )
    if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none").lower() not in ("none", ""):
        raise ConfigError(
            "parallel.strategy",
            "deepspeed takes its settings from parallel.zero_stage and each stage's max_grad_norm, not from a "
            "deepspeed_config_file: remove it from the accelerate config",
        )


def rank() -> int:
    return _STATE["rank"]


def world_size() -> int:
    return _STATE["world"]


def is_main() -> bool:
    return _STATE["rank"] == 0


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


def broadcast(obj: Any) -> Any:
    """The main process's ``obj``, on every process."""
    if world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def shard(items: Sequence) -> Sequence:
    """This process's contiguous share of a global batch (near-equal shares when it does not
    divide evenly, as ``numpy.array_split``)."""
    n, world = len(items), world_size()
    if world == 1:
        return items
    size, extra = divmod(n, world)
    start = rank() * size + min(rank(), extra)
    return items[start : start + size + (rank() < extra)]


def average_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """All-reduce the gradients to their mean over processes (what DDP does after backward).
    Sharded parameters are left alone: FSDP reduce-scattered their gradients to the mean already."""
    if world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None and not is_sharded_tensor(p)]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def mean(value: float) -> float:
    """The mean of a number over processes (a statistic every process must agree on)."""
    if world_size() == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return float(t) / world_size()


def total(value: int) -> int:
    """The sum of a counter over processes."""
    if world_size() == 1:
        return value
    t = torch.tensor([int(value)], dtype=torch.int64)
    torch.distributed.all_reduce(t)
    return int(t)


# --- sharded models (parallel.strategy=fsdp) ----------------------------------------------
def strategy() -> str:
    return _STATE["strategy"]


def sharding() -> bool:
    """Whether models loaded now are sharded: fsdp, several processes, all of them loading it
    (not inside ``whole_models()``). With one process, fsdp is ddp: there is nothing to shard over."""
    return _STATE["strategy"] == "fsdp" and world_size() > 1 and not _STATE["whole"]


@contextlib.contextmanager
def whole_models() -> Iterator[None]:
    """Models loaded inside are whole, not sharded: for what one process does alone (sample the
    preference pairs, evaluate), where a sharded model's collectives would wait for the others."""
    _STATE["whole"] += 1
    try:
        yield
    finally:
        _STATE["whole"] -= 1


def is_sharded_tensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor (a parameter, gradient or state of a sharded model)."""
    if _STATE["strategy"] != "fsdp" or world_size() == 1:
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor: the whole value of a sharded or replicated DTensor (collective), else ``tensor``."""
    return tensor.full_tensor() if is_sharded_tensor(tensor) else tensor


def is_sharded(module: torch.nn.Module) -> bool:
    """Whether ``module`` holds sharded (FSDP) parameters."""
    return any(is_sharded_tensor(p) for p in module.parameters())


def _units(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The FSDP units of ``module``, outermost first (a LoRA reference: those of its policy)."""
    from torch.distributed.fsdp import FSDPModule

    module = module.__dict__.get("policy", module)  # models.AdaptersDisabled holds its policy outside its tree
    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """Shard ``model`` in place with FSDP2 (``fully_shard``) over all processes and return it.

    Units: each transformer block (the classes transformers names in ``_no_split_modules``),
    then the rest. A causal LM's rest is one unit at the root (its output layer may be tied to
    the input embedding, and tied weights must share a unit). A model with a one-output head
    (reward and value models) has its backbone and its head as units of their own and none at
    the root, because ``rollout.sequence_scores`` calls the two apart. Every unit reshards after
    its forward (one layer's weights gathered at a time).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (world_size(),))
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = set(getattr(inner, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh, reshard_after_forward=True)
    head = next(
        (getattr(model, n) for n in ("score", "classifier") if isinstance(getattr(model, n, None), torch.nn.Module)),
        None,
    )
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if head is not None and isinstance(backbone, torch.nn.Module):
        fully_shard(backbone, mesh=mesh, reshard_after_forward=True)
        fully_shard(head, mesh=mesh, reshard_after_forward=True)
    else:
        fully_shard(model, mesh=mesh, reshard_after_forward=True)
    return model


@contextlib.contextmanager
def gathered(model: torch.nn.Module) -> Iterator[None]:
    """Inside, every parameter of a sharded ``model`` is whole on every process (collective on
    entry and exit), as FSDP1's ``summon_full_params`` or ZeRO-3's ``GatheredParameters``: its
    forward calls communicate nothing, so that processes may call it a different number of times
    (generation stops at each process's own EOS). Costs the whole model's memory meanwhile. A
    model that is not sharded: nothing."""
    if not is_sharded(model):
        yield
        return
    units = _units(model)
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def _aliases(module: torch.nn.Module) -> dict[str, str]:
    """{alias: name} of tied parameters: every other name of a parameter listed under ``name``."""
    first = {id(p): n for n, p in module.named_parameters()}
    return {n: first[id(p)] for n, p in module.named_parameters(remove_duplicate=False) if first[id(p)] != n}


def full_state_dict(module: torch.nn.Module, tied: bool = True) -> dict[str, torch.Tensor]:
    """The whole state dict of a sharded ``module`` on the main process, on CPU ({} on the
    others). Collective: every process must call it. ``tied=False`` leaves out the other names
    of tied parameters (an output layer tied to the embedding), as ``save_pretrained`` does."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not tied:
        aliases = _aliases(module)
        state = {k: v for k, v in state.items() if k not in aliases}
    return state


def load_full_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a whole state dict (the same on every process; tied names may be missing) into a
    sharded ``module``: each process keeps its shard. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(
        module, _with_aliases(module, state), options=StateDictOptions(full_state_dict=True, strict=True)
    )


def load_state_dict_in_place(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a state dict (tied names may be missing) into ``module``'s own tensors, which stay
    where they are (ZeRO's views of its flat buffer)."""
    module.load_state_dict(_with_aliases(module, state), strict=True)


def _with_aliases(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every name of tied parameters (a file keeps one)."""
    state = dict(state)
    for alias, name in _aliases(module).items():
        if alias not in state and name in state:
            state[alias] = state[name]
        elif name not in state and alias in state:
            state[name] = state[alias]
    return state


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded state tensor whole, on the main process (the
    others get the same keys with their shards dropped): the file a 1-process run would write.
    Collective."""
    state = optimizer.state_dict()
    out = {}
    for index, values in state["state"].items():
        out[index] = {}
        for key, value in values.items():
            value = full(value) if isinstance(value, torch.Tensor) else value
            out[index][key] = value.cpu() if is_main() or not isinstance(value, torch.Tensor) else None
    return {"state": out, "param_groups": state["param_groups"]}


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a whole optimizer state (as ``full_optimizer_state`` gives, or a 1-process run's) into
    an optimizer over sharded parameters: each state tensor is split like its parameter. Collective."""
    from torch.distributed.tensor import distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    sharded = {}
    for index, values in state["state"].items():
        param = params[int(index)]
        sharded[index] = {
            key: (
                distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
                if is_sharded_tensor(param) and isinstance(value, torch.Tensor) and value.shape == param.shape
                else value
            )
            for key, value in values.items()
        }
    optimizer.load_state_dict({"state": sharded, "param_groups": state["param_groups"]})


# --- ZeRO optimizers (parallel.strategy=deepspeed) -----------------------------------------
def zero() -> bool:
    """Whether optimizers are DeepSpeed ZeRO's: deepspeed, several processes. With one process,
    deepspeed is ddp: there is nothing to partition over."""
    return _STATE["strategy"] == "deepspeed" and world_size() > 1


def zero_optimizer(optimizer: torch.optim.Optimizer, max_grad_norm: float | None) -> torch.optim.Optimizer:
    """Hand ``optimizer`` to a DeepSpeed ZeRO engine (stage ``parallel.zero_stage``) and return it.

    The engine is built over the parameters ``optimizer`` trains (held by a container module:
    the losses are computed by our models, not by the engine's forward), which it flattens into
    one buffer per group. ``optimizer`` keeps stepping the process's partition of the fp32
    master weights, so a learning-rate schedule made on it works as before. The engine averages
    the gradients over processes and clips their global norm at ``max_grad_norm`` (none: no
    clipping); ``optimizer_step`` drives it (``zero_engine``). bf16 parameters get fp32 masters."""
    import logging

    import deepspeed

    deepspeed.utils.logger.setLevel(logging.WARNING)
    _no_shared_memory_all_reduce()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    holder = torch.nn.Module()
    holder.trained = torch.nn.ParameterList(params)
    config = {
        "train_micro_batch_size_per_gpu": 1,  # the batches are ours: the engine never sees one
        "gradient_accumulation_steps": 1,
        "gradient_clipping": float(max_grad_norm or 0.0),
        "zero_optimization": {"stage": _STATE["zero_stage"]},
        "bf16": {"enabled": params[0].dtype == torch.bfloat16},
        "steps_per_print": 2**31 - 1,
    }
    engine, *_ = deepspeed.initialize(model=holder, optimizer=optimizer, config=config, dist_init_required=False)
    optimizer.zero_engine = engine
    if is_main():
        from rich.console import Console

        held = sum(g["params"][0].numel() for g in optimizer.param_groups)  # this process's fp32 partition
        Console(stderr=True).print(
            f"deepspeed: ZeRO-{_STATE['zero_stage']} optimizer over {world_size()} processes "
            f"(this one steps {held:,} of its {sum(p.numel() for p in params):,} parameters)",
            soft_wrap=True,  # one line, whatever the terminal's width
        )
    return optimizer


def _no_shared_memory_all_reduce() -> None:
    """On CPU, keep DeepSpeed from compiling its shared-memory all-reduce op when its
    communication backend starts (a C++ build of about a minute on every fresh machine, needing a
    compiler): only DeepSpeed inference's ``inference_all_reduce`` uses it; ZeRO's collectives go
    through the gloo process group. Marking the op incompatible is what DeepSpeed does itself
    where it cannot build it (off Linux), and falls back the same way."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def zero_engine(optimizer: torch.optim.Optimizer):
    """The DeepSpeed engine ``zero_optimizer`` gave ``optimizer``, else None."""
    return getattr(optimizer, "zero_engine", None)


def _zero_groups(optimizer: torch.optim.Optimizer) -> list[list[torch.nn.Parameter]]:
    """The parameters of each group in the order the optimizer had them before ZeRO flattened them."""
    return zero_engine(optimizer).optimizer.bit16_groups


def unflattened_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict with every tensor in a storage of its own, tied names once (as
    ``save_pretrained`` keeps them): ZeRO made the parameters it trains views of one flat buffer,
    which safetensors refuses to write as it is."""
    aliases = _aliases(module)
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k not in aliases}


def full_zero_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A ZeRO optimizer's state as a 1-process ``optimizer.state_dict()``: each parameter's whole
    moments (gathered from the partitions) under its index, and the groups' settings. Collective."""
    from deepspeed.utils import safe_get_full_optimizer_state

    out, settings, index = {}, [], 0
    for group, options in zip(_zero_groups(optimizer), optimizer.param_groups, strict=True):
        state = optimizer.state.get(options["params"][0], {})  # of the group's partition of the masters
        moments = [k for k, v in state.items() if _is_moment(v)]
        for param in group:
            values = {k: v.clone() for k, v in state.items() if k not in moments}  # the step
            values.update({k: safe_get_full_optimizer_state(param, k).cpu() for k in moments})
            if state:
                out[index] = values
            index += 1
        settings.append(
            {**{k: v for k, v in options.items() if k != "params"}, "params": list(range(index - len(group), index))}
        )
    return {"state": out, "param_groups": settings}


def load_full_zero_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a whole optimizer state (as ``full_zero_optimizer_state`` gives, or a 1-process run's)
    into a ZeRO optimizer: each process keeps its partition of every moment. The fp32 master
    weights are taken again from the models' weights, which the caller loaded first."""
    from deepspeed.utils import (
        lazy_init_hp_params_optimizer_state,
        safe_set_full_fp32_param,
        safe_set_full_optimizer_state,
    )

    groups, saved = _zero_groups(optimizer), state["state"]
    index = 0
    for group, options, settings in zip(groups, optimizer.param_groups, state["param_groups"], strict=True):
        options.update({k: v for k, v in settings.items() if k != "params"})
        partition = options["params"][0]
        for param in group:
            safe_set_full_fp32_param(param, param.data.float())
        first = saved.get(index)
        if first is not None:
            optimizer.state[partition] = {  # moments to fill below, the step as saved
                k: torch.zeros_like(partition) if _is_moment(v) else (v.clone() if isinstance(v, torch.Tensor) else v)
                for k, v in first.items()
            }
            lazy_init_hp_params_optimizer_state(group, partition, optimizer.state)
            for offset, param in enumerate(group):
                for key, value in saved.get(index + offset, {}).items():
                    if _is_moment(value):
                        safe_set_full_optimizer_state(param, value.to(partition.device, torch.float32), key)
        index += len(group)


def _is_moment(value: Any) -> bool:
    """An optimizer state entry shaped like its parameter (not the step count)."""
    return isinstance(value, torch.Tensor) and value.dim() > 0
