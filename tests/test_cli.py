import json

from ddip.cli import main


def test_demo_writes_volumes_views_config_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--slices", "4", "--views", "15"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"fbp.nii.gz", "least_squares.nii.gz", "ground_truth.nii.gz", "views.png", "config.json",
            "metrics.json"} <= names
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["least_squares"]["psnr"] > metrics["fbp"]["psnr"]
    assert len(metrics["fbp"]["per_slice"]["psnr"]) == 4
    config = json.loads((out / "config.json").read_text())
    assert config["n_views"] == 15 and config["volume_record"]["scaling"]["window_hu"] == [-1024.0, 2048.0]
    assert "PSNR" in capsys.readouterr().out


def test_demo_refuses_a_non_empty_output_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path), "--slices", "2"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert main(["demo", "--out", str(tmp_path / "x"), "--slices", "0"]) == 2
