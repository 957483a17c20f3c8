"""Capture: generate images and record each hooked block's residual update at chosen timesteps, as shards.

    from atlas.capture import capture, ActivationSet
    capture(model, prompts, "acts", CaptureConfig(t=[1.0, 0.0]))
    ActivationSet("acts").load("mid", 1.0, "cond", split="train")
    ShardStream(ActivationSet("acts"), "mid", 1.0, "cond", split="train")   # what SAE training reads
    plan_capture(model, 10_000, CaptureConfig(keys=["mid/1.0"], dtype="bf16"), "acts").format()  # the disk it needs
"""

from atlas.lazy import lazy_face

_NAMES = {
    "CaptureConfig": "atlas.capture.config", "StreamConfig": "atlas.capture.config",
    "ShardStream": "atlas.capture.stream", "split_of": "atlas.capture.splits",
    **dict.fromkeys(("ActivationSet", "CaptureRun", "capture", "delta_at", "prepare_capture"), "atlas.capture.record"),
    **dict.fromkeys(("CapturePlan", "plan_capture"), "atlas.capture.plan"),
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_face(__name__, _NAMES)
