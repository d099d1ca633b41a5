"""A reconstruction killed with SIGKILL at a random step resumes to the bit-identical volume."""

import os
import random
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from ddip.cli import main

STEPS = "12"


def _run(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "ddip", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


def _volume(out):
    return np.asarray(nib.load(str(out / "reconstruction.nii.gz")).dataobj)


_STRAIGHT: dict[tuple, np.ndarray] = {}


def _straight(method, extra, measurement, prior, out):
    """The uninterrupted run's volume, made once per method and shared by the kill and the signal tests (so each
    interrupted run is also checked against a run with another checkpoint interval)."""
    key = (method, *extra, str(measurement), str(prior))
    if key not in _STRAIGHT:
        args = ["reconstruct", str(measurement), "--method", method, "--prior", prior, "--steps", STEPS, "--quiet",
                "--checkpoint-every", "1", *extra, "--out", str(out)]
        assert _run(args).wait(timeout=300) == 0
        _STRAIGHT[key] = _volume(out)
    return _STRAIGHT[key]


def _progress(path):
    """Steps finished according to the checkpoint (slice-major for DDIP), or -1."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return -1
    if "inner" in payload:
        return int(payload["slice"]) * int(STEPS) + int(payload["inner"]["i"])
    return int(payload["i"])




# Each variant costs 35-55 s on 2 cores: the default suite keeps one per kind of resume state (D3IP's is also
# resumed after a signal below, DDIP's per-slice state here and after SIGINT under -m slow).
SLOW = pytest.mark.slow


@pytest.mark.parametrize("method,extra", [pytest.param("d3ip", ["--k", "2", "--iters", "2"], marks=SLOW),
                                          ("ddip", ["--iters", "1"]), ("mbir", [])])
def test_sigkill_then_resume_gives_the_same_volume(method, extra, ct_measurement, tiny_prior, tmp_path):
    common = ["reconstruct", str(ct_measurement), "--method", method, "--prior", tiny_prior, "--steps", STEPS,
              "--quiet", "--checkpoint-every", "1", *extra]
    straight = _straight(method, extra, ct_measurement, tiny_prior, tmp_path / "straight")

    killed = tmp_path / "killed"
    total = int(STEPS) * (3 if method == "ddip" else 1)
    target = random.Random(f"{method}-resume").randint(1, total - 3)
    proc = _run([*common, "--out", str(killed)])
    ckpt = killed / "checkpoint.pt"
    deadline = time.time() + 300
    while _progress(ckpt) < target:
        assert proc.poll() is None, f"the run finished before it could be killed at step {target}"
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "reconstruction.nii.gz").exists()

    resumed = _run([*common, "--out", str(killed), "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert np.array_equal(straight, _volume(killed))
    assert not ckpt.exists()  # cleaned up after success


def test_resume_with_other_settings_is_refused(ct_measurement, tiny_prior, tmp_path, capsys):
    from ddip.checkpoint import Checkpointer

    out = tmp_path / "o"
    out.mkdir()
    Checkpointer(out / "checkpoint.pt", {"method": "dds", "seed": 99}).save({"i": 0})
    assert main(["reconstruct", str(ct_measurement), "--method", "dds", "--prior", tiny_prior, "--steps", "4",
                 "--out", str(out), "--resume", "--quiet"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_a_checkpoint_from_before_a_setting_was_added_resumes_while_the_setting_is_unset(tmp_path):
    from ddip.checkpoint import Checkpointer
    from ddip.errors import DdipError

    Checkpointer(tmp_path / "c.pt", {"method": "dds", "seed": 1}).save({"i": 3})
    assert Checkpointer(tmp_path / "c.pt", {"method": "dds", "seed": 1, "tv_lam": None}).load()["i"] == 3
    with pytest.raises(DdipError, match=r"differs in \['tv_lam'\]"):
        Checkpointer(tmp_path / "c.pt", {"method": "dds", "seed": 1, "tv_lam": 0.1}).load()


def test_truncated_checkpoint_is_reported(ct_measurement, tiny_prior, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    assert main(["reconstruct", str(ct_measurement), "--method", "dds", "--prior", tiny_prior, "--steps", "4",
                 "--out", str(out), "--resume", "--quiet"]) == 2
    assert "corrupt or truncated checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("method,extra,sig", [("d3ip", ["--k", "2", "--iters", "2"], signal.SIGTERM),
                                              pytest.param("ddip", ["--iters", "1"], signal.SIGINT, marks=SLOW)])
def test_a_signal_checkpoints_at_the_next_step_and_resume_gives_the_same_volume(method, extra, sig, ct_measurement,
                                                                                tiny_prior, tmp_path):
    """A real SIGTERM / SIGINT on the CLI: regular checkpoints are off (every 1000 steps), so the checkpoint that
    the resumed run continues from can only be the one the signal made."""
    common = ["reconstruct", str(ct_measurement), "--method", method, "--prior", tiny_prior, "--steps", STEPS,
              "--checkpoint-every", "1000", *extra]
    straight = _straight(method, extra, ct_measurement, tiny_prior, tmp_path / "straight")

    stopped = tmp_path / "stopped"
    proc = _run([*common, "--out", str(stopped)])  # with the progress bar: it says when sampling has begun
    seen, deadline = b"", time.time() + 300
    while b"step" not in seen:
        assert proc.poll() is None, f"the run ended before it could be signalled: {seen.decode()[-2000:]}"
        assert time.time() < deadline
        seen += os.read(proc.stderr.fileno(), 4096)
    proc.send_signal(sig)
    err = seen + proc.stderr.read()
    assert proc.wait(timeout=300) == 128 + sig
    assert f"{signal.Signals(sig).name} received: stopped after sampling step".encode() in err
    assert b"Traceback" not in err and b"--resume" in err
    assert (stopped / "checkpoint.pt").exists() and not (stopped / "reconstruction.nii.gz").exists()

    resumed = _run([*common, "--quiet", "--out", str(stopped), "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert np.array_equal(straight, _volume(stopped))


def test_the_same_command_twice_gives_the_bit_identical_volume_and_records_the_environment(ct_measurement,
                                                                                             tiny_prior, tmp_path):
    import json

    common = ["reconstruct", str(ct_measurement), "--method", "d3ip", "--prior", tiny_prior, "--steps", "4",
              "--k", "2", "--iters", "2", "--zeta", "none", "--quiet"]
    for name in ("a", "b"):
        assert _run([*common, "--out", str(tmp_path / name)]).wait(timeout=300) == 0
    assert np.array_equal(_volume(tmp_path / "a"), _volume(tmp_path / "b"))
    env = json.loads((tmp_path / "a" / "config.json").read_text())["environment"]
    assert env["torch_threads"] == 1 and env["torch"] == torch.__version__  # OMP_NUM_THREADS=1 in _run


class _StopAt:
    """A stop request that turns true at its ``n``-th poll (one poll per sampling step): a signal at a chosen step."""

    def __init__(self, n: int):
        self.n, self.polls, self.signum = n, 0, None

    @property
    def requested(self) -> bool:
        self.polls += 1
        return self.polls >= self.n


def _networked():
    from ddip.methods import REGISTRY

    # D3IP-meta alone runs by default: its resume crosses both kinds of nesting (stage, slice) and D3IP's and DDIP's
    # solves; the subprocess tests above cover D3IP, DDIP and MBIR after real signals.
    return [pytest.param(n, marks=() if n == "d3ip-meta" else SLOW) for n, s in REGISTRY.items() if s.step is not None]


@pytest.mark.parametrize("name", _networked())
def test_every_method_resumes_from_its_last_stage_to_the_same_volume(name, ct_measurement, tiny_prior, tmp_path):
    """The persistence contract, in process: a method stopped at a step inside its last stage (D3IP-meta's
    fine-tuning, DDIP's last slice) resumes from the one checkpoint its hook wrote to the bit-identical volume of an
    uninterrupted run."""
    from ddip.checkpoint import Checkpointer
    from ddip.methods import REGISTRY
    from ddip.priors import load_prior
    from ddip.reconstruct import ReconstructConfig, reconstruct
    from ddip.signals import Interrupted
    from ddip.tasks import load_measurement

    m, prior = load_measurement(ct_measurement), load_prior(tiny_prior)
    steps, n_slices = 6, m.y.shape[0]
    cfg = ReconstructConfig(name, n_steps=steps, **({"n_iters": 1} if REGISTRY[name].adapted else {}))
    straight = reconstruct(m, cfg, prior).volume
    per_slice = name in ("ddip", "scd", "d3ip-meta")
    polls = (steps - 1) * (n_slices + (name == "d3ip-meta")) if per_slice else steps - 1  # one per step but the last
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(Interrupted):
        reconstruct(m, cfg, prior, checkpointer=Checkpointer(path, {"m": name}, every=1000, stop=_StopAt(polls - 3)))
    payload = torch.load(path, weights_only=True)
    if name == "d3ip-meta":
        assert payload["stage"] == "finetune" and payload["inner"]["slice"] == n_slices - 1
    elif per_slice:
        assert payload["slice"] == n_slices - 1
    resumed = reconstruct(m, cfg, prior, checkpointer=Checkpointer(path, {"m": name}, every=1000))
    assert torch.equal(straight, resumed.volume)
