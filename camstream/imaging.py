"""Image handling shared by producers, the worker, training and benchmarks.

The model's own normalisation ((x - 127) / 128, NCHW) is baked into the exported ONNX
graph, so every caller sends the same thing: RGB uint8, 224x224x3, made here. One
implementation means no training-serving skew. An image that cannot be used raises
camstream.errors.FrameRejected, whose DlqKind the worker's DLQ records carry.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from camstream.errors import DlqKind, FrameRejected

MODEL_SIZE = 224
RESIZE_SHORT = 256

Image = npt.NDArray[np.uint8]


def jpeg_dimensions(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's SOF marker, without decoding any pixels.

    Raises FrameRejected when the bytes are not a well-formed JPEG header.
    """
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        raise FrameRejected(DlqKind.NOT_JPEG, "value does not start with a JPEG SOI marker")
    pos = 2
    end = len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            raise FrameRejected(DlqKind.CORRUPT_JPEG, f"expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        # SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > end:
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            if width == 0 or height == 0:
                raise FrameRejected(DlqKind.CORRUPT_JPEG, "JPEG declares a zero dimension")
            return int(width), int(height)
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + length
    raise FrameRejected(DlqKind.CORRUPT_JPEG, "no JPEG frame header (SOF) found")


def reduction_for(width: int, height: int, target_short: int = RESIZE_SHORT) -> int:
    """The largest libjpeg DCT scale-down (1, 2, 4, 8) that keeps the short side >= target."""
    short = min(width, height)
    for factor in (8, 4, 2):
        if short // factor >= target_short:
            return factor
    return 1


_REDUCED_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def decode_jpeg(data: bytes, reduce: int = 1) -> Image:
    """Decode JPEG bytes to BGR, scaled down by ``reduce`` inside the decoder."""
    buf = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buf, _REDUCED_FLAGS[reduce])
    if image is None:
        raise FrameRejected(DlqKind.UNDECODABLE, "OpenCV could not decode the JPEG")
    return np.asarray(image, dtype=np.uint8)


def to_model_input(bgr: Image) -> Image:
    """BGR image of any size -> RGB uint8 224x224x3: short side to 256, centre crop 224."""
    height, width = bgr.shape[:2]
    scale = RESIZE_SHORT / min(height, width)
    new_w = max(MODEL_SIZE, round(width * scale))
    new_h = max(MODEL_SIZE, round(height * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(bgr, (new_w, new_h), interpolation=interp)
    top = (new_h - MODEL_SIZE) // 2
    left = (new_w - MODEL_SIZE) // 2
    crop = resized[top : top + MODEL_SIZE, left : left + MODEL_SIZE]
    return np.ascontiguousarray(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB))


def jpeg_to_model_input(data: bytes, width: int, height: int) -> Image:
    """Decode at the smallest size the model allows, then crop: the worker's hot path."""
    return to_model_input(decode_jpeg(data, reduction_for(width, height)))


def fit_within(image: Image, max_width: int, max_height: int) -> Image:
    """Scale down (never up), keeping the aspect ratio, to fit max_width x max_height."""
    height, width = image.shape[:2]
    scale = min(max_width / width, max_height / height)
    if scale >= 1:
        return image
    size = (max(round(width * scale), 1), max(round(height * scale), 1))
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def encode_jpeg(bgr: Image, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise FrameRejected(DlqKind.ENCODE_FAILED, "OpenCV could not encode the frame as JPEG")
    return bytes(buf)


# Pixel levels (0-255, grey) at or beyond which a pixel counts as crushed or clipped.
DARK_LEVEL = 16
BRIGHT_LEVEL = 239
# Statistics that are not distributions to compare but identities (see image_statistics).
FINGERPRINT = "fingerprint"


def _mean_std(image: npt.NDArray[np.integer[Any] | np.floating[Any]]) -> tuple[float, float]:
    mean, std = cv2.meanStdDev(image)
    return float(mean[0, 0]), float(std[0, 0])


def image_statistics(rgb: Image) -> dict[str, float]:
    """Cheap per-frame statistics for drift and data quality (about 0.3 ms at 224x224).

    brightness, contrast (grey mean and standard deviation), sharpness (variance of the
    Laplacian), colourfulness (Hasler and Suesstrunk), dark_fraction and bright_fraction
    (shares of crushed and clipped pixels: black and over-exposed frames), and
    ``fingerprint``: a 48-bit hash of the grey image, exact in a float, equal for
    identical frames only (a frozen camera), never compared as a distribution.
    """
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    # cv2.meanStdDev (one pass, in double) instead of numpy's mean/std/var; the 3x3
    # Laplacian of uint8 fits int16 exactly, so CV_16S loses nothing against CV_32F.
    brightness, contrast = _mean_std(gray)
    sharpness = _mean_std(cv2.Laplacian(gray, cv2.CV_16S))[1] ** 2
    r, g, b = cv2.split(rgb)
    rg = cv2.subtract(r, g, dtype=cv2.CV_16S)
    yb2 = cv2.subtract(cv2.add(r, g, dtype=cv2.CV_16S), cv2.add(b, b, dtype=cv2.CV_16S))
    rg_mean, rg_std = _mean_std(rg)
    yb_mean, yb_std = (v / 2 for v in _mean_std(yb2))  # yb = (r + g) / 2 - b
    colourfulness = float(np.sqrt(rg_std**2 + yb_std**2) + 0.3 * np.sqrt(rg_mean**2 + yb_mean**2))
    pixels = float(gray.size)
    digest = hashlib.blake2b(np.ascontiguousarray(gray).data, digest_size=6).digest()
    return {
        "brightness": brightness,
        "contrast": contrast,
        "sharpness": sharpness,
        "colourfulness": colourfulness,
        "dark_fraction": float(np.count_nonzero(gray <= DARK_LEVEL)) / pixels,
        "bright_fraction": float(np.count_nonzero(gray >= BRIGHT_LEVEL)) / pixels,
        FINGERPRINT: float(int.from_bytes(digest, "big")),
    }


# Perceptual hash ------------------------------------------------------------------

PHASH_SIZE = 32  # the image is shrunk to this square before the DCT
PHASH_BITS = 8  # the top-left 8x8 lowest frequencies make the 64-bit hash


def perceptual_hash(image: Image) -> str:
    """DCT perceptual hash (pHash) as 16 hex digits: equal for an image and its
    re-encoded, rescaled or slightly retouched copies, so datasets can keep
    near-duplicates in one split.

    Grey, 32x32 (INTER_AREA), 2-D DCT; each of the 8x8 lowest frequencies is one bit,
    set when above the median of those 64 less the DC term (the DC is the mean
    brightness, not the structure). Accepts grey, BGR or BGRA.
    """
    if image.ndim == 3 and image.shape[2] == 4:
        gray = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    elif image.ndim == 3 and image.shape[2] == 3:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        gray = image.reshape(image.shape[:2])
    else:
        raise ValueError(f"perceptual_hash needs a grey, BGR or BGRA image, got {image.shape}")
    small = cv2.resize(gray, (PHASH_SIZE, PHASH_SIZE), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small.astype(np.float32))[:PHASH_BITS, :PHASH_BITS].ravel()
    median = np.partition(low[1:], 31)[31]  # the median of the 63: np.median, 10x faster
    return np.packbits(low > median).tobytes().hex()


def hamming(a: str, b: str) -> int:
    """Bits that differ between two perceptual hashes (0 = the same image to pHash)."""
    if len(a) != len(b):
        raise ValueError(f"hashes of different lengths: {a!r}, {b!r}")
    return (int(a, 16) ^ int(b, 16)).bit_count()
