"""Dataset readers on tiny fixtures created in tmp_path (no real data needed)."""
import cv2
import numpy as np
import pytest

from models.core.types import BBox, InspectionSample
from models.data.datasets import (MAGNETIC_TILE_CLASSES, NEU_CLASSES, DatasetError, image_label, open_dataset,
                                  rle_decode, rle_encode)


def _img(h=32, w=48, v=100):
    im = np.full((h, w), v, np.uint8)
    im[5:10, 6:12] = 30
    return im


def _mask(h=32, w=48, value=255):
    m = np.zeros((h, w), np.uint8)
    m[5:10, 6:12] = value
    return m


def _check(s: InspectionSample, cid: int, names):
    assert isinstance(s, InspectionSample) and s.image.dtype == np.uint8
    assert s.class_names == tuple(names)
    assert s.boxes == ((BBox(6, 5, 12, 10), cid),)
    assert set(np.unique(s.class_mask)) == {0, cid}
    assert (s.instance_mask == 1).sum() == 30


def test_plain(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "classes.txt").write_text("scratch\npit\n")
    cv2.imwrite(str(tmp_path / "images" / "a.png"), _img())
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), _mask(value=2))
    cv2.imwrite(str(tmp_path / "images" / "b.png"), _img())
    out = list(open_dataset("plain", str(tmp_path)))
    _check(out[0], 2, ["scratch", "pit"])
    assert out[1].boxes == () and out[1].class_mask.max() == 0


def test_dagm_both_layouts(tmp_path):
    for cls, sub, lab in (("Class1", "Train", "Label"), ("class2", "", "true_masks")):
        d = tmp_path / cls / sub if sub else tmp_path / cls
        (d / lab).mkdir(parents=True)
        cv2.imwrite(str(d / "0001.PNG"), _img())
        cv2.imwrite(str(d / lab / "0001_label.PNG"), _mask())
        cv2.imwrite(str(d / "0002.PNG"), _img())
    out = list(open_dataset("dagm", str(tmp_path)))
    assert len(out) == 4
    with_defect = [s for s in out if s.boxes]
    assert len(with_defect) == 2
    _check(with_defect[0], 1, ["class1", "class2"])
    _check(with_defect[1], 2, ["class1", "class2"])


def test_neu_det_and_cls(tmp_path):
    det = tmp_path / "det"
    (det / "IMAGES").mkdir(parents=True)
    (det / "ANNOTATIONS").mkdir()
    rgb = np.repeat(_img()[:, :, None], 3, 2)
    cv2.imwrite(str(det / "IMAGES" / "scratches_1.jpg"), rgb)
    (det / "ANNOTATIONS" / "scratches_1.xml").write_text(
        "<annotation><filename>scratches_1.jpg</filename><object><name>scratches</name>"
        "<bndbox><xmin>7</xmin><ymin>6</ymin><xmax>12</xmax><ymax>10</ymax></bndbox></object>"
        "<object><name>pitted_surface</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax><ymax>4</ymax>"
        "</bndbox></object></annotation>")
    (s,) = list(open_dataset("neu", str(det)))
    assert s.image.ndim == 2  # grey stored as RGB is read as grey
    assert s.class_mask is None and s.class_names == NEU_CLASSES
    assert s.boxes == ((BBox(6, 5, 12, 10), 6), (BBox(0, 0, 4, 4), 4))
    cls = tmp_path / "cls"
    (cls / "inclusion").mkdir(parents=True)
    cv2.imwrite(str(cls / "inclusion" / "x.bmp"), _img())
    cv2.imwrite(str(cls / "Pa_12.bmp"), _img())
    out = list(open_dataset("neu", str(cls)))
    assert sorted(s.boxes[0][1] for s in out) == [2, 3]
    assert out[0].boxes[0][0] == BBox(0, 0, 48, 32)


def test_rle_round_trip_and_severstal(tmp_path):
    m = _mask() > 0
    rle = rle_encode(m)
    assert np.array_equal(rle_decode(rle, m.shape), m)
    assert rle.split()[:2] == [str(6 * 32 + 5 + 1), "5"]  # column-major, 1-based
    (tmp_path / "train_images").mkdir()
    cv2.imwrite(str(tmp_path / "train_images" / "a.jpg"), _img())
    cv2.imwrite(str(tmp_path / "train_images" / "b.jpg"), _img())
    (tmp_path / "train.csv").write_text(f"ImageId,ClassId,EncodedPixels\na.jpg,3,{rle}\n")
    out = list(open_dataset("severstal", str(tmp_path)))
    _check(out[0], 3, ["class_1", "class_2", "class_3", "class_4"])
    assert out[1].boxes == ()


def test_mvtec(tmp_path):
    c = tmp_path / "bottle"
    for d in ("test/crack", "test/good", "ground_truth/crack"):
        (c / d).mkdir(parents=True)
    cv2.imwrite(str(c / "test/crack/000.png"), np.repeat(_img()[:, :, None], 3, 2))
    cv2.imwrite(str(c / "ground_truth/crack/000_mask.png"), _mask())
    cv2.imwrite(str(c / "test/good/000.png"), _img())
    out = list(open_dataset("mvtec", str(c)))
    _check(out[0], 1, ["crack"])
    assert out[1].boxes == ()
    root = list(open_dataset("mvtec", str(tmp_path)))
    assert root[0].class_names == ("bottle/crack",)


def test_magnetic_tile(tmp_path):
    for cls in ("MT_Crack", "MT_Free"):
        (tmp_path / cls / "Imgs").mkdir(parents=True)
        cv2.imwrite(str(tmp_path / cls / "Imgs" / "exp1.jpg"), _img())
        cv2.imwrite(str(tmp_path / cls / "Imgs" / "exp1.png"), _mask() if cls == "MT_Crack" else _mask(value=0))
    out = list(open_dataset("magnetic-tile", str(tmp_path)))
    _check(out[0], MAGNETIC_TILE_CLASSES.index("Crack") + 1, MAGNETIC_TILE_CLASSES)
    assert out[1].boxes == ()


def test_synthetic_spec_and_errors(tmp_path):
    out = list(open_dataset("synthetic", "synthetic:seed=3,n=2,size=64x64"))
    assert len(out) == 2 and out[0].image.shape == (64, 64)
    assert len(list(open_dataset("synthetic", "synthetic:seed=3,n=5", limit=2))) == 2
    with pytest.raises(DatasetError):
        open_dataset("dagm", str(tmp_path / "missing"))
    with pytest.raises(DatasetError):
        open_dataset("bogus", str(tmp_path))


def test_neu_cls_takes_the_class_from_the_file_name_even_beside_det_boxes(tmp_path):
    import cv2
    import numpy as np

    from models.data.datasets import NEU_CLASSES, open_dataset

    (tmp_path / "IMAGES").mkdir()
    (tmp_path / "ANNOTATIONS").mkdir()
    cv2.imwrite(str(tmp_path / "IMAGES" / "scratches_1.jpg"), np.full((20, 30), 90, np.uint8))
    (tmp_path / "ANNOTATIONS" / "scratches_1.xml").write_text(
        "<annotation><filename>scratches_1.jpg</filename><object><name>inclusion</name><bndbox><xmin>2</xmin>"
        "<ymin>2</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")
    det = list(open_dataset("neu", str(tmp_path)))
    cls = list(open_dataset("neu-cls", str(tmp_path)))
    assert [c for _, c in det[0].boxes] == [NEU_CLASSES.index("inclusion") + 1]
    assert [(tuple(b), c) for b, c in cls[0].boxes] == [((0, 0, 30, 20), NEU_CLASSES.index("scratches") + 1)]


def test_elpv_labels_are_image_level_with_probability_at_least_half_defective(tmp_path):
    (tmp_path / "images").mkdir()
    probs = {"cell0001.png": 1.0, "cell0002.png": 0.3333333333333333, "cell0003.png": 0.6666666666666666,
             "cell0004.png": 0.0}
    for n in probs:
        cv2.imwrite(str(tmp_path / "images" / n), np.full((30, 40), 128, np.uint8))
    (tmp_path / "labels.csv").write_text("".join(f"images/{n}  {p}    {'mono' if i % 2 else 'poly'}\n"
                                                 for i, (n, p) in enumerate(probs.items())))
    out = list(open_dataset("elpv", str(tmp_path)))
    assert [image_label(s) for s in out] == [1, 0, 1, 0]
    assert out[0].class_names == ("defect",) and out[0].boxes[0][0] == BBox(0, 0, 40, 30)
    (tmp_path / "labels.csv").write_text("images/cell0001.png\n")
    with pytest.raises(DatasetError):
        list(open_dataset("elpv", str(tmp_path)))
