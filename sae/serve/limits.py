"""What one request may ask of the server: body and text size, generation length, queue depth and waiting time."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True)
class Limits:
    """Caps of the live server (each refused request is answered with its status and the cap it passed)."""

    max_body_bytes: int = 16_384
    """Largest request body, in bytes (413 above)."""
    max_text_chars: int = 4_000
    """Longest text, in characters (422 above; a text longer than the model's context in tokens is refused too)."""
    max_latents: int = 32
    """Latents one request may name."""
    max_new_tokens: int = 64
    """Most tokens one continuation may generate."""
    max_strength: float = 100.0
    """Largest steering strength (relative to the activation's norm), either sign."""
    queue_size: int = 8
    """Requests waiting for the model at once; one more is answered 503."""
    timeout: float = 30.0
    """Seconds a request may wait and run in all (504 after)."""
    generation_timeout: float = 10.0
    """Seconds the generations of one steering request may take together; they stop there (timed_out)."""
    top_latents: int = 10
    """Latents listed as the text's most active."""

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_text_chars", "max_latents", "max_new_tokens", "queue_size", "top_latents"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_strength", "timeout", "generation_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
