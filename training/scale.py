"""Devices, mixed precision and tf.distribute strategies, set up before any model is built."""

from __future__ import annotations

import functools
import os
from typing import Any

import keras
import tensorflow as tf

from training import cpu_info, cpu_kernels
from training.cluster import ClusterError, ClusterRole, cluster_timeout_s, formation_guard, read_cluster_role, wait_for_peers
from training.config import Distribute

# For tests and CPU experiments: split the CPU into this many logical devices (a stand-in for GPUs).
LOGICAL_CPUS_ENV = "TRAIN_CIFAR_LOGICAL_CPUS"


@functools.cache
def configure_devices() -> tuple[str, ...]:
    """Turn on GPU memory growth (or split the CPU if asked); returns the devices training may use.

    Must run before TensorFlow initialises its devices (before any op); cached, so later calls are free.
    """
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        return tuple(f"/gpu:{i}" for i in range(len(gpus)))
    logical_cpus = max(1, int(os.environ.get(LOGICAL_CPUS_ENV, "1")))
    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    return tuple(f"/cpu:{i}" for i in range(logical_cpus))


def use_cpu_speedups(speedups: tuple[cpu_info.Speedup, ...]) -> None:
    """Turn on these `cpu_kernels` speed-ups (those that measured faster for the recipe on this CPU's kind:
    `cpu_info.chosen_speedups`) before TensorFlow's first op; `cpu_kernels.active_speedups` reports them."""
    if "bfc-allocator" in speedups:
        cpu_kernels.use_bfc_allocator()  # CPU memory only; before the first op, which creates the allocator
    if "conv-input-gradient" in speedups and not tf.config.list_physical_devices("GPU"):
        cpu_kernels.use_forward_conv_for_input_gradient()


def set_precision(requested: bool | None, on_gpu: bool, cpu_default: bool = False) -> str:
    """Mixed precision: on by default on a GPU (float16); on a CPU (bfloat16) when asked, or by
    default for recipes that want it (`cpu_default`) where the CPU has native bfloat16."""
    enabled = requested if requested is not None else (on_gpu or (cpu_default and cpu_info.has_native_bf16()))
    policy = ("mixed_float16" if on_gpu else "mixed_bfloat16") if enabled else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def build_strategy(kind: Distribute, devices: tuple[str, ...]) -> tf.distribute.Strategy:
    """The --distribute strategy; "none" is TensorFlow's default, so the same code runs in every case."""
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices))
    if kind == "multi-worker":
        return join_cluster(read_cluster_role(os.environ.get("TF_CONFIG")))
    return tf.distribute.get_strategy()


# --- multi-worker: TF_CONFIG, forming the cluster in bounded time, Keras 3 on MultiWorkerMirroredStrategy ---

# Seconds every worker waits for the whole cluster to form before it gives up with a one-line error.
# The dtypes TensorFlow's collective all-reduce accepts; others are widened for the reduction.
COLLECTIVE_DTYPES = (tf.bfloat16, tf.float16, tf.float32, tf.float64, tf.int32, tf.int64)


class KerasMultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy whose `reduce` takes what Keras 3 gives it.

    Keras 3's TensorFlow trainer reduces a whole (images, labels) batch with `strategy.reduce("MEAN", batch,
    axis=None)` to build the model, and each scalar metric with `axis=0`. MirroredStrategy accepts both;
    MultiWorkerMirroredStrategy hands the tuple to its collective all-reduce, which fails with "Attempt to
    convert a value (PerReplica...) with an unsupported type", and would then fail on uint8 images (not a
    collective dtype) and on axis 0 of a scalar. Here a nest is reduced leaf by leaf, other dtypes are
    widened for the reduction, and a scalar has no axis to reduce along.
    """

    def reduce(self, reduce_op: Any, value: Any, axis: int | None) -> Any:
        """`Strategy.reduce`, also for the nests, dtypes and scalars that Keras 3 passes (see the class)."""
        if tf.nest.is_nested(value) and not isinstance(value, tf.distribute.DistributedValues):
            return tf.nest.map_structure(lambda leaf: self.reduce(reduce_op, leaf, axis), value)
        local = self.experimental_local_results(value)[0]
        if not isinstance(local, (tf.Tensor, tf.Variable)):
            return super().reduce(reduce_op, value, axis)
        if axis is not None and local.shape.rank == 0:
            axis = None
        if local.dtype in COLLECTIVE_DTYPES:
            return super().reduce(reduce_op, value, axis)
        wide = tf.float32 if local.dtype.is_floating else tf.int64
        return tf.cast(super().reduce(reduce_op, self.widen(value, wide), axis), local.dtype)

    @functools.cached_property
    def widen(self) -> Any:
        """Cast every replica's value (one traced function for all calls: Keras reduces a batch every epoch)."""
        return tf.function(lambda value, dtype: self.run(tf.cast, args=(value, dtype)), reduce_retracing=True)


_cluster: tuple[ClusterRole, KerasMultiWorkerStrategy] | None = None


def join_cluster(role: ClusterRole) -> KerasMultiWorkerStrategy:
    """Form the cluster (once per process) in bounded time: every peer must answer within the timeout, or
    this worker ends with a one-line error (exit code 2) instead of waiting forever inside TensorFlow."""
    global _cluster
    if _cluster is not None:
        return _cluster[1]
    timeout_s = cluster_timeout_s()
    wait_for_peers(role, timeout_s)
    try:
        with formation_guard(role, timeout_s):
            strategy = KerasMultiWorkerStrategy()
    except (tf.errors.OpError, RuntimeError, ValueError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ClusterError(f"the cluster of {role.workers} workers did not form: {first_line}") from None
    _cluster = (role, strategy)
    return strategy


def cluster_role() -> ClusterRole | None:
    """This process's role once it has joined a cluster; None otherwise."""
    return _cluster[0] if _cluster is not None else None


def leave_cluster() -> None:
    """A last all-reduce as a barrier: no worker exits while another still needs it, so a worker that
    finished early is not taken for a crashed one (TensorFlow aborts the others' collectives then)."""
    if _cluster is None:
        return
    try:
        _cluster[1].reduce("SUM", tf.constant(1.0), axis=None)
    except tf.errors.OpError as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ClusterError(f"another worker of the cluster ended with an error ({first_line}); see its output") \
            from None
