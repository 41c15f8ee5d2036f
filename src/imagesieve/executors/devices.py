"""GPUs on one machine, for `LocalExecutor`: which devices there are, and which ones each worker gets.

Devices are declared, never probed (no driver or torch is asked): `LocalExecutor(gpus=...)`, else the
driver's `CUDA_VISIBLE_DEVICES` when a run starts (unset or empty: no GPUs). A worker needs
`plan.gpus_per_worker` GPUs: a share of one device up to 1 (gpus=0.5: two workers on a device; a
`gpu_memory_gb` stage: its share of one device's memory), or n whole devices (gpus=2). Each worker is
given its devices as a `CUDA_VISIBLE_DEVICES` value of its own ("1", or "0,1" for gpus=2). Devices are
shared by every stage group of a run, since all groups run at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from imagesieve.executors.plan import StageGroup

HOW_TO_DECLARE = ("declare devices with CUDA_VISIBLE_DEVICES (CUDA_VISIBLE_DEVICES=0,1) or "
                  "LocalExecutor(gpus=2) / LocalExecutor(gpus=['0', '1'])")
_EPS = 1e-9


def declared_devices(gpus: int | Sequence[str | int] | None = None,
                     environ: Mapping[str, str] = os.environ) -> list[str]:
    """The device IDs a run may use: `gpus` devices 0..n-1, or the IDs listed in `gpus`, or (None) those
    of `CUDA_VISIBLE_DEVICES` in `environ`, up to the first hidden one ("-1", as CUDA stops there)."""
    if gpus is None:
        ids = []
        for part in environ.get("CUDA_VISIBLE_DEVICES", "").split(","):
            part = part.strip()
            if not part or part.startswith("-") or part == "NoDevFiles":
                break
            ids.append(part)
        return _unique(ids, "CUDA_VISIBLE_DEVICES")
    if isinstance(gpus, bool) or not isinstance(gpus, int | Sequence) or isinstance(gpus, str):
        raise TypeError(f"gpus: a number of devices or a list of device IDs, got {gpus!r}")
    if isinstance(gpus, int):
        if gpus < 0:
            raise ValueError(f"gpus must be >= 0, got {gpus}")
        return [str(i) for i in range(gpus)]
    ids = [str(device).strip() for device in gpus]
    if any(not device or "," in device for device in ids):
        raise ValueError(f"gpus: each device ID is one non-empty name without commas, got {list(gpus)!r}")
    return _unique(ids, "gpus")


def _unique(ids: list[str], where: str) -> list[str]:
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where} names a device twice: {','.join(ids)}")
    return ids


def assign_devices(groups: list[StageGroup], wanted: list[int], devices: list[str],
                   device_memory_gb: float) -> list[list[str] | None]:
    """For each group, the `CUDA_VISIBLE_DEVICES` of each of its workers (None for a CPU group).

    First one worker of every GPU group (the largest needs first), then more, group by group, while
    they fit and a group has fewer than it `wanted`; a share goes to the device with most left, so
    workers spread over the devices before two share one. A GPU group that cannot have one worker
    is refused, naming its stage."""
    needs = [group.gpus(device_memory_gb) for group in groups]
    free = dict.fromkeys(devices, 1.0)
    placed: list[list[str] | None] = [[] if need > 0 else None for need in needs]

    def take(need: float) -> str | None:
        if need <= 1:
            device = max(devices, key=lambda d: free[d], default=None)  # the first of those with most left
            if device is None or free[device] + _EPS < need:
                return None
            free[device] -= need
            return device
        whole = [d for d in devices if free[d] >= 1 - _EPS][:int(need)]
        if len(whole) < need:
            return None
        for device in whole:
            free[device] = 0.0
        return ",".join(whole)

    gpu_groups = [g for g, need in enumerate(needs) if need > 0]
    for g in gpu_groups:  # in pipeline order: the first stage that cannot run anywhere here is named
        if needs[g] > max(1, len(devices)) or not devices:
            raise RuntimeError(_refusal(groups[g], needs[g], devices))
    for g in sorted(gpu_groups, key=lambda g: -needs[g]):
        device = take(needs[g])
        if device is None:
            raise RuntimeError(_refusal(groups[g], needs[g], devices))
        placed[g].append(device)
    progress = True
    while progress:
        progress = False
        for g in gpu_groups:
            if len(placed[g]) < wanted[g] and (device := take(needs[g])) is not None:
                placed[g].append(device)
                progress = True
    return placed


def _refusal(group: StageGroup, need: float, devices: list[str]) -> str:
    res = group.resources
    asked = f"gpu_memory_gb={res.gpu_memory_gb}" if res.gpu_memory_gb else f"gpus={res.gpus}"
    if not devices:
        return (f"stage {group.name!r} needs a GPU ({asked}) but this LocalExecutor has no devices: "
                f"{HOW_TO_DECLARE}, or run it where there is one")
    have = f"this LocalExecutor has {len(devices)} device(s) ({','.join(devices)})"
    if need > len(devices):
        return f"stage {group.name!r} needs {need:g} GPUs per worker ({asked}) but {have}"
    return (f"stage {group.name!r} needs {need:g} GPU per worker ({asked}) besides one worker of each other "
            f"GPU stage, and {have}")
