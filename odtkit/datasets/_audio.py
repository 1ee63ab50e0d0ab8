"""Audio features for keyword spotting: reading 16-bit PCM wavs and log-mel spectrograms.

    waves = torch.stack([fix_length(read_wav(p)) for p in paths])   # (B, 16000)
    feats = log_mel_spectrogram(waves)                               # (B, 40, 51)

A 1 s clip at 16 kHz gives 1 + 16000 // 320 = 51 frames (centred 30 ms Hann windows every
20 ms) of 40 log mel-band energies: shape (40, 51), channels = mel bands, length = frames.
"""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import torch

from .._checks import check_int

SAMPLE_RATE_HZ = 16_000
CLIP_SAMPLES = 16_000  # every clip is padded or cropped to 1 s
N_FFT = 480            # 30 ms window
HOP = 320              # 20 ms hop
N_MELS = 40
F_MIN_HZ = 20.0
F_MAX_HZ = 8_000.0     # Nyquist at 16 kHz
LOG_FLOOR = 1e-6       # log(energy + floor): silence stays finite


def hz_to_mel(f_hz):
    """HTK mel scale: 2595 * log10(1 + f / 700) (1000 Hz -> about 1000 mel)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f_hz, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    """Inverse of ``hz_to_mel``."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_bins(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate_hz: int = SAMPLE_RATE_HZ,
             f_min_hz: float = F_MIN_HZ, f_max_hz: float = F_MAX_HZ) -> list[int]:
    """FFT bins of the n_mels + 2 points equally spaced in mel from f_min to f_max.

    Filter m rises from bin[m] to its peak at bin[m + 1] and falls to bin[m + 2].
    """
    check_int("n_mels", n_mels, low=1)
    check_int("n_fft", n_fft, low=2)
    nyquist = sample_rate_hz / 2
    if not (math.isfinite(f_min_hz) and math.isfinite(f_max_hz)
            and 0 <= f_min_hz < f_max_hz <= nyquist):
        raise ValueError(f"need 0 <= f_min_hz < f_max_hz <= {nyquist} (Nyquist), got "
                         f"f_min_hz={f_min_hz!r}, f_max_hz={f_max_hz!r}")
    mels = np.linspace(hz_to_mel(f_min_hz), hz_to_mel(f_max_hz), n_mels + 2)
    bins = [int(math.floor(b + 0.5)) for b in mel_to_hz(mels) * n_fft / sample_rate_hz]
    for m in range(len(bins) - 1):
        if bins[m + 1] <= bins[m]:
            raise ValueError(
                f"{n_mels} mel bands are too many for n_fft={n_fft}: mel points {m} and "
                f"{m + 1} fall on the same FFT bin {bins[m]} (bins are "
                f"{sample_rate_hz / n_fft:.1f} Hz apart); use fewer bands or a larger n_fft")
    return bins


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT,
                   sample_rate_hz: int = SAMPLE_RATE_HZ, f_min_hz: float = F_MIN_HZ,
                   f_max_hz: float = F_MAX_HZ) -> torch.Tensor:
    """Triangular mel filters, shape (n_mels, n_fft // 2 + 1), each peaking at 1 on its
    centre bin; neighbours overlap so that they sum to 1 between the first and last centre."""
    bins = mel_bins(n_mels, n_fft, sample_rate_hz, f_min_hz, f_max_hz)
    fb = torch.zeros(n_mels, n_fft // 2 + 1, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    for m in range(n_mels):
        lo, mid, hi = bins[m], bins[m + 1], bins[m + 2]
        rising = (k - lo) / (mid - lo)
        falling = (hi - k) / (hi - mid)
        fb[m] = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return fb.to(torch.float32)


def num_frames(num_samples: int = CLIP_SAMPLES, hop: int = HOP) -> int:
    """Frames of a centred STFT: 1 + num_samples // hop (51 for 1 s at 16 kHz)."""
    return 1 + num_samples // hop


def log_mel_spectrogram(waves: torch.Tensor, n_mels: int = N_MELS, n_fft: int = N_FFT,
                        hop: int = HOP, sample_rate_hz: int = SAMPLE_RATE_HZ,
                        f_min_hz: float = F_MIN_HZ, f_max_hz: float = F_MAX_HZ) -> torch.Tensor:
    """log(mel-filtered power spectrum + 1e-6) of waves (B, T): shape (B, n_mels, 1 + T//hop).

    Power spectrum: torch.stft with a periodic Hann window of n_fft samples, centred
    frames (reflect padding), |X|^2.
    """
    if waves.ndim != 2:
        raise ValueError(f"waves must have shape (batch, samples), got {tuple(waves.shape)}")
    if waves.shape[1] <= n_fft // 2:
        raise ValueError(f"clips of {waves.shape[1]} samples are too short for n_fft={n_fft}")
    window = torch.hann_window(n_fft, periodic=True, dtype=waves.dtype)
    spec = torch.stft(waves, n_fft=n_fft, hop_length=hop, win_length=n_fft, window=window,
                      center=True, pad_mode="reflect", return_complex=True)  # (B, F, frames)
    power = spec.real**2 + spec.imag**2
    fb = mel_filterbank(n_mels, n_fft, sample_rate_hz, f_min_hz, f_max_hz).to(power.dtype)
    mel = torch.einsum("mf,bft->bmt", fb, power)                              # (B, M, frames)
    return torch.log(mel + LOG_FLOOR)


def read_wav(path: Path, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Samples of a mono 16-bit PCM wav as float32 in [-1, 1); ValueError naming the file
    if it is not one, or not at ``sample_rate_hz``."""
    try:
        with wave.open(str(path), "rb") as w:
            params = w.getparams()
            frames = w.readframes(params.nframes)
    except (wave.Error, EOFError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a readable PCM wav file ({err})") from err
    problems = []
    if params.framerate != sample_rate_hz:
        problems.append(f"sample rate {params.framerate} Hz (expected {sample_rate_hz} Hz)")
    if params.nchannels != 1:
        problems.append(f"{params.nchannels} channels (expected 1, mono)")
    if params.sampwidth != 2:
        problems.append(f"{8 * params.sampwidth}-bit samples (expected 16-bit PCM)")
    if problems:
        raise ValueError(f"{path}: {', '.join(problems)}; resample or convert the file")
    if len(frames) % 2:
        raise ValueError(f"{path}: odd number of data bytes ({len(frames)}), file truncated")
    return np.frombuffer(frames, dtype="<i2").astype(np.float32) / np.float32(32768.0)


def fix_length(samples: np.ndarray, length: int = CLIP_SAMPLES) -> torch.Tensor:
    """Crop to the first ``length`` samples or pad zeros at the end: float32 (length,)."""
    out = torch.zeros(length, dtype=torch.float32)
    n = min(len(samples), length)
    out[:n] = torch.from_numpy(np.ascontiguousarray(samples[:n], dtype=np.float32))
    return out
