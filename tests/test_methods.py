"""The method registry: every method has one spec, and a method added through it alone runs everywhere."""

import json

import pytest
import torch

from ddip.cli import main
from ddip.errors import DdipError
from ddip.methods import REGISTRY, MethodSpec, method_spec, names, register
from ddip.reconstruct import ReconstructConfig, reconstruct
from ddip.solvers import DDS
from ddip.tasks import open_measurement


@pytest.fixture
def toy_method():
    """A deterministic DDS (η = 0), registered for the test and removed after it."""
    spec = register(MethodSpec("toy-ddim", "DDS with η = 0", lambda cfg, task: DDS(eta=0.0, n_steps=cfg.n_steps or 50),
                               "dds"))
    yield spec
    del REGISTRY[spec.name]


def test_a_method_added_through_the_registry_alone_runs_through_reconstruct_and_the_cli(toy_method, ct_measurement,
                                                                                       tiny_prior, tmp_path):
    from ddip.priors import load_prior

    m, prior = open_measurement(ct_measurement), load_prior(tiny_prior)
    x = reconstruct(m, ReconstructConfig(method="toy-ddim", n_steps=3), prior).volume
    expected = reconstruct(m, ReconstructConfig(method="dds", n_steps=3), prior).volume
    assert x.shape == expected.shape and not torch.equal(x, expected)  # its own step ran (η = 0, not DDS's)
    out = tmp_path / "r"
    assert main(["reconstruct", str(ct_measurement), "--method", "toy-ddim", "--prior", tiny_prior, "--steps", "3",
                 "--quiet", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["method"] == "toy-ddim"
    with pytest.raises(DdipError, match="set the adaptation"):
        ReconstructConfig(method="toy-ddim", k=2)  # a plain sampler: the adaptation options are refused
    with pytest.raises(DdipError, match="already registered"):
        register(toy_method)


def test_every_method_has_one_consistent_spec():
    assert names() == ("admm-tv", "ddnm", "dps", "dds", "mbir", "scd", "ddip", "d3ip", "d3ip-mbir", "d3ip-meta")
    for name in names():
        spec = method_spec(name)
        assert spec.name == name and spec.summary
        assert spec.adapted == (spec.table5 is not None)  # an adapted method has its Table 5 row for every task
        assert not spec.replayable or spec.adapted
        assert spec.tv == (spec.dc == "mbir" or spec.step is None)
    assert names(lambda s: s.replayable) == ("d3ip", "d3ip-mbir")
    with pytest.raises(DdipError, match="unknown method 'nope'; choose one of admm-tv"):
        method_spec("nope")


def test_eta_reaches_every_sampling_step_and_is_refused_where_nothing_samples():
    from ddip.methods import REGISTRY
    from ddip.reconstruct import ReconstructConfig
    from ddip.tasks import TaskConfig

    task = TaskConfig(task="sv-ct", size=64)
    for name, spec in REGISTRY.items():
        if spec.step is None:
            with pytest.raises(DdipError, match="eta"):
                ReconstructConfig(name, eta=0.3)
        else:
            assert spec.step(ReconstructConfig(name, eta=0.3), task).eta == 0.3
    with pytest.raises(DdipError, match="eta must be in"):
        ReconstructConfig("dds", eta=1.5)


def test_every_sampling_option_reaches_the_methods_step_or_is_refused():
    """n_steps, noise mixing and η either reach the step a method builds or are refused; the options a method fixes
    itself (SCD: pure-noise init, every step adapted) or has no use for (ADMM-TV: no network) are refused."""
    from ddip.methods import REGISTRY
    from ddip.reconstruct import ReconstructConfig
    from ddip.tasks import TaskConfig

    task = TaskConfig(task="sv-ct", size=64)
    options = {"n_steps": 7, "noise_mix": "ddim", "eta": 0.3, "init": "noise", "max_batch": 3, "zeta": 5,
               "precision": "bfloat16", "channels_last": True, "carry_admm_state": True}
    for name, spec in REGISTRY.items():
        for option, value in options.items():
            try:
                cfg = ReconstructConfig(name, **{option: value})
            except DdipError as exc:
                assert option in str(exc) or option == "zeta" and "adaptation" in str(exc), (name, option, exc)
                continue
            step = spec.step(cfg, task) if spec.step is not None else None
            if option in ("n_steps", "noise_mix", "eta"):
                assert getattr(step, option) == value, (name, option)
            elif option == "carry_admm_state":
                assert step.carry_state is True, name  # only the methods on DiffusionMBIR's step take it
            elif option == "zeta" or option == "init":
                assert spec.adapted or option == "init", (name, option)  # used by the adaptation / the solve loop
                assert spec.takes_init, (name, option)  # SCD refuses both
            else:  # network settings: used by every method with a network
                assert spec.step is not None, (name, option)


def test_every_setting_a_method_resolves_is_used_or_refused_and_recorded_as_it_ran():
    """Each setting whose value ``resolved_settings`` records (steps, η, mixing, CG, ADMM state, K, L, lr, TV) either
    changes what a method runs, as recorded, or is refused: none is silently ignored by any registered method."""
    import json

    from ddip.methods import REGISTRY
    from ddip.reconstruct import RESOLVED_FIELDS, ReconstructConfig, resolved_settings
    from ddip.tasks import TaskConfig

    task = TaskConfig(task="sv-ct", size=64)
    values = {"n_steps": 7, "t_start": 600, "eta": 0.3, "noise_mix": "ddim", "cg_iters": 3, "carry_admm_state": True, "k": 2,
              "n_iters": 2, "lr": 3e-4, "zeta": 17, "tv_lam": 0.05, "tv_rho": 0.7}
    assert set(values) == set(RESOLVED_FIELDS)
    for name in REGISTRY:
        base = resolved_settings(ReconstructConfig(name), task, 8)
        assert json.loads(json.dumps(base, allow_nan=False)) == base  # valid JSON: no None hidden as NaN/Infinity
        for option, value in values.items():
            try:
                cfg = ReconstructConfig(name, **{option: value})
            except DdipError as exc:
                assert option in str(exc) or "adaptation" in str(exc), (name, option, exc)
                continue
            resolved = resolved_settings(cfg, task, 8)
            assert resolved != base and value in [v for part in resolved.values() for v in part.values()], \
                (name, option)


def test_the_sampling_start_is_the_methods_own_unless_given_and_t_full_is_the_full_grid():
    """DDS starts at its measured T' (ddip.methods.T_START_PLAIN), the others on the full grid; ``t_start = T`` and
    the paper preset give the full grid (recorded as no T' at all, so the full grid keys its runs as before); the
    method's own T' leaves room for as many timesteps as steps."""
    from ddip.methods import REGISTRY, T_START_PLAIN
    from ddip.priors.schedule import T_DEFAULT, VPSchedule
    from ddip.reconstruct import ReconstructConfig, resolved_settings, with_preset
    from ddip.solvers.base import sampling_grid
    from ddip.tasks import TaskConfig

    task = TaskConfig(task="sv-ct", size=64)

    class _Prior:
        schedule = VPSchedule.linear()

    full = VPSchedule.linear().timesteps(50).tolist()
    for name, spec in REGISTRY.items():
        if not spec.mixes_noise:
            continue
        own = resolved_settings(ReconstructConfig(name), task, 8)["sampler"].get("t_start")
        assert own == (T_START_PLAIN if name == "dds" else None), name
        for cfg in (ReconstructConfig(name, t_start=T_DEFAULT), ReconstructConfig(name, **with_preset("paper", name, {}))):
            assert "t_start" not in resolved_settings(cfg, task, 8)["sampler"], name
            assert sampling_grid(_Prior(), spec.step(cfg, task)) == full, name
    grid = sampling_grid(_Prior(), REGISTRY["dds"].step(ReconstructConfig("dds"), task))
    assert grid[0] <= T_START_PLAIN and len(grid) == 50 and grid[-1] == 0
    assert resolved_settings(ReconstructConfig("dds", n_steps=300), task, 8)["sampler"]["t_start"] == 299


def test_large_images_start_mbir_and_the_adapted_methods_low_with_a_window_that_fits():
    """MBIR and the adapted methods start at T_START_PLAIN on images at least as large as their spec's ``low_start``
    gives for the task (the measured ones), smaller images and the other tasks keep the full grid; an adapted method
    whose T' leaves AdaptConfig's ζ no room adapts in the window ZETA_LOW_START instead of nowhere, at its spec's
    ``low_start_lr`` for the task where it has one; given values and the paper preset win."""
    from ddip.adapt import AdaptConfig
    from ddip.methods import LR_TUNED, REGISTRY, T_START_PLAIN, TABLE5, ZETA_LOW_START, sampling_start
    from ddip.priors.schedule import T_DEFAULT
    from ddip.reconstruct import ReconstructConfig, resolved_settings, with_preset
    from ddip.tasks import TaskConfig

    assert REGISTRY["d3ip"].low_start["sv-ct"] == 256 and REGISTRY["mbir"].low_start["sv-ct"] == 128
    assert "mri3d" not in REGISTRY["mbir"].low_start and not REGISTRY["ddip"].low_start
    assert REGISTRY["d3ip"].low_start_lr == {"mri3d": 1e-3} and not REGISTRY["d3ip-mbir"].low_start_lr
    for task_name in ("sv-ct", "mri3d", "csmri"):
        for size in (64, 128, 256):
            task = TaskConfig(task=task_name, size=size)
            for name, spec in REGISTRY.items():
                if not spec.mixes_noise:
                    continue
                low = size >= spec.low_start.get(task_name, 10**6)
                resolved = resolved_settings(ReconstructConfig(name), task, 8)
                expected = spec.t_start or (T_START_PLAIN if low else None)
                assert resolved["sampler"].get("t_start") == expected, (task_name, size, name)
                if spec.adapted and "zeta" not in spec.fixed:
                    zeta = ZETA_LOW_START if expected else AdaptConfig.zeta
                    assert resolved["adaptation"]["zeta"] == zeta, (task_name, size, name)
                    table5 = LR_TUNED.get(task_name, spec.table5[task_name][2])
                    lr = spec.low_start_lr.get(task_name, table5) if expected else table5
                    assert resolved["adaptation"]["lr"] == lr, (task_name, size, name)
                    given = resolved_settings(ReconstructConfig(name, lr=3e-5), task, 8)["adaptation"]["lr"]
                    assert given == 3e-5, (task_name, size, name)
                    # the window is not empty: the middle of the grid adapts
                    assert AdaptConfig(zeta=zeta).adapts_at((expected or T_DEFAULT) // 2, expected or T_DEFAULT)
                full = ReconstructConfig(name, t_start=T_DEFAULT)
                assert "t_start" not in resolved_settings(full, task, 8)["sampler"], name
                paper = resolved_settings(ReconstructConfig(name, **with_preset("paper", name, {})), task, 8)
                assert "t_start" not in paper["sampler"], name
    big = TaskConfig(task="sv-ct", size=256)
    assert sampling_start(ReconstructConfig("d3ip", n_steps=300), big) == 299  # room for the steps
    assert resolved_settings(ReconstructConfig("d3ip", t_start=T_DEFAULT), big, 8)["adaptation"]["zeta"] == \
        AdaptConfig.zeta
    assert resolved_settings(ReconstructConfig("d3ip", zeta=7), big, 8)["adaptation"]["zeta"] == 7
    small = TaskConfig(task="sv-ct", size=64)  # a start given on a small image gets the window that fits it too
    assert resolved_settings(ReconstructConfig("d3ip", t_start=T_START_PLAIN), small, 8)["adaptation"]["zeta"] == \
        ZETA_LOW_START
    brain = TaskConfig(task="mri3d", size=256)  # the full grid and the paper preset keep Table 5's rate
    paper = with_preset("paper", "d3ip", {})
    for cfg in (ReconstructConfig("d3ip", t_start=T_DEFAULT), ReconstructConfig("d3ip", **paper)):
        assert resolved_settings(cfg, brain, 8)["adaptation"]["lr"] == TABLE5["mri3d"]["d3ip"][2]
