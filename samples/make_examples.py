"""Regenerate samples/examples/ and samples/ground_truth.csv from samples/bikes.mp4.

Each example is a frame grabbed at a known time and edited the way re-uploads and screenshots are
(crop, rescale + JPEG, caption overlay, brightness/contrast, a combination). One photo that comes
from no video is included as a distractor: its correct answer is "no match"
(distractor_coffee.jpg: scikit-image's CC0 "coffee" photo at 80 %, JPEG; copied once, not regenerated here).

    python samples/make_examples.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
VIDEO = HERE / "bikes.mp4"
OUT = HERE / "examples"


def grab_at(video: Path, t: float) -> np.ndarray:
    cap = cv2.VideoCapture(str(video))
    best = None
    while cap.grab():
        if cap.get(cv2.CAP_PROP_POS_MSEC) / 1000 >= t - 1e-6:
            _, best = cap.retrieve()
            break
    cap.release()
    assert best is not None, f"no frame at {t}s in {video}"
    return best


def crop(img: np.ndarray, keep: float, dx: float = 0.0) -> np.ndarray:
    h, w = img.shape[:2]
    ch, cw = int(h * keep), int(w * keep)
    y0, x0 = (h - ch) // 2, int((w - cw) // 2 + dx * w)
    return img[y0:y0 + ch, x0:x0 + cw]


def caption(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    h, w = out.shape[:2]
    cv2.rectangle(out, (0, h - h // 6), (w, h), (0, 0, 0), -1)
    cv2.putText(out, text, (w // 30, h - h // 20), cv2.FONT_HERSHEY_SIMPLEX, h / 400, (255, 255, 255), 2)
    return out


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def rescale(img: np.ndarray, factor: float) -> np.ndarray:
    return cv2.resize(img, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)


def brightness_contrast(img: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return cv2.convertScaleAbs(img, alpha=alpha, beta=beta)


EDITS = [
    # (file name, source time in s, edit)
    ("crop70_t0.6.jpg", 0.6, lambda im: crop(im, 0.7)),
    ("small_jpeg30_t2.4.jpg", 2.4, lambda im: jpeg(rescale(im, 0.5), 30)),
    ("caption_t4.2.jpg", 4.2, lambda im: caption(im, "Reposted clip - watch till the end!")),
    ("brighter_t6.8.jpg", 6.8, lambda im: brightness_contrast(im, 1.3, 25)),
    ("crop60_caption_jpeg_t8.4.jpg", 8.4, lambda im: jpeg(caption(crop(im, 0.6, 0.1), "@someone"), 50)),
]


def main() -> None:
    OUT.mkdir(exist_ok=True)
    rows = []
    for name, t, edit in EDITS:
        cv2.imwrite(str(OUT / name), edit(grab_at(VIDEO, t)), [cv2.IMWRITE_JPEG_QUALITY, 90])
        rows.append({"example": name, "video": "bikes.mp4", "timestamp_s": t})
    # Distractor: a CC0 photo (scikit-image "coffee") that appears in no video.
    rows.append({"example": "distractor_coffee.jpg", "video": "", "timestamp_s": ""})
    with open(HERE / "ground_truth.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["example", "video", "timestamp_s"])
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
