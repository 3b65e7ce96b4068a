"""Sampling policy on made-up timestamps and thumbnails: no files, no decoding."""

from __future__ import annotations

import numpy as np
import pytest

from framesim.sampling import (
    DEFAULT_SCENE_THRESHOLD,
    EveryNSampler,
    FpsSampler,
    KeyframeSampler,
    Sampler,
    SceneSampler,
    make_sampler,
)


def run(sampler: Sampler, times: list[float]) -> list[int]:
    sampler.reset()
    return [i for i, t in enumerate(times) if sampler.wants(i, t)]


def grid(n: int, fps: float, t0: float = 0.0) -> list[float]:
    # like the stream gives them: float milliseconds turned into seconds
    return [(t0 * 1000 + i * 1000 / fps) / 1000 for i in range(n)]


@pytest.mark.parametrize(("video_fps", "fps", "expected"), [
    (25, 1, list(range(0, 250, 25))),
    (25, 2.5, list(range(0, 250, 10))),
    (25, 0.5, list(range(0, 250, 50))),
    (30000 / 1001, 1, [0, 30, 60, 90, 120, 150, 180, 210, 240]),  # 29.97: the tick falls between frames
    (25, 25, list(range(250))),
    (25, 100, list(range(250))),  # asking for more than the video has keeps every frame, once
])
def test_fps_sampler_on_regular_timestamps(video_fps: float, fps: float, expected: list[int]) -> None:
    assert run(FpsSampler(fps), grid(250, video_fps)) == expected


def test_fps_sampler_variable_frame_rate_keeps_one_frame_per_tick() -> None:
    # tree.avi-like: irregular intervals, some longer than the tick
    times = [0.0, 0.733, 1.133, 1.6, 2.067, 2.467, 4.9, 5.0, 5.4, 6.01]
    # ticks 0, 1, 2 -> first frame at/after each; 4.9 covers ticks 3 and 4 once; 5.0 is tick 5; 6.01 tick 6
    assert run(FpsSampler(1.0), times) == [0, 2, 4, 6, 7, 9]
    # ticks every 0.5 s: 2.467 comes before the 2.5 tick, which 4.9 then takes
    assert [times[i] for i in run(FpsSampler(2.0), times)] == [0.0, 0.733, 1.133, 1.6, 2.067, 4.9, 5.0, 6.01]


def test_fps_sampler_clock_is_anchored_at_origin() -> None:
    times = grid(250, 25)
    sampler = FpsSampler(1.0, origin=3.3)
    kept = [i for i, t in enumerate(times) if t >= 3.3 - 1e-9 and sampler.wants(i, t)]
    assert kept == [83, 108, 133, 158, 183, 208, 233]  # 3.32, 4.32, ... (first frame at/after 3.3 + k)
    assert sampler.spec() == "fps=1,origin=3.3"


def test_fps_sampler_does_not_drift() -> None:
    times = grid(25 * 3600, 25)  # an hour at 25 fps
    kept = run(FpsSampler(1.0), times)
    assert len(kept) == 3600 and kept[-1] == 25 * 3599


def test_every_n() -> None:
    assert run(EveryNSampler(7), grid(50, 25)) == [0, 7, 14, 21, 28, 35, 42, 49]
    assert run(EveryNSampler(1), grid(5, 25)) == [0, 1, 2, 3, 4]


def flat(value: float, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((40, 60, 3), value, np.float32) + rng.normal(0, noise, (40, 60, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_scene_sampler_keeps_first_and_changes_relative_to_last_kept() -> None:
    s = SceneSampler(0.1)
    assert s.needs_pixels
    frames = [flat(100, 3, 0), flat(100, 3, 1), flat(110, 3, 2),  # same shot, noise, a little drift
              flat(200, 3, 3), flat(201, 3, 4),                    # a cut, then the same shot
              flat(180, 3, 5)]                                     # 0.08 from 200: below 0.1
    kept = []
    for i, f in enumerate(frames):
        assert s.wants(i, i / 25)
        if s.keep(i, i / 25, s.thumbnail(f)):
            kept.append(i)
    assert kept == [0, 3]
    # drift accumulates against the last kept frame (here 200 -> 170 = 0.118 > 0.1)
    assert s.keep(6, 0.24, s.thumbnail(flat(170)))


def test_scene_difference_scale_is_0_to_1() -> None:
    s = SceneSampler()
    assert s.threshold == DEFAULT_SCENE_THRESHOLD
    black, white = s.thumbnail(flat(0)), s.thumbnail(flat(255))
    assert s.difference(black, white) == pytest.approx(1.0)
    assert s.difference(black, black) == 0.0


def test_scene_sampler_state_round_trip() -> None:
    rng = np.random.default_rng(7)
    frames = [flat(float(v)) for v in rng.integers(0, 256, 40)]

    def decisions(sampler: SceneSampler, items: list[tuple[int, np.ndarray]]) -> list[int]:
        return [i for i, f in items if sampler.keep(i, i / 25, sampler.thumbnail(f))]

    whole = decisions(SceneSampler(0.2), list(enumerate(frames)))
    first = SceneSampler(0.2)
    head = decisions(first, list(enumerate(frames))[:17])
    state = first.state()
    import json
    state = json.loads(json.dumps(state))  # it is stored as JSON
    second = SceneSampler(0.2)
    second.restore(state)
    assert head + decisions(second, list(enumerate(frames))[17:]) == whole
    assert SceneSampler().state() == {"ref": None}


def test_make_sampler_precedence_and_errors() -> None:
    assert isinstance(make_sampler(), FpsSampler) and make_sampler().spec() == "fps=1"
    assert make_sampler(fps=1.0).spec() == make_sampler(fps=1).spec()
    assert isinstance(make_sampler(fps=1.0, every=5), EveryNSampler)  # fps is only the default
    assert isinstance(make_sampler(fps=1.0, scene=0.2), SceneSampler)
    assert make_sampler(scene=0.25).spec() == "scene=0.25"
    assert make_sampler(every=3).spec() == "every=3"
    with pytest.raises(ValueError, match="every and scene"):
        make_sampler(every=3, scene=0.1)
    with pytest.raises(ValueError):
        make_sampler(fps=None)
    for bad in (dict(fps=0), dict(fps=-1), dict(fps=float("nan")), dict(every=0), dict(every=2.5),
                dict(scene=0), dict(scene=1.5)):
        with pytest.raises(ValueError):
            make_sampler(**bad)  # type: ignore[arg-type]


def test_keyframe_sampler_keeps_all_or_thins_by_distance() -> None:
    keyframes = [0.0, 0.4, 0.8, 1.2, 1.6, 2.0, 2.4, 5.0, 5.3]
    assert run(KeyframeSampler(), keyframes) == list(range(9))
    # >= 1 s after the last kept one (not clock ticks: those would keep 2.0 too)
    assert [keyframes[i] for i in run(KeyframeSampler(1), keyframes)] == [0.0, 1.2, 2.4, 5.0]
    assert run(KeyframeSampler(1), grid(10, 1)) == list(range(10))  # exactly 1 s apart: all (float ms)
    assert KeyframeSampler().spec() == "keyframes" and KeyframeSampler(0.50).spec() == "keyframes,fps=0.5"
    assert not KeyframeSampler.needs_pixels
    assert make_sampler(fps=None, keyframes=True).spec() == "keyframes"
    assert make_sampler(fps=2, keyframes=True).spec() == "keyframes,fps=2"
    for bad in (dict(every=2), dict(scene=0.1)):
        with pytest.raises(ValueError, match="keyframes"):
            make_sampler(keyframes=True, **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        KeyframeSampler(0)
