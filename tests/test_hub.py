"""Offline, a hub model fails at once with one short paragraph: one quick connection, then offline mode."""

from __future__ import annotations

import socket

import huggingface_hub.constants
import pytest

from embedlens.backbones import load_backbone
from embedlens.errors import BackboneLoadError
from embedlens.hub import hub_reachable, offline_unless_hub_reachable


@pytest.fixture
def no_network(monkeypatch):
    """A machine without a network, not yet in offline mode; returns the connection attempts made."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return attempts


def test_an_unreachable_hub_switches_the_process_to_offline_mode(no_network):
    assert not hub_reachable(timeout=0.1)
    assert offline_unless_hub_reachable(timeout=0.1)
    assert huggingface_hub.constants.HF_HUB_OFFLINE


@pytest.mark.parametrize("spec", [
    {"name": "dinov2_s", "kind": "hf_dinov2", "model": "embedlens-tests/no-such-model"},
    {"name": "dino", "kind": "timm", "model": "vit_small_patch16_224.dino"},
], ids=["hf_dinov2", "timm"])
def test_a_hub_model_offline_fails_after_one_connection_attempt_with_a_short_message(no_network, tmp_path,
                                                                                     monkeypatch, spec):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(BackboneLoadError) as raised:
        load_backbone(spec)
    assert len(no_network) == 1  # the one quick check; the loader itself retried nothing
    message = str(raised.value)
    assert len(message.splitlines()) <= 2 and len(message) < 700, message
    assert f"backbone {spec['name']!r}" in message
    assert ("    model: /data/models/no-such-model" if spec["kind"] == "hf_dinov2"
            else "    weights: /data/weights/vit_small_patch16_224.dino.safetensors") in message
