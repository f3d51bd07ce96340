"""Perception shared by data preparation, training views and generation pipelines: what
is in a photo (faces come from ``ldm_ext.face``).

- ``pose/``: people as OpenPose keypoints; InstantFamily's control image; pose files;
- ``annotator``: the stages of one process (faces, pose, face and character masks), each
  with its real model and a named fallback;
- ``parsing``: the SegFormer face and human parsers; ``segmenters``: the face segmenter
  protocol and the ellipse fallback;
- ``character_masks``: StoryMaker's character masks (parsing split by pose, or the pose
  hull); ``character_crop``: its character reference crop, one for training and generation;
- ``face_region``: a face's region, its detector box enlarged by 25 %.
"""
