from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_provider_cerebraform.exceptions import CerebraformValidationError
from airflow_provider_cerebraform.models import GenerationKind
from airflow_provider_cerebraform.validation import (
    build_submission,
    validate_literals,
    validate_request_id,
)


def test_minimal_submission_sends_only_the_prompt():
    kind, payload = build_submission("image", "a cat")
    assert kind is GenerationKind.IMAGE
    assert payload == {"prompt": "a cat"}


def test_full_video_submission():
    kind, payload = build_submission(
        "VIDEO", "a river", image_url="https://example.com/a.png", aspect_ratio="16:9", duration="10"
    )
    assert kind is GenerationKind.VIDEO
    assert payload == {
        "prompt": "a river",
        "image_url": "https://example.com/a.png",
        "aspect_ratio": "16:9",
        "duration": 10,
    }


def test_prompt_of_exactly_1000_characters_is_accepted():
    assert build_submission("image", "x" * 1000)[1]["prompt"] == "x" * 1000


@pytest.mark.parametrize(
    ("params", "named", "allowed"),
    [
        ({"kind": "audio", "prompt": "p"}, "kind", "'image' or 'video'"),
        ({"kind": "image", "prompt": ""}, "prompt", "empty"),
        ({"kind": "image", "prompt": "   \n"}, "prompt", "empty"),
        ({"kind": "image", "prompt": "x" * 1001}, "prompt", "at most 1000"),
        ({"kind": "image", "prompt": 42}, "prompt", "string"),
        ({"kind": "image", "prompt": "p", "aspect_ratio": "wide"}, "aspect_ratio", "'W:H'"),
        ({"kind": "image", "prompt": "p", "aspect_ratio": "0:1"}, "aspect_ratio", "'W:H'"),
        ({"kind": "image", "prompt": "p", "aspect_ratio": "16/9"}, "aspect_ratio", "'W:H'"),
        ({"kind": "video", "prompt": "p", "duration": 7}, "duration", "5 or 10"),
        ({"kind": "video", "prompt": "p", "duration": True}, "duration", "5 or 10"),
        ({"kind": "video", "prompt": "p", "duration": 5.5}, "duration", "5 or 10"),
        ({"kind": "image", "prompt": "p", "duration": 5}, "duration", "kind='video' only"),
        ({"kind": "image", "prompt": "p", "image_url": "ftp://x/y.png"}, "image_url", "http"),
        ({"kind": "image", "prompt": "p", "image_url": "/local/file.png"}, "image_url", "http"),
        ({"kind": "image", "prompt": "p", "image_url": "https://"}, "image_url", "http"),
        ({"kind": "image", "prompt": "p", "image_url": "https://example.com/a b.png"}, "image_url", "spaces"),
    ],
)
def test_bad_parameter_is_named_with_what_is_allowed(params, named, allowed):
    kind = params.pop("kind")
    prompt = params.pop("prompt")
    with pytest.raises(CerebraformValidationError) as raised:
        build_submission(kind, prompt, **params)
    assert f"Invalid {named}" in str(raised.value)
    assert allowed in str(raised.value)


def test_literal_check_skips_templates_and_checks_the_rest():
    validate_literals(kind="{{ params.kind }}", prompt="{{ params.prompt }}", duration="{{ params.d }}")
    with pytest.raises(CerebraformValidationError, match="Invalid aspect_ratio"):
        validate_literals(kind="image", prompt="{{ x }}", aspect_ratio="square")


@pytest.mark.parametrize("bad", ["", "../etc/passwd", "a b", "x" * 200, None, 12])
def test_request_id_must_look_like_an_id(bad):
    with pytest.raises(CerebraformValidationError, match="Invalid request_id"):
        validate_request_id(bad)


@given(
    kind=st.one_of(st.sampled_from(["image", "video"]), st.text(max_size=8), st.integers(), st.none()),
    prompt=st.one_of(st.text(max_size=1100), st.integers(), st.none(), st.lists(st.text(), max_size=2)),
    aspect_ratio=st.one_of(st.none(), st.text(max_size=12), st.integers()),
    duration=st.one_of(st.none(), st.integers(-20, 20), st.text(max_size=3), st.floats(allow_nan=True)),
    image_url=st.one_of(st.none(), st.text(max_size=40), st.just("https://example.com/i.png")),
)
def test_arbitrary_parameters_give_a_valid_body_or_the_typed_error(
    kind, prompt, aspect_ratio, duration, image_url
):
    try:
        generation_kind, payload = build_submission(
            kind, prompt, image_url=image_url, aspect_ratio=aspect_ratio, duration=duration
        )
    except CerebraformValidationError as error:
        assert str(error).startswith("Invalid ")
        return
    assert 1 <= len(payload["prompt"]) <= 1000 and payload["prompt"].strip()
    assert payload.get("duration") in (None, 5, 10)
    if "duration" in payload:
        assert generation_kind is GenerationKind.VIDEO
