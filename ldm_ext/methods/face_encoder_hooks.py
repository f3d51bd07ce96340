"""The encoder hooks of a method config whose ``face_encoder`` / ``face_weights`` fields
name one face network it conditions on (and, for some, optimises): reports, scoring and
parameter counts all read that network as configured."""
from __future__ import annotations


class FaceEncoderHooks:
    """Mixed in before ``MethodConfig`` by a config with ``face_encoder`` and
    ``face_weights`` fields."""

    @classmethod
    def identity_encoder(cls, method) -> str:
        """The face encoder the identity tokens come from, with its weights."""
        return f"{method.face_encoder}/{method.face_weights}"

    @classmethod
    def scoring_encoder(cls, method) -> tuple[str, str]:
        """Scored with the face encoder it conditions on, as configured."""
        return method.face_encoder, method.face_weights

    @classmethod
    def published_shapes(cls, method) -> dict[str, str]:
        """The configured face encoder with random weights."""
        return {"face_weights": "random"}
