"""End-effector poses of DROID, as the official V-JEPA 2-AC planning code reads them, in torch.

A pose is 7-d: [x, y, z, roll, pitch, yaw, gripper]. The action is the DROID ``poses_to_diffs``:
[xyz delta, Euler("xyz") of R_{t+1} R_t^T, gripper delta]. ``compute_new_pose`` is the official update
(``notebooks/utils/mpc_utils.py``): position + delta; orientation as extrinsic "xyz" Euler angles
(scipy's ``Rotation.from_euler("xyz", ...)``, i.e. R = Rz(yaw) Ry(pitch) Rx(roll)) composed as
R_new = R_delta @ R_state and read back as "xyz" Euler angles; gripper = clip(gripper + delta, 0, 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["POSE_DIM", "compose_pose_deltas", "compute_new_pose", "euler_xyz_from_quat", "quat_from_euler_xyz"]

POSE_DIM = 7  # [x, y, z, roll, pitch, yaw, gripper]: DROID's cartesian position + gripper



def _quat_mul(p: Tensor, q: Tensor) -> Tensor:
    """Hamilton product of quaternions ``[..., 4]`` (x, y, z, w): the rotation p after q."""
    px, py, pz, pw = p.unbind(-1)
    qx, qy, qz, qw = q.unbind(-1)
    return torch.stack([
        pw * qx + qw * px + py * qz - pz * qy,
        pw * qy + qw * py + pz * qx - px * qz,
        pw * qz + qw * pz + px * qy - py * qx,
        pw * qw - px * qx - py * qy - pz * qz,
    ], -1)


def quat_from_euler_xyz(angles: Tensor) -> Tensor:
    """Extrinsic x-y-z Euler angles ``[..., 3]`` (radians) -> quaternion ``[..., 4]`` (x, y, z, w):
    scipy's ``Rotation.from_euler("xyz", angles)``, i.e. R = Rz(a2) Ry(a1) Rx(a0)."""
    half = angles / 2
    c, s = half.cos(), half.sin()
    zero = torch.zeros_like(c[..., 0])
    qx = torch.stack([s[..., 0], zero, zero, c[..., 0]], -1)
    qy = torch.stack([zero, s[..., 1], zero, c[..., 1]], -1)
    qz = torch.stack([zero, zero, s[..., 2], c[..., 2]], -1)
    return _quat_mul(qz, _quat_mul(qy, qx))


def euler_xyz_from_quat(q: Tensor) -> Tensor:
    """Quaternion ``[..., 4]`` (x, y, z, w) -> extrinsic x-y-z Euler angles ``[..., 3]``, as scipy's
    ``Rotation.as_euler("xyz")`` computes them (its quaternion method): first and last angle in
    [-pi, pi), middle in [-pi/2, pi/2]; at gimbal lock the last angle is 0."""
    x, y, z, w = q.unbind(-1)
    a, b, c, d = w - y, x + z, y + w, z - x  # axes (0, 1, 2), extrinsic, sign +1
    mid = 2 * torch.atan2(torch.hypot(c, d), torch.hypot(a, b))
    half_sum, half_diff = torch.atan2(b, a), torch.atan2(d, c)
    near0 = mid.abs() <= 1e-7
    near_pi = (mid - math.pi).abs() <= 1e-7
    regular = ~(near0 | near_pi)
    first = torch.where(regular, half_sum - half_diff, torch.where(near0, 2 * half_sum, -2 * half_diff))
    last = torch.where(regular, half_sum + half_diff, torch.zeros_like(mid))
    angles = torch.stack([first, mid - math.pi / 2, last], -1)
    return torch.remainder(angles + math.pi, 2 * math.pi) - math.pi


def compose_pose_deltas(actions: Tensor) -> Tensor:
    """f consecutive pose deltas ``[..., f, 7]`` -> the one delta ``[..., 7]`` between the first and
    the last pose (what ``poses_to_diffs`` gives on states subsampled by f): positions and gripper add
    up, rotations compose (R_f ... R_1)."""
    a = actions.double()
    q = quat_from_euler_xyz(a[..., 0, 3:6])
    for i in range(1, a.shape[-2]):
        q = _quat_mul(quat_from_euler_xyz(a[..., i, 3:6]), q)
    out = torch.cat([a[..., :3].sum(-2), euler_xyz_from_quat(q), a[..., 6:].sum(-2)], -1)
    return out.to(actions.dtype)


def compute_new_pose(pose: Tensor, action: Tensor) -> Tensor:
    """The official ``compute_new_pose``: pose and delta ``[..., 7]`` -> next pose ``[..., 7]``.

    xyz + delta; orientation R_delta @ R_pose in extrinsic "xyz" Euler angles; gripper
    clip(g + delta, 0, 1). Computed in float64 (as the official numpy code), returned in pose's dtype.
    """
    p, a = pose.double(), action.double()
    q = _quat_mul(quat_from_euler_xyz(a[..., 3:6]), quat_from_euler_xyz(p[..., 3:6]))
    out = torch.cat([p[..., :3] + a[..., :3], euler_xyz_from_quat(q), (p[..., 6:] + a[..., 6:]).clamp(0, 1)], -1)
    return out.to(pose.dtype)

