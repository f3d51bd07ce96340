"""How a training run scores its images, shared by the training-time evaluation callback
and the web app: the run's ``ScoringConfig`` and the scorers whose weights are present."""
from __future__ import annotations

import warnings

from ldm_ext.evaluation.scorers import ClipModelMissing
from ldm_ext.evaluation.scoring import Scorers, build_scorers
from ldm_ext.face import FaceModelMissing


def run_scoring(cfg, overrides: list[str] | None = None):
    """The ``ScoringConfig`` of a run (its config ``cfg``): face scores with the encoder
    its method's config names (``MethodConfig.scoring_encoder``; MTCNN detection) and by
    a second, independent encoder (``second_encoder`` auto: never the method's own
    family), and the protocol's CLIP ViT-L/14 text score; ``overrides`` (``key=value``
    of ScoringConfig) go on top."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from ldm_ext.config_layers import ConfigError, parse_overrides
    from ldm_ext.eval_config import ScoringConfig, second_encoder_name
    from ldm_ext.registry import identity_encoder, scoring_encoder

    own = scoring_encoder(cfg.method)  # None: the protocol's default encoder
    encoder = dict(zip(("face_encoder", "face_weights"), own)) if own else {}
    scoring = OmegaConf.structured(ScoringConfig(**encoder, min_face_score=0.0, batch_size=8))
    if overrides:
        try:
            scoring = OmegaConf.merge(scoring, parse_overrides(overrides))
        except OmegaConfBaseException as err:
            raise ConfigError(f"scoring override {' '.join(overrides)}: {err}") from None
    scoring.second_encoder = second_encoder_name(scoring, identity_encoder(cfg.method))
    return scoring


def build_available(scoring) -> Scorers:
    """The scorers of ``scoring``, switching off (with a warning) the CLIP text score or
    the second face encoder while their weights are missing; ``scoring`` then names what
    runs. Missing weights of the method's own encoder still raise."""
    while True:
        try:
            return build_scorers(scoring)
        except (ClipModelMissing, FaceModelMissing) as error:
            off = "clip_t_model" if isinstance(error, ClipModelMissing) else "second_encoder"
            if not getattr(scoring, off):
                raise
            warnings.warn(f"evaluation callback: {error}; {off}=null", stacklevel=3)
            setattr(scoring, off, None)
