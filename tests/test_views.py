"""Per-method views: which faces they take (InstantFamily's random slots, StoryMaker's
characters, PortraitBooth's subject), what they carry (control images, masks, crops), their
fallbacks for shards without masks, and their collated batches."""
import numpy as np
import pytest
import torch

from datamodules.demo import demo_sample, with_fallback_masks
from datamodules.schema import MASK_CHAR, MASK_SEG, Sample, validate
from datamodules.transforms import ResizeCrop
from datamodules.views import (InstantFamilyView, PortraitBoothView, StoryMakerView, build_view,
                               select_slots, views)
from ldm_ext.attention import TokenLayout, build_face_masks
from ldm_ext.face.align import arcface_crops
from ldm_ext.perception.character_crop import reference_crop
from ldm_ext.perception.character_masks import HullCharacters
from ldm_ext.perception.pose import SLOT_COLORS, face_center, pose_template
from ldm_ext.perception.segmenters import EllipseSegmenter

pytestmark = pytest.mark.usefixtures("one_thread")
R, N = 128, 4  # resolution, InstantFamily's face slots


@pytest.fixture(scope="module")
def samples() -> dict:
    """Eight demo samples of 1-4 people at 80 x 80."""
    return {s.key: s for s in (demo_sample(i, hw=(80, 80)) for i in range(8))}


def sample_with(faces: int, masks: bool = True, index: int = 0):
    """A demo sample with ``faces`` faces, with prepare's masks (ellipse, pose hull) or none."""
    for i in range(index, index + 200):
        sample = demo_sample(i, hw=(R, R))
        if sample.num_faces == faces:
            break
    return with_fallback_masks(sample) if masks else sample


def test_storymaker_takes_the_largest_faces_in_random_order():
    sample, view = sample_with(3), StoryMakerView(num_slots=2)
    orders = set()
    for seed in range(12):
        item = view(sample, torch.Generator().manual_seed(seed))
        aligned = arcface_crops(sample.image, sample.landmarks, 224).transpose(0, 3, 1, 2)
        order = [int(np.flatnonzero((aligned == c).all(axis=(1, 2, 3)))[0])
                 for c in item["face_crops"].numpy()]  # each crop: its face's aligned crop
        assert sorted(order) == [0, 1]  # the two largest (faces are stored largest first)
        masks = (sample.masks[order] & MASK_CHAR) > 0
        assert np.array_equal(item["character_masks"].numpy(), masks)
        orders.add(tuple(order))
    assert orders == {(0, 1), (1, 0)}
    assert item["control"].circles == [] and len(item["control"].people) == 3


def test_storymaker_character_is_its_mask_on_white():
    sample = sample_with(1)
    item = StoryMakerView(num_slots=2, character_size=R)(sample, torch.Generator())
    mask = (sample.masks[0] & MASK_CHAR) > 0
    expected = reference_crop(sample.image, mask, R)
    assert np.array_equal(item["characters"][0].permute(1, 2, 0).numpy(), expected)
    assert (expected == 255).any() and (expected != 255).any()
    assert item["face_valid"].tolist() == [True, False] and len(item["characters"]) == 1


def test_storymaker_without_masks_uses_the_pose_hulls():
    sample = sample_with(2, masks=False)
    item = StoryMakerView()(sample, torch.Generator().manual_seed(0))
    hulls = HullCharacters()(sample.image, sample.boxes, sample.people, sample.face_person)
    masks = item["character_masks"].numpy().astype(bool)
    assert {m.tobytes() for m in masks} == {h.tobytes() for h in hulls}
    assert not (masks[0] & masks[1]).any()


def test_storymaker_batch_float_and_uint8():
    view, transform = StoryMakerView(num_slots=2), ResizeCrop(64, flip_prob=0.5)
    items = [view(transform(sample_with(n), torch.Generator().manual_seed(n)),
                  torch.Generator().manual_seed(n)) for n in (1, 3)]
    batch = view.collate(items)
    assert batch["pixel_values"].shape == (2, 3, 64, 64) and batch["control"].max() <= 1
    assert batch["characters"].shape == (2, 2, 3, 224, 224)
    assert batch["character_masks"].shape == (2, 2, 64, 64)
    assert batch["character_masks"].dtype == torch.float32
    assert set(batch["character_masks"].unique().tolist()) == {0.0, 1.0}
    assert batch["face_valid"].tolist() == [[True, False], [True, True]]
    assert not batch["characters"][0, 1].any() and not batch["face_crops"][0, 1].any()
    assert batch["face_crops"].min() >= -1 and batch["characters"].max() <= 1
    raw = StoryMakerView(num_slots=2, float_batches=False).collate(items)
    assert raw["characters"].dtype == torch.uint8
    assert torch.equal(view.normalize(raw)["characters"], batch["characters"])


def test_portraitbooth_subject_reference_box_and_face_mask():
    sample, view = sample_with(2), PortraitBoothView()
    sample.reference = np.full((3, 160, 160), 7, np.uint8)  # another frame's face
    item = view(sample, torch.Generator())
    assert (item["reference"].numpy() == 7).all() and item["reference"].shape == (1, 3, 160, 160)
    assert np.array_equal(item["face_masks"][0].numpy(), (sample.masks[0] & MASK_SEG) > 0)
    assert torch.allclose(item["face_boxes"][0] * R, torch.from_numpy(sample.boxes[0]))
    two = PortraitBoothView(num_slots=2)(sample, torch.Generator())
    assert np.array_equal(two["reference"][1].numpy(), sample.crops[1])  # its own crop


def test_portraitbooth_without_masks_or_reference_uses_ellipse_and_own_crop():
    sample = sample_with(1, masks=False)
    view = PortraitBoothView(num_slots=2)
    item = view(sample, torch.Generator())
    assert np.array_equal(item["reference"][0].numpy(), sample.crops[0])
    ellipse = EllipseSegmenter()(sample.image, sample.boxes)[0]
    assert np.array_equal(item["face_masks"][0].numpy(), ellipse)
    batch = view.collate([item, item])
    assert batch["reference"].shape == (2, 2, 3, 160, 160)
    assert not batch["reference"][:, 1].any() and batch["face_masks"].shape == (2, 2, R, R)
    assert batch["face_valid"].tolist() == [[True, False]] * 2


def test_views_come_from_the_registry_and_mistakes_are_named():
    assert isinstance(build_view("storymaker", num_slots=2), StoryMakerView)
    assert isinstance(build_view("portraitbooth", num_slots=1), PortraitBoothView)
    assert set(views()) == {"instantfamily", "portraitbooth", "storymaker"}  # not sefi_ide
    with pytest.raises(ValueError, match="unknown method 'sefi'.*portraitbooth"):
        build_view("sefi")
    with pytest.raises(ValueError, match="'sefi_ide' has no data view.*single_image"):
        build_view("sefi_ide", num_slots=1)


# --- InstantFamily ---------------------------------------------------------------------

def test_slots_are_random_in_size_and_order():
    firsts = {select_slots(6, N, torch.Generator().manual_seed(s))[0] for s in range(40)}
    assert firsts == set(range(6))  # any face can take slot 0
    for faces in range(7):
        slots = select_slots(faces, N, torch.Generator().manual_seed(faces))
        assert len(slots) == min(N, faces) == len(set(slots))


def test_control_circles_mark_slot_k_at_its_face(samples):
    view, transform = InstantFamilyView(N), ResizeCrop(64)
    for i, sample in enumerate(list(samples.values())[:8]):
        sample = transform(sample, torch.Generator())
        item = view(sample, torch.Generator().manual_seed(i))
        control = item["control"].render()  # (64, 64, 3) uint8
        boxes = item["face_boxes"][item["face_valid"]].numpy() * 64
        chosen = []
        for k, box in enumerate(boxes):
            f = int(np.argmin(np.abs(sample.boxes - box).sum(1)))
            person = sample.people[sample.face_person[f]]
            x, y = np.round(face_center(person)).astype(int)
            assert tuple(control[y, x]) == SLOT_COLORS[k]
            chosen.append(sample.face_person[f])
        for p, person in enumerate(sample.people):  # skeleton only for the others
            if p not in chosen:
                x, y = np.round(face_center(person)).astype(int)
                assert tuple(control[y, x]) not in SLOT_COLORS
        assert control.any(-1).mean() > 0.02  # skeletons drawn


def test_face_without_person_gets_its_circle_at_the_box_centre(samples):
    sample = ResizeCrop(64)(next(iter(samples.values())), torch.Generator())
    sample.face_person = np.full(sample.num_faces, -1)
    item = InstantFamilyView(N)(sample, torch.Generator())
    control = item["control"].render()  # (64, 64, 3) uint8
    for k, box in enumerate(item["face_boxes"][item["face_valid"]].numpy() * 64):
        x, y = np.round((box[:2] + box[2:]) / 2).astype(int)
        assert tuple(control[y, x]) == SLOT_COLORS[k]


def test_face_cut_by_the_crop_gets_the_margin_of_its_whole_box():
    """InstantFamily's region is the detector box + 25 %, clipped after: a face cut by the
    crop keeps the region its raw box gives, not a smaller, shifted one grown from its
    visible part (docs/methods.md §1, Eq. 6)."""
    sample = Sample(key="cut", image=np.zeros((64, 128, 3), np.uint8), caption="a face",
                    boxes=np.array([[20, 10, 50, 40]], np.float32),  # crop x 32..96 cuts it
                    landmarks=np.full((1, 5, 2), 40, np.float32), scores=np.ones(1, np.float32),
                    crops=np.zeros((1, 3, 160, 160), np.uint8), face_person=np.array([-1]))
    item = InstantFamilyView(N)(ResizeCrop(64)(sample, torch.Generator()), torch.Generator())
    np.testing.assert_allclose(item["face_boxes"][0].numpy() * 64, [-12, 10, 18, 40])
    layout = TokenLayout(num_text=1, num_slots=N, tokens_per_face=1)
    masks = build_face_masks(item["face_boxes"][None], item["face_valid"][None], layout,
                             (64, 64))
    expected = torch.zeros(64, 64)
    expected[6:44, 0:22] = 1  # x -15.75..21.75 clipped to 0..21.75, y 6.25..43.75
    assert torch.equal(masks.region(64 * 64)[0, 0].view(64, 64), expected)
    control = item["control"].render()  # no person: the circle at the visible part's centre
    assert tuple(control[25, 9]) == SLOT_COLORS[0]


def test_collate_draws_each_control_and_pads_each_crop_in_the_batch(samples):
    """collate writes per-sample parts straight into the batch tensors: each control image
    equals its own rendering, crops fill their slots and leave the rest 0."""
    view, transform = InstantFamilyView(N, float_batches=False), ResizeCrop(64, flip_prob=0.5)
    items = [view(transform(s, torch.Generator().manual_seed(i)), torch.Generator())
             for i, s in enumerate(list(samples.values())[:4])]
    batch = view.collate(items)
    for i, item in enumerate(items):
        assert np.array_equal(batch["control"][i].permute(1, 2, 0).numpy(),
                              item["control"].render())
        n = len(item["face_crops"])
        assert torch.equal(batch["face_crops"][i, :n], item["face_crops"])
        assert not batch["face_crops"][i, n:].any() and batch["face_valid"][i].sum() == n
        assert np.array_equal(batch["pixel_values"][i].permute(1, 2, 0).numpy(),
                              item["pixel_values"])  # a flipped image mirrored back by the copy
    assert {item["pixel_values"].strides[1] < 0 for item in items} == {True, False}


def test_no_faces_and_faceless_people_pass_through():
    people = pose_template(2, (40, 60))
    people[1].face = None
    empty = Sample(key="empty", image=np.zeros((40, 60, 3), np.uint8), caption="a wall",
                   boxes=np.zeros((0, 4), np.float32), landmarks=np.zeros((0, 5, 2), np.float32),
                   scores=np.zeros(0, np.float32), crops=np.zeros((0, 3, 160, 160), np.uint8),
                   people=people, face_person=np.zeros(0, np.int64))
    out = ResizeCrop(32, random_crop=True, flip_prob=1.0)(validate(empty), torch.Generator())
    assert out.people[1].face is None and out.people[0].face.shape == (70, 3)
    item = InstantFamilyView(N)(out, torch.Generator())
    assert not item["face_valid"].any() and item["control"].render().max() > 0  # skeletons only
    assert (InstantFamilyView(N).collate([item])["face_crops"] == 0).all()  # empty slots: 0.0


def test_batches_are_collated_into_shared_memory_in_workers(samples):
    """In a DataLoader worker, collate writes into shared memory (as default_collate does),
    so the worker's queue passes a handle instead of copying the batch; in the main process
    batches are ordinary tensors."""
    from torch.utils.data import DataLoader

    view, transform = InstantFamilyView(N, float_batches=False), ResizeCrop(64)
    items = [view(transform(s, torch.Generator()), torch.Generator()) for s in samples.values()]

    def where(batch: list[dict]) -> dict:
        out = view.collate(batch)
        return {k: torch.tensor(out[k].is_shared()) for k in ("pixel_values", "control",
                                                               "face_crops")}

    assert not any(where(items[:2]).values())  # main process
    in_worker = next(iter(DataLoader(items, batch_size=2, num_workers=1, collate_fn=where)))
    assert all(bool(v) for v in in_worker.values())
