"""Issue 17: the recognition API serves the federated model after a hot swap, exactly as
the camera path does, and its enrolments land in the box's one gallery under it.

The box's swapping process (here the test, as in the other hot-swap tests) applies a
federated result while ``serve-api`` runs as its own process: the server's engine
follows the swap pointer and its answers then equal ``fedface-edge identify``'s."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner

from edge.cli import app
from edge.gallery.store import Gallery
from edge.serving.current import BASE_TAG
from tests.support.api_server import create_key, running_api
from tests.support.hot_swap import copy_box, lfw_people, open_swapper, perturbed, template_box


def recognise(url: str, key: str, image: Path) -> dict[str, object]:
    answer = requests.post(f"{url}/api/v1/recognition/recognize?status=true",
                           headers={"x-api-key": key},
                           files={"file": image.read_bytes()}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_api_serves_the_federated_model_after_a_hot_swap(
        tmp_path_factory: pytest.TempPathFactory, lfw_dir: Path) -> None:
    box = copy_box(template_box(tmp_path_factory.getbasetemp(), lfw_dir),
                   tmp_path_factory.mktemp("api-swap") / "box")
    person = lfw_people(lfw_dir, 1, 5)[0]
    probe = sorted(person.glob("*.jpg"))[-1]  # not one of the enrolled photos
    key = create_key(box, "double-take")
    with running_api(box) as server:
        before = recognise(server.url, key, probe)
        assert before["plugins_versions"]["calculator"] == BASE_TAG  # type: ignore[index]

        swapper = open_swapper(box)
        base = swapper.part.initial_vector(swapper.assets.base_weights)
        swapper.apply("round-1", perturbed(base, 1))
        federated_tag = swapper.engine.state.tag
        swapper.engine.close()
        assert federated_tag != BASE_TAG

        deadline = time.monotonic() + 120
        after = recognise(server.url, key, probe)
        while after["plugins_versions"]["calculator"] != federated_tag:  # type: ignore[index]
            assert time.monotonic() < deadline, "the API never followed the swap"
            time.sleep(0.5)
            after = recognise(server.url, key, probe)

        cli = CliRunner().invoke(app, ["--data-dir", str(box), "identify", "--json",
                                       str(probe)])
        assert cli.exit_code == 0, cli.output
        reference = json.loads(cli.stdout)
        assert reference["model_version"] == federated_tag
        got = after["result"][0]["subjects"][0]  # type: ignore[index]
        want = reference["faces"][0]
        assert (got["subject"], got["similarity"]) == (person.name, want["score"])
        assert want["name"] == person.name

        # an enrolment through the API, after the swap: same gallery, federated vectors
        added = requests.post(f"{server.url}/api/v1/recognition/faces?subject=Newcomer",
                              headers={"x-api-key": key},
                              files={"file": (lfw_dir / "Serena_Williams" /
                                              "Serena_Williams_0001.jpg").read_bytes()},
                              timeout=60)
        assert added.status_code == 201, added.text
    with Gallery.open(box) as gallery:
        assert "Newcomer" in {p.name for p in gallery.people()}
        assert set(gallery.model_versions()) == {federated_tag}
