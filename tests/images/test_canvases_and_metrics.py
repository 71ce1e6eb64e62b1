"""randpos.images.data and randpos.images.metrics: bundled digits, procedural shapes, crops, and
sample-quality metrics checked against closed forms and brute-force oracles.

Every test leaves torch's global RNG untouched (autouse fixture) and stays at a few seconds: tiny
batches, sides <= 32, feature nets trained for a handful of steps (the accuracy check of the
default recipe is marked slow).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numerics import EPS32, EPS64, f64_atol

from randpos.core.seeding import make_generator
from randpos.images import metrics
from randpos.images.data import (
    CANVAS_MODES,
    DATASETS,
    IDENTITY_CROP,
    SHAPE_CLASSES,
    digit_canvases,
    fixed_eval_set,
    load_digits_split,
    random_resize_crop,
    sample_images,
    shape_images,
    shift_augment,
)
from randpos.images.metrics import (
    FeatureNet,
    classifier_accuracy,
    frechet_distance,
    kernel_inception_distance,
    pixel_stats,
    radial_spectrum,
    sample_metrics,
    spectrum_distance,
    train_feature_net,
)


@pytest.fixture(autouse=True)
def global_rng_untouched():
    state = torch.random.get_rng_state()
    yield
    assert torch.equal(torch.random.get_rng_state(), state), "the global RNG was used"


def gen(seed: int = 0, stream: str = "test") -> torch.Generator:
    return make_generator(seed, stream)


# --- digits ------------------------------------------------------------------------------------


def _sorted_rows(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    rows = np.concatenate([images.reshape(len(images), -1), labels[:, None]], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


def test_digits_split_sizes_range_stratification_and_disjointness():
    from sklearn.datasets import load_digits

    split = load_digits_split(0)
    assert split.train_images.shape == (1437, 8, 8) and split.test_images.shape == (360, 8, 8)
    assert split.train_labels.shape == (1437,) and split.test_labels.shape == (360,)
    assert split.train_images.dtype == torch.float32 and split.train_labels.dtype == torch.long
    for images in (split.train_images, split.test_images):
        assert images.min() >= 0 and images.max() == 1
        assert torch.equal(images * 16, (images * 16).round())  # sklearn's 0..16 levels / 16
    # stratified: each class's share of the test split matches the full set's to one image
    full = load_digits()
    for c in range(10):
        expected = 360 * (full.target == c).mean()
        assert abs((split.test_labels == c).sum().item() - expected) <= 1
    # train + test is exactly the full data set (as a multiset): disjoint and complete
    both = _sorted_rows(
        torch.cat([split.train_images, split.test_images]).numpy() * 16,
        torch.cat([split.train_labels, split.test_labels]).numpy(),
    )
    assert np.array_equal(both, _sorted_rows(full.images, full.target))


def test_digits_split_is_fixed_by_its_seed():
    a = load_digits_split.__wrapped__(0)  # uncached: recomputed from scratch
    b = load_digits_split(0)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    c = load_digits_split(1)
    assert not torch.equal(a.test_labels, c.test_labels)
    assert load_digits_split(0) is load_digits_split(0)  # cached


def test_resize_canvases_shape_range_and_identity_at_8():
    images = load_digits_split(0).test_images[:6]
    for side in (2, 5, 8, 16, 32):
        out = digit_canvases(images, side)
        assert out.shape == (6, 1, side, side) and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1
    # exact: an antialiased bilinear resize to the same size has weights 1 and 0
    assert torch.equal(digit_canvases(images, 8), images[:, None])
    # area-preserving to first order: upsampling keeps the mean intensity
    big = digit_canvases(images, 32)
    assert torch.allclose(big.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2)), atol=0.02)


def test_paste_places_the_digit_unresized_inside_the_canvas():
    images = load_digits_split(0).train_images[:12]
    side = 13
    out = digit_canvases(images, side, "paste", gen())
    assert out.shape == (12, 1, side, side)
    # exact: digits are multiples of 1/16 summing to < 64, so any float32 sum order is exact
    assert torch.equal(out.sum(dim=(1, 2, 3)), images.sum(dim=(1, 2)))
    tops = set()
    for b in range(12):
        # brute force: exactly one placement reproduces the canvas (digits are not all zero)
        hits = []
        for top in range(side - 7):
            for left in range(side - 7):
                canvas = torch.zeros(side, side)
                canvas[top : top + 8, left : left + 8] = images[b]
                if torch.equal(canvas, out[b, 0]):
                    hits.append((top, left))
        assert len(hits) >= 1
        tops.add(hits[0][0])
    assert len(tops) > 1  # the placement is random, not fixed
    # reproducible from the generator
    assert torch.equal(out, digit_canvases(images, side, "paste", gen()))
    assert torch.equal(digit_canvases(images, 8, "paste", gen()), images[:, None])


def test_canvas_arguments_are_checked():
    images = torch.zeros(2, 8, 8)
    with pytest.raises(ValueError, match="mode"):
        digit_canvases(images, 8, "stretch")
    with pytest.raises(ValueError, match="generator"):
        digit_canvases(images, 8, "paste")
    with pytest.raises(ValueError, match="side"):
        digit_canvases(images, 7, "paste", gen())
    with pytest.raises(ValueError, match="side"):
        digit_canvases(images, 1)
    with pytest.raises(ValueError, match="images"):
        digit_canvases(images[:, None], 8)
    assert CANVAS_MODES == ("resize", "paste")


# --- procedural shapes -------------------------------------------------------------------------


def test_shapes_shape_range_labels_and_reproducibility():
    images, labels = shape_images(64, 12, gen())
    assert images.shape == (64, 1, 12, 12) and images.dtype == torch.float32
    assert labels.shape == (64,) and labels.dtype == torch.long
    assert images.min() >= 0 and images.max() <= 1
    assert set(labels.tolist()) == set(range(len(SHAPE_CLASSES)))
    again = shape_images(64, 12, gen())
    assert torch.equal(images, again[0]) and torch.equal(labels, again[1])
    # every canvas holds its shape (the centre is drawn so that the shape fits)
    assert (images.sum(dim=(1, 2, 3)) > 0).all()


def test_shapes_are_one_scene_distribution_at_every_side():
    # the same generator state draws the same scenes at every S: area-downsampling the S = 32
    # rendering to 8 matches the S = 8 rendering up to antialiasing error (a quarter pixel of
    # sampling at S = 8: edges move by at most 1/8 px, so per-pixel errors stay well under 1)
    small, labels8 = shape_images(200, 8, gen())
    big, labels32 = shape_images(200, 32, gen())
    assert torch.equal(labels8, labels32)
    error = F.avg_pool2d(big, 4) - small  # (200, 1, 8, 8)
    assert error.abs().max() < 0.3 and error.abs().mean() < 0.02
    assert error.mean(dim=(1, 2, 3)).abs().mean() < 0.01  # per-image area
    # and the ink statistics agree across sides for fresh draws
    stats = {}
    for i, side in enumerate((8, 12, 16, 24)):
        images, _ = shape_images(600, side, gen(i, "sides"))
        stats[side] = (images.mean().item(), (images > 0.5).double().mean().item())
    mean_inks = [s[0] for s in stats.values()]
    fractions = [s[1] for s in stats.values()]
    assert max(mean_inks) - min(mean_inks) < 0.03
    assert max(fractions) - min(fractions) < 0.03


def test_shape_areas_match_their_closed_forms():
    # r ~ U[a, b]: E[r^2] = (b^3 - a^3) / (3 (b - a)); areas in units of the side squared
    a, b = 0.2, 0.4
    er2 = (b**3 - a**3) / (3 * (b - a))
    expected = {
        "disc": math.pi * er2,
        "square": 4 * er2,
        "triangle": 2 * er2,  # base 2r, height 2r
        "cross": (8 / 3 - 4 / 9) * er2,  # two 2r x 2r/3 bars minus their square overlap
    }
    images, labels = shape_images(2000, 16, gen(0, "areas"))
    area = images.mean(dim=(1, 2, 3))
    for k, name in enumerate(SHAPE_CLASSES):
        assert abs(area[labels == k].mean().item() - expected[name]) < 0.015, name


def test_shape_arguments_are_checked():
    with pytest.raises(ValueError, match="batch_size"):
        shape_images(0, 8, gen())
    with pytest.raises(ValueError, match="side"):
        shape_images(2, 1, gen())
    with pytest.raises(ValueError, match="generator"):
        shape_images(2, 8, None)


# --- sampling and evaluation sets --------------------------------------------------------------


def test_sample_images_digits_random_and_indexed():
    images, labels = sample_images("digits", "train", 16, 12, gen())
    assert images.shape == (16, 1, 12, 12) and labels.shape == (16,)
    again = sample_images("digits", "train", 16, 12, gen())
    assert torch.equal(images, again[0]) and torch.equal(labels, again[1])
    split = load_digits_split(0)
    index = torch.tensor([3, 0, 359])
    images, labels = sample_images("digits", "test", 3, 16, None, index=index)
    assert torch.equal(images, digit_canvases(split.test_images[index], 16))
    assert torch.equal(labels, split.test_labels[index])
    pasted, _ = sample_images("digits", "test", 3, 16, gen(), mode="paste", index=index)
    # exact: sums of multiples of 1/16 below 64 (see test_paste_places_the_digit...)
    assert torch.equal(pasted.sum(dim=(1, 2, 3)), split.test_images[index].sum(dim=(1, 2)))


def test_sample_images_shapes_and_argument_checks():
    images, labels = sample_images("shapes", "test", 8, 10, gen())
    expected = shape_images(8, 10, gen())
    assert torch.equal(images, expected[0]) and torch.equal(labels, expected[1])
    with pytest.raises(ValueError, match="dataset"):
        sample_images("mnist", "train", 2, 8, gen())
    with pytest.raises(ValueError, match="split"):
        sample_images("digits", "val", 2, 8, gen())
    with pytest.raises(ValueError, match="index"):
        sample_images("shapes", "train", 2, 8, gen(), index=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="index"):
        sample_images("digits", "test", 2, 8, None, index=torch.tensor([0, 360]))
    with pytest.raises(ValueError, match="index"):
        sample_images("digits", "test", 3, 8, None, index=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="generator"):
        sample_images("digits", "test", 2, 8, None)
    assert DATASETS == ("digits", "shapes")


def test_fixed_eval_sets_are_fixed():
    images, labels = fixed_eval_set("digits", 12, 50, 0)
    split = load_digits_split(0)
    assert torch.equal(images, digit_canvases(split.test_images[:50], 12))
    assert torch.equal(labels, split.test_labels[:50])
    assert len(fixed_eval_set("digits", 8, 1000, 0)[1]) == 360
    a = fixed_eval_set("shapes", 16, 30, 3)
    b = fixed_eval_set("shapes", 16, 30, 3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(fixed_eval_set("shapes", 8, 30, 3)[1], a[1])  # same scenes at every S
    assert not torch.equal(fixed_eval_set("shapes", 16, 30, 4)[0], a[0])
    with pytest.raises(ValueError, match="count"):
        fixed_eval_set("digits", 8, 0)


# --- augmentation ------------------------------------------------------------------------------


def test_resize_crop_identity_when_max_scale_is_one():
    images = torch.rand(5, 2, 12, 12, generator=gen())
    crops, cond = random_resize_crop(images, gen(), max_scale=1.0)
    assert torch.equal(crops, images)
    assert torch.equal(cond, torch.tensor([IDENTITY_CROP] * 5))
    assert IDENTITY_CROP == (0.0, 0.0, 1.0, 1.0)


def test_resize_crop_is_the_reported_region_of_the_resized_image():
    S = 10
    images = torch.rand(24, 1, S, S, generator=gen(1))
    crops, cond = random_resize_crop(images, gen(2), max_scale=2.0)
    assert crops.shape == images.shape and cond.shape == (24, 4)
    sides = set()
    for b in range(24):
        top_frac, left_frac, sh, sw = cond[b].tolist()
        assert sh == sw and 1.0 <= sh <= 2.0
        side = round(sh * S)
        top, left = round(top_frac * side), round(left_frac * side)
        assert 0 <= top <= side - S and 0 <= left <= side - S
        resized = F.interpolate(
            images[b : b + 1], size=(side, side), mode="bilinear", antialias=True
        )
        # exact: the same F.interpolate call on the same image (at side = S, where the code does
        # not resize, an antialiased bilinear resize to the same size has weights 1 and 0)
        assert torch.equal(crops[b], resized[0, :, top : top + S, left : left + S])
        sides.add(side)
    assert len(sides) > 3  # the scale is drawn per sample
    again = random_resize_crop(images, gen(2), max_scale=2.0)
    assert torch.equal(again[0], crops) and torch.equal(again[1], cond)
    with pytest.raises(ValueError, match="max_scale"):
        random_resize_crop(images, gen(), max_scale=0.5)


def test_shift_augment_is_a_zero_filled_integer_shift():
    images = torch.rand(40, 1, 6, 6, generator=gen()) + 0.1  # no zeros inside
    assert torch.equal(shift_augment(images, gen(), max_shift=0), images)
    out = shift_augment(images, gen(), max_shift=1)
    seen = set()
    for b in range(40):
        matches = []
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shifted = torch.zeros(6, 6)
                src = images[b, 0]
                ys, yd = (
                    (slice(0, 6 - dy), slice(dy, 6))
                    if dy >= 0
                    else (slice(-dy, 6), slice(0, 6 + dy))
                )
                xs, xd = (
                    (slice(0, 6 - dx), slice(dx, 6))
                    if dx >= 0
                    else (slice(-dx, 6), slice(0, 6 + dx))
                )
                shifted[yd, xd] = src[ys, xs]
                if torch.equal(shifted, out[b, 0]):
                    matches.append((dy, dx))
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 9  # every shift of the 3 x 3 neighbourhood occurs in 40 draws


# --- feature network ---------------------------------------------------------------------------


def test_feature_net_runs_at_any_side_and_inits_from_its_generator():
    net = FeatureNet(10, generator=gen(5))
    same = FeatureNet(10, generator=gen(5))
    other = FeatureNet(10, generator=gen(6))
    for (name, p), q, r in zip(
        net.named_parameters(), same.parameters(), other.parameters(), strict=True
    ):
        assert torch.equal(p, q), name
        if p.dim() > 1:
            assert not torch.equal(p, r), name
    for side in (8, 12, 33):
        x = torch.rand(3, 1, side, side, generator=gen())
        assert net.features(x).shape == (3, metrics.FEATURE_DIM)
        assert net(x).shape == (3, 10)
    assert FeatureNet(4, stem_stride=2)(torch.rand(2, 1, 8, 8, generator=gen())).shape == (2, 4)
    with pytest.raises(ValueError, match="images"):
        net(torch.zeros(1, 1, 7, 7))
    with pytest.raises(ValueError, match="stem_stride"):
        FeatureNet(10, stem_stride=3)


def _state(net: FeatureNet) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_train_feature_net_is_reproducible_and_caches(tmp_path, monkeypatch):
    net = train_feature_net("digits", 8, seed=3, steps=3, cache_dir=tmp_path)
    assert not net.training and 0.0 <= net.heldout_accuracy <= 1.0
    images, labels = fixed_eval_set("digits", 8, 1000, 3)
    assert net.heldout_accuracy == classifier_accuracy(net, images, labels)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    from safetensors import safe_open

    with safe_open(str(files[0]), framework="pt") as f:
        meta = f.metadata()
    assert float(meta["heldout_accuracy"]) == net.heldout_accuracy
    assert meta["dataset"] == "digits" and meta["side"] == "8" and meta["steps"] == "3"

    # same seed, same net (trained again from scratch, no cache)
    again = train_feature_net("digits", 8, seed=3, steps=3)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in _state(net).items())

    # a second call with the cache loads the file: no training data is drawn at all
    def no_training(*args, **kwargs):
        raise AssertionError("retrained instead of loading the cache")

    monkeypatch.setattr(metrics, "shift_augment", no_training)
    loaded = train_feature_net("digits", 8, seed=3, steps=3, cache_dir=str(tmp_path))
    monkeypatch.undo()
    x = torch.rand(6, 1, 8, 8, generator=gen())
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert loaded.heldout_accuracy == net.heldout_accuracy and not loaded.training

    # another seed is another net and another file
    other = train_feature_net("digits", 8, seed=4, steps=1, cache_dir=tmp_path)
    assert not torch.equal(other.conv1.weight, net.conv1.weight)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_train_feature_net_on_shapes_at_a_large_side():
    net = train_feature_net("shapes", 24, seed=0, steps=2)
    assert net.stem_stride == 2 and net.num_classes == len(SHAPE_CLASSES)
    assert 0.0 <= net.heldout_accuracy <= 1.0
    with pytest.raises(ValueError, match="dataset"):
        train_feature_net("mnist", 8, steps=1)
    with pytest.raises(ValueError, match="side"):
        train_feature_net("digits", 4, steps=1)
    with pytest.raises(ValueError, match="steps"):
        train_feature_net("digits", 8, steps=0)


@pytest.mark.slow
def test_default_feature_net_classifies_held_out_digits_at_16():
    net = train_feature_net("digits", 16, seed=0)
    assert net.heldout_accuracy > 0.9


# --- Frechet distance --------------------------------------------------------------------------


def _with_moments(n: int, mean: np.ndarray, factor: np.ndarray, seed: int) -> np.ndarray:
    """n samples whose empirical mean is ``mean`` and np.cov is factor @ factor.T exactly."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # np.cov(z) = I
    return mean + z @ factor.T


def _sqrtm_psd(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fd_atol(n: int, mu_a, mu_b, ca, cb) -> float:
    """float64 FD of samples built with given moments against the closed form: the samples'
    construction (a whitening and a product), the covariances (sums of n terms), sqrtm and the
    traces, of terms of size ||mu_a - mu_b||^2 + tr Ca + tr Cb: EPS64 * 4 * sqrt(n) * that."""
    terms = float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb))
    return f64_atol(terms, depth=4, width=n)


@pytest.mark.numerics
def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    d = 5
    rng = np.random.default_rng(0)
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    var_a, var_b = rng.uniform(0.2, 3.0, d), rng.uniform(0.2, 3.0, d)
    a = _with_moments(300, mu_a, np.diag(np.sqrt(var_a)), 1)
    b = _with_moments(200, mu_b, np.diag(np.sqrt(var_b)), 2)
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    atol = fd_atol(300, mu_a, mu_b, np.diag(var_a), np.diag(var_b))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0, abs=atol)
    # torch tensors (float32) are accepted and computed in float64: exactly the float64 value
    # of the rounded samples
    a32 = torch.tensor(a, dtype=torch.float32)
    fd32 = frechet_distance(a32, torch.tensor(b))
    assert fd32 == frechet_distance(a32.double().numpy(), b)
    # rounding a to float32 moves each entry by <= EPS32 / 2 of it, so (first order) a's means
    # by <= EPS32 / 2 rms_k and its standard deviations by <= EPS32 / 2 rms_k sqrt(n / (n - 1))
    # (rms_k = the root mean square of a's column k), and FD = sum_k (mu_a - mu_b)_k^2 +
    # (sd_a - sd_b)_k^2 by <= EPS32 sum_k (|mu_a - mu_b| + |sd_a - sd_b|)_k rms_k sqrt(n / (n - 1))
    rms = np.sqrt((a**2).mean(0))
    gaps = np.abs(mu_a - mu_b) + np.abs(np.sqrt(var_a) - np.sqrt(var_b))
    moved = EPS32 * float((gaps * rms).sum()) * math.sqrt(300 / 299)
    assert fd32 == pytest.approx(expected, rel=0, abs=moved + atol)


def self_fd_atol(c: np.ndarray) -> float:
    """|FD(a, a)| = |2 tr C - 2 tr sqrtm(C C)| in float64: C C is off by about EPS64 sqrt(d)
    lambda_max^2 (dot products of length d), which moves an eigenvalue lambda of its square root
    by that / (2 lambda), at most EPS64 sqrt(d) kappa lambda_max / 2 (kappa = cond C); over the
    d eigenvalues and with the formula's factor 2: EPS64 d^1.5 kappa lambda_max <= EPS64 d^1.5
    kappa tr C."""
    eig = np.linalg.eigvalsh(c)
    assert eig.min() > 0  # a singular C would take frechet_distance's regularised branch
    d = len(c)
    return EPS64 * d**1.5 * float(eig.max() / eig.min()) * float(np.trace(c))


@pytest.mark.numerics
def test_frechet_distance_general_covariances_identity_and_symmetry():
    d = 4
    rng = np.random.default_rng(3)
    fa, fb = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    a = _with_moments(100, mu_a, fa, 4)
    b = _with_moments(150, mu_b, fb, 5)
    ca, cb = fa @ fa.T, fb @ fb.T
    root = _sqrtm_psd(ca)
    # Tr sqrt(Ca Cb) = Tr sqrt(Ca^1/2 Cb Ca^1/2), the symmetric form
    expected = (
        ((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb) - 2 * np.trace(_sqrtm_psd(root @ cb @ root))
    )
    atol = fd_atol(150, mu_a, mu_b, ca, cb)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0, abs=atol)
    # sqrtm(Cb Ca) instead of sqrtm(Ca Cb): another computation, each side within atol
    assert frechet_distance(b, a) == pytest.approx(frechet_distance(a, b), rel=0, abs=2 * atol)
    assert abs(frechet_distance(a, a)) <= self_fd_atol(np.cov(a, rowvar=False))
    with pytest.raises(ValueError, match="b"):
        frechet_distance(a, b[:, :3])


# --- kernel inception distance -----------------------------------------------------------------


def _kid_brute_force(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]

    def k(p, q):
        return (sum(pi * qi for pi, qi in zip(p, q, strict=True)) / d + 1.0) ** 3

    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return sxx + syy - 2 * sxy


def kid_atol(x: np.ndarray, y: np.ndarray, size: int) -> float:
    """float64 KID, matrix products against Python sums: the dot products (length d), the cube
    and the means (the longest over size^2 pairs) of kernel values up to their largest:
    EPS64 * 3 * sqrt(size^2) * max|k|."""
    both = np.concatenate([x, y])
    largest = float(np.abs((both @ both.T / x.shape[1] + 1.0) ** 3).max())
    return f64_atol(largest, depth=3, width=size * size)


@pytest.mark.numerics
def test_kid_equals_the_brute_force_unbiased_estimate():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 3)), rng.normal(0.5, 1.2, size=(9, 3))
    got = kernel_inception_distance(x, y, subsets=1, subset_size=9)
    assert got == pytest.approx(_kid_brute_force(x, y), rel=0, abs=kid_atol(x, y, 9))
    # subsets of a larger set: the mean of brute-force estimates on the same subsets
    big_x, big_y = rng.normal(size=(12, 3)), rng.normal(size=(15, 3))
    g1, g2 = gen(7), gen(7)
    expected = np.mean(
        [
            _kid_brute_force(
                big_x[torch.randperm(12, generator=g2)[:6].numpy()],
                big_y[torch.randperm(15, generator=g2)[:6].numpy()],
            )
            for _ in range(3)
        ]
    )
    got = kernel_inception_distance(big_x, big_y, subsets=3, subset_size=6, generator=g1)
    assert got == pytest.approx(expected, rel=0, abs=kid_atol(big_x, big_y, 6))


def test_kid_is_unbiased_for_one_distribution_and_positive_for_shifted_ones():
    rng = np.random.default_rng(1)
    estimates = [
        kernel_inception_distance(rng.normal(size=(20, 4)), rng.normal(size=(20, 4)), subsets=1)
        for _ in range(300)
    ]
    mean, se = np.mean(estimates), np.std(estimates) / np.sqrt(len(estimates))
    assert abs(mean) < 4 * se
    same = kernel_inception_distance(rng.normal(size=(400, 4)), rng.normal(size=(400, 4)))
    shifted = kernel_inception_distance(rng.normal(size=(400, 4)), rng.normal(1, 1, (400, 4)))
    assert shifted > 0.1 and shifted > 20 * abs(same)
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(rng.normal(size=(5, 2)), rng.normal(size=(5, 2)), subset_size=6)


# --- pixel statistics --------------------------------------------------------------------------


@pytest.mark.numerics
def test_pixel_stats_on_hand_made_images():
    two = torch.zeros(1, 1, 8, 8)
    two[0, 0, 1:3, 1:3] = 1.0  # blob 1
    two[0, 0, 5:7, 4:8] = 0.8  # blob 2, separated by empty rows
    diagonal = torch.zeros(1, 1, 8, 8)
    diagonal[0, 0, [0, 1, 2], [0, 1, 2]] = 1.0  # touching only at corners: one 8-connected stroke
    diagonal[0, 0, 7, 7] = 0.4  # below the ink threshold: not a component
    stats = pixel_stats(two)
    assert stats["components"] == 2
    assert stats["ink_fraction"] == 12 / 64  # exact: a count over 64
    # float32's 0.8 is 0.8 to EPS32 / 2 relative; the float64 mean adds nothing of that size
    mean_ink = (4 * 1.0 + 8 * 0.8) / 64
    assert stats["mean_ink"] == pytest.approx(mean_ink, rel=0, abs=EPS32 * mean_ink)
    assert pixel_stats(diagonal)["components"] == 1
    both = pixel_stats(torch.cat([two, diagonal]))
    assert both["components"] == 1.5
    assert pixel_stats(torch.zeros(2, 1, 8, 8))["components"] == 0
    with pytest.raises(ValueError, match="images"):
        pixel_stats(torch.zeros(2, 8, 8))


@pytest.mark.numerics
def test_radial_spectrum_locates_a_pure_frequency():
    S = 16
    bins = S // 2 + 1
    # float64 images (the spectrum is computed in float64): the power off the peak is rounding
    # squared, ~EPS64^2, and normalising (bins divisions, a sum of bins terms <= 1) rounds by
    # <= (bins + 1) EPS64
    atol = (bins + 1) * EPS64
    x = torch.arange(S, dtype=torch.float64)
    for k in (1, 3, 8):
        wave = 0.5 + 0.5 * torch.cos(2 * math.pi * k * x / S)  # k cycles per image along x
        images = wave.expand(S, S)[None, None]
        spectrum = radial_spectrum(images)
        assert spectrum.shape == (bins,)
        assert spectrum.sum().item() == pytest.approx(1.0, rel=0, abs=atol)
        assert spectrum.argmax().item() == k
        assert spectrum[k].item() == pytest.approx(1.0, rel=0, abs=atol)
    # exact: a constant float32 image minus its mean (a sum of 256 equal values, exact in
    # float64) is 0, no power at all, hence the flat fallback 1 / bins
    flat = radial_spectrum(torch.full((2, 1, S, S), 0.3))
    assert torch.equal(flat, torch.full_like(flat, 1 / bins))


def test_spectrum_distance_properties():
    a, _ = shape_images(20, 16, gen(0))
    b = torch.rand(20, 1, 16, 16, generator=gen(1))
    # exact, all three: the same spectra computed the same way, |p - q| = |q - p| in IEEE
    # arithmetic, and the same sum
    assert spectrum_distance(a, a) == 0.0
    d = spectrum_distance(a, b)
    assert 0 < d <= 2 and d == spectrum_distance(b, a)
    assert d == spectrum_distance(radial_spectrum(a), radial_spectrum(b))
    with pytest.raises(ValueError, match="side"):
        spectrum_distance(a, torch.rand(2, 1, 8, 8, generator=gen()))


# --- all metrics of one generated set ----------------------------------------------------------


@pytest.mark.numerics
def test_sample_metrics_of_the_real_set_against_itself_and_a_corrupted_one():
    net = FeatureNet(len(SHAPE_CLASSES), generator=gen())
    real, labels = shape_images(120, 12, gen(0))
    out = sample_metrics(real, labels, real, net)
    keys = {"accuracy", "fd", "kid", "mean_ink", "ink_fraction", "components", "ink_gap"}
    assert keys | {"components_gap", "spectrum_distance", "ink_fraction_gap"} == set(out)
    assert all(isinstance(v, float) for v in out.values())
    assert out["accuracy"] == classifier_accuracy(net, real, labels)
    with torch.no_grad():  # FD of a set with itself: ~0 up to sqrtm's rounding
        features = net.features(real).double().numpy()
    assert abs(out["fd"]) <= self_fd_atol(np.cov(features, rowvar=False))
    assert out["ink_gap"] == 0 and out["components_gap"] == 0
    assert out["spectrum_distance"] == 0
    assert out["components"] == pixel_stats(real)["components"]

    # duplicated objects: two half-size copies side by side
    half = F.interpolate(real, scale_factor=0.5, mode="bilinear", antialias=True)
    doubled = torch.zeros_like(real)
    doubled[..., 3:9, 0:6] = half
    doubled[..., 3:9, 6:12] = half
    worse = sample_metrics(doubled.clamp(0, 1), labels, real, net, generator=gen(1))
    assert worse["fd"] > 0 and worse["components"] > out["components"]
    assert worse["components_gap"] > 0.5
    with pytest.raises(ValueError, match="generated"):
        sample_metrics(real * 2 - 0.5, labels, real, net)
    with pytest.raises(ValueError, match="real"):
        sample_metrics(real, labels, real[..., :8, :8], net)
    with pytest.raises(ValueError, match="labels"):
        sample_metrics(real, labels[:3], real, net)
