"""webapp.experiments.tryit: images reduced as the training data is, the per-process limits on
adaptations, the initialization cache, and the run page's try-it panels."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
from django.core.files.base import ContentFile
from PIL import Image, ImageDraw

from webapp.experiments import tryit


def encoded(img: Image.Image, fmt: str = "PNG", url: bool = True) -> str:
    out = io.BytesIO()
    img.save(out, format=fmt)
    text = base64.b64encode(out.getvalue()).decode()
    return f"data:image/{fmt.lower()};base64,{text}" if url else text


def truncated(img: Image.Image) -> str:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return base64.b64encode(out.getvalue()[:60]).decode()


def cross(mode: str = "L", background=255, ink=0, size: int = 112) -> Image.Image:
    img = Image.new(mode, (size, size), background)
    pen = ImageDraw.Draw(img)
    pen.line([(0, size // 2), (size, size // 2)], fill=ink, width=size // 10)
    pen.line([(size // 2, 0), (size // 2, size)], fill=ink, width=size // 10)
    return img


def test_a_drawing_becomes_a_binary_image_of_the_runs_size():
    pixels = tryit.decode_image(encoded(cross()), 28)

    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    assert set(np.unique(pixels)) == {0, 255}
    assert pixels[14, 0] == 0 and pixels[0, 14] == 0  # the cross's arms are ink
    assert pixels[3, 3] == 255  # the background is white


def test_transparent_canvas_pixels_are_background():
    img = cross("RGBA", background=(0, 0, 0, 0), ink=(0, 0, 0, 255))
    pixels = tryit.decode_image(encoded(img), 28)
    assert pixels[3, 3] == 255 and pixels[14, 0] == 0


def test_white_ink_on_black_is_turned_the_right_way_and_jpeg_is_read():
    inverted = cross(background=0, ink=255)
    expected = tryit.decode_image(encoded(cross()), 28)
    assert np.array_equal(tryit.decode_image(encoded(inverted, url=False), 28), expected)
    jpeg = tryit.decode_image(encoded(cross().convert("RGB"), "JPEG"), 28)
    assert np.mean(jpeg == expected) > 0.95


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (encoded(Image.new("L", (8, 8)), "GIF"), "Not a PNG or JPEG image."),
        ("data:image/png;base64,@@@", "The image is not valid base64."),
        ("data:image/png,plain", "Send the image base64-encoded"),
        (encoded(Image.new("L", (3000, 10))), "larger than 2048 pixels"),
        ("A" * (tryit.MAX_IMAGE_BYTES * 2), "larger than 512 KB"),
        (truncated(cross()), "damaged or truncated"),
    ],
)
def test_a_bad_image_is_refused_with_a_reason(text, message):
    with pytest.raises(ValueError, match=message):
        tryit.decode_image(text, 28)


def test_slots_limit_each_user_and_the_process():
    slots = tryit.Slots(per_user=1, total=2)
    with slots.take(1):
        with pytest.raises(tryit.Busy, match="already have 1"), slots.take(1):
            pass
        with (
            slots.take(2),
            pytest.raises(tryit.Busy, match="server is busy"),
            slots.take(3),
        ):
            pass
    with slots.take(1), slots.take(3):  # every slot was given back
        pass


def test_a_failed_adaptation_gives_its_slot_back():
    slots = tryit.Slots(per_user=1, total=1)
    with pytest.raises(RuntimeError), slots.take(1):
        raise RuntimeError("adaptation failed")
    with slots.take(1):
        pass


def test_slots_are_safe_across_threads():
    slots = tryit.Slots(per_user=1, total=4)
    taken, refused = [], []
    barrier = threading.Barrier(8)

    def attempt():
        barrier.wait()
        try:
            with slots.take(7):
                taken.append(1)
                barrier_done.wait()
        except tryit.Busy:
            refused.append(1)
            barrier_done.wait()

    barrier_done = threading.Barrier(8)
    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert (len(taken), len(refused)) == (1, 7)


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    tryit.stored_weights.cache_clear()
    yield tmp_path
    tryit.stored_weights.cache_clear()


def store_weights(run):
    import torch
    from safetensors.torch import save

    data = save({"w": torch.arange(3, dtype=torch.float32)})
    run.initialization.save("initialization.safetensors", ContentFile(data), save=True)
    return run


def test_the_initialization_is_read_from_storage_once(owner, make_run, media):
    run = store_weights(make_run(owner))

    first = tryit.stored_weights(run.initialization.name)
    (media / run.initialization.name).unlink()  # a second read would fail now
    again = tryit.stored_weights(run.initialization.name)

    assert again is first and first["w"].tolist() == [0.0, 1.0, 2.0]
    assert tryit.stored_weights.cache_info().hits == 1


def test_a_run_without_its_weights_in_storage_cannot_be_tried(owner, make_run, media):
    run = make_run(owner)
    run.initialization.name = "runs/gone.safetensors"
    config = tryit.check_tryable(run, "omniglot")
    with pytest.raises(tryit.NotTryable, match="missing from storage"):
        tryit._networks(run, config)


def test_the_run_page_offers_the_panel_of_its_kind(client, owner, make_run, media):
    from metatrain.config import preset

    client.force_login(owner)
    sine = store_weights(make_run(owner, dataset="sine", config=preset("sine").to_dict()))
    omniglot = store_weights(make_run(owner))
    queued = make_run(owner, status="queued")
    no_weights = make_run(owner)

    sine_page = client.get(f"/runs/{sine.pk}/").content.decode()
    assert 'id="tryit-sine"' in sine_page and 'id="tryit-omniglot"' not in sine_page
    assert f'data-try-url="/api/runs/{sine.pk}/try/sine"' in sine_page
    assert "js/tryit.js" in sine_page
    omniglot_page = client.get(f"/runs/{omniglot.pk}/").content.decode()
    assert 'id="tryit-omniglot"' in omniglot_page and 'data-ways="5"' in omniglot_page
    for run in (queued, no_weights):
        assert "tryit" not in client.get(f"/runs/{run.pk}/").content.decode()


def test_a_damaged_or_foreign_initialization_cannot_be_tried(owner, make_run, media):
    damaged = make_run(owner)
    damaged.initialization.save("initialization.safetensors", ContentFile(b"weights"))
    foreign = store_weights(make_run(owner))  # a state dict of another network
    for run, reason in ((damaged, "cannot be read"), (foreign, "does not fit")):
        with pytest.raises(tryit.NotTryable, match=reason):
            tryit._networks(run, tryit.check_tryable(run, "omniglot"))
