"""The training-step benchmarks run, print one JSON line, and agree with each other."""
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from core import config
from tests.helpers import ROOT

ENV = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}


def bench(script: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


SMALL = ["--preset", "nano", "--batch", "2", "--seq", "64", "--dtype", "float32"]


def test_fused_step_reaches_the_same_loss_as_plain_autodiff():
    fused = bench("train_step.py", *SMALL, "--steps", "3", "--warmup", "1")
    plain = bench("train_step.py", *SMALL, "--steps", "3", "--warmup", "1", "--autodiff")
    assert (fused["autodiff"], plain["autodiff"]) == (False, True)
    assert fused["steps"] == plain["steps"] == 4
    assert abs(fused["loss"] - plain["loss"]) <= 0.002  # printed to 3 decimals
    assert fused["tok_s"] > 0


def test_profile_reports_each_part():
    out = bench("profile_step.py", *SMALL)
    for part in ("step", "forward_loss", "forward_backward", "optimizer", "loss_head_fwd_bwd"):
        assert out[f"{part}_ms"] > 0
        assert out[f"{part}_peak_gb"] >= 0


def test_validation_grouped_into_larger_passes_gives_the_same_loss():
    out = bench("validation_groups.py", *SMALL, "--batches", "4")
    checks = out["checks"]
    assert [c["group"] for c in checks] == [1, 2, 4, 1] and out["skipped"] == [10]  # 10 does not divide 4
    assert max(c["loss"] for c in checks) - min(c["loss"] for c in checks) <= 2e-5  # printed to 5 decimals
    assert all(c["first_s"] > 0 and c["median_s"] > 0 for c in checks)


@pytest.mark.parametrize("first, names", [("greedy", ["greedy", "greedy", "sampled", "sampled"]),
                                           ("prefill", ["one_token", "sampled", "sampled"])])
def test_first_decode_after_step_times_each_decode_in_its_order(first, names):
    out = bench("first_decode_after_step.py", *SMALL, "--first", first, "--tokens", "8")
    decodes = [k for k in out if k.startswith("decode_")]
    assert decodes == [f"decode_{n}_{name}_s" for n, name in enumerate(names, 1)]
    assert all(out[k] > 0 for k in decodes) and out["three_steps_s"] > 0 and out["first"] == first


def test_first_step_times_steps_queued_one_ahead():
    out = bench("first_step.py", *SMALL, "--steady", "2", "--queued", "3")
    assert out["queued_step_s"] > 0 and out["queue_s"] > 0
    assert out["queue_cpu_s"] <= out["queue_s"] * 1.05 + 1e-3  # the queuing thread's own time, within its wall
    assert "queue_s" not in bench("first_step.py", *SMALL, "--steady", "2", "--queued", "0")
    muon = bench("first_step.py", *SMALL, "--steady", "1", "--queued", "2", "--optimizer", "muon")
    assert out["muon_matrices"] == 0 and muon["muon_matrices"] == 8 and muon["queue_cpu_s"] > 0  # nano: 2 blocks x 4


def write_shards(folder: Path, vocab: int, tokens: int) -> Path:
    """A token shard folder as `acm prepare` writes it (manifest + uint16 train/val chunks)."""
    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    text = np.tile(rng.integers(0, vocab, 97), tokens // 97 + 1)[:tokens].astype(np.uint16)  # learnable
    np.save(folder / "chunk-00000.train.npy", text)
    np.save(folder / "chunk-00000.val.npy", text[: tokens // 10])
    files = {"train": "chunk-00000.train.npy", "val": "chunk-00000.val.npy"}
    counts = {"train": tokens, "val": tokens // 10}
    (folder / "manifest.json").write_text(json.dumps({"vocab_size": vocab, "chunks": [{"files": files,
                                                                                        "tokens": counts}]}))
    return folder


def test_loss_match_trains_the_same_weights_on_the_same_batches(tmp_path):
    shards = write_shards(tmp_path / "tokens", vocab=256, tokens=20_000)
    out = bench("loss_match.py", "--tokens", str(shards), "--preset", "nano", "--batch", "4", "--seq", "32",
                "--steps", "30", "--every", "10", "--val-batches", "2", "--runs", "acm,acm-seed1,acm-seed0")
    runs = out["runs"]
    assert out["vocab"] == 256 and set(runs) == {"acm", "acm-seed1", "acm-seed0"}
    assert runs["acm"] == {**runs["acm-seed0"], "seconds": runs["acm"]["seconds"]}  # same weights, same batches
    assert runs["acm"]["loss_every"][0] != runs["acm-seed1"]["loss_every"][0]  # other initial weights
    assert runs["acm"]["last"] < runs["acm"]["loss_every"][0] - 0.5  # it learns the repeating text
    assert out["gap_acm_acm-seed1"]["last"] == round(runs["acm"]["last"] - runs["acm-seed1"]["last"], 4)


def test_loss_match_without_shards_says_what_to_run(tmp_path):
    out = subprocess.run([sys.executable, "bench/loss_match.py", "--tokens", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env=ENV)
    assert out.returncode == 1 and "run `acm prepare` first" in out.stderr


def test_cuda_kernel_bench_says_it_needs_cuda_here():
    out = subprocess.run([sys.executable, "bench/cuda_kernels.py"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=ENV)
    assert out.returncode == 1 and "needs MLX's CUDA backend" in out.stderr


def test_ranks_bench_trains_on_one_and_two_ranks_through_the_cli(prepared):
    out = subprocess.run([sys.executable, "bench/ranks.py", "--project", str(prepared), "--presets", "nano",
                          "--ranks", "1,2", "--steps", "24", "--seq", "32", "--batch", "nano=2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["ranks"], r["per_gpu_batch"]) for r in rows] == [(1, 2), (2, 2)]
    assert rows[0]["speedup"] == 1.0 and rows[1]["speedup"] > 0 and all(r["tokens_per_s"] > 0 for r in rows)


def test_command_wall_splits_a_training_commands_time_around_the_trainer(prepared, tmp_path):
    # a Python that writes no bytecode, its cache in a folder of its own: every module lacks it at first
    cache = tmp_path / "pycache"
    env = ENV | {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(cache)}
    out = subprocess.run([sys.executable, "bench/command_wall.py", "--project", str(prepared), "--max-steps", "2",
                          "--keep", "--ready", "on", "off", "--exit", "fast"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    written = rows[0]["bytecode"]
    assert written["written"] > 50 and written["lacking"] == written["lacking_in_acm"] == 0  # timed as installed
    assert list((cache / str(ROOT / "core" / "train").lstrip("/")).glob("trainer.*.pyc"))
    assert [(r["ready_in_command"], r["exit"], r["args"]) for r in rows] == [
        (mode, "fast", ["train", "pretrain", "--run", f"wall-1-{mode}", "--max-steps", "2"]) for mode in ("on", "off")]
    assert all(0 < r["readying_s"]["start"] <= r["readying_s"]["end"] < r["command_s"] for r in rows)
    assert config.load(prepared / "acm.toml").train.ready_in_command is False  # the last process's setting
    assert [r["readied"]["why"] for r in rows] == [  # what the readying did, said in each row
        "no GPU: a first step on the CPU loads nothing it could find ready", "train.ready_in_command is off"]
    for row in rows:
        run = prepared / "runs" / row["args"][3]
        assert (run / "pretrain/checkpoints/step-0000002").is_dir()  # the real command trained
        parts = sum(row["before_trainer_s"].values()) + row["trainer_s"] + row["after_trainer_s"]
        assert abs(parts - row["command_s"]) <= 0.003  # the parts are the command's whole wall, rounded
        assert row["trainer_s"] >= row["timings"]["wall_s"] - 0.002  # timings.json's wall lies inside the trainer's
        assert row["around_step_share"] > row["around_step_share_in_trainer"] > 0
        assert row["before_trainer_s"]["imports"] > 0 and row["before_trainer_s"]["to_trainer"] > 0


def test_ready_parts_times_the_readying_then_the_stage_s_first_steps(trained):
    cfg = config.load(trained / "acm.toml")
    cfg.train.samples = 1
    config.save(cfg, trained / "acm.toml")
    out = subprocess.run([sys.executable, "bench/ready_parts.py", "--project", str(trained), "--layers", "0", "1",
                          "--imports", "on", "off", "--cache", "clear", "keep"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    layers = cfg.model.shape().n_layer
    assert [(r["layers"], r["imports"], r["cache"], r["readying"]) for r in rows] == [
        (n, imports, cache, "all") for n in (layers, 1) for imports in (True, False) for cache in ("clear", "keep")]
    readying = ["settings_and_vocabulary", "model_built", "state_evaluated", "step_traced", "step_first_run",
                "validation_loss", "samples_decoded", "readying_ended"]
    stage = ["stage_model_built", "stage_step_1", "stage_step_2", "stage_step_3", "stage_validation_loss",
             "stage_samples_decoded", "stage_samples_again"]
    for row in rows:
        marks = row["marks_s"]
        assert list(row["parts_s"]) == readying + stage and min(row["parts_s"].values()) >= 0
        assert ("command_imported" in marks) == row["imports"]
        in_order = ["script", "mlx_imported", "readying_imported"] + readying + stage
        assert [marks[k] for k in in_order] == sorted(marks[k] for k in in_order)  # each part after the last
        assert marks["stage_model_built"] >= marks.get("command_imported", 0)  # the stage waits for the imports
        assert row["preset_layers"] == layers
    for clear, keep in zip(rows[::2], rows[1::2]):  # the readying's buffers freed, or kept for the stage
        assert (clear["cache"], keep["cache"]) == ("clear", "keep")
        assert keep["cached_bytes"] > 0 and clear["cached_bytes"] < keep["cached_bytes"] / 10


def test_ready_parts_stops_the_readying_after_its_step_as_a_stage_queued_meanwhile_does(trained):
    cfg = config.load(trained / "acm.toml")
    cfg.train.samples = 1
    config.save(cfg, trained / "acm.toml")
    out = subprocess.run([sys.executable, "bench/ready_parts.py", "--project", str(trained), "--imports", "off",
                          "--readying", "step", "all"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["readying"] for r in rows] == ["step", "all"]
    cut, whole = (r["marks_s"] for r in rows)
    assert "validation_loss" not in cut and "samples_decoded" not in cut  # stopped after the step
    assert cut["step_first_run"] <= cut["readying_ended"] <= cut["stage_model_built"]
    assert whole["step_first_run"] < whole["validation_loss"] < whole["samples_decoded"] <= whole["readying_ended"]


def test_time_to_loss_measures_each_variant_against_the_baseline_s_final_loss(prepared):
    out = subprocess.run([sys.executable, "bench/time_to_loss.py", "--project", str(prepared),
                          "--set", "train.pretrain.steps=20", "--variant", "base",
                          "--variant", "still", "train.pretrain.learning_rate=0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    runs, (base, still) = [json.loads(line) for line in out.stdout.splitlines()[:2]], \
        [json.loads(line) for line in out.stdout.splitlines()[2:]]
    assert [(r["variant"], r["steps"], [s for s, _ in r["val_curve"]]) for r in runs] == \
        [("base", 20, [10, 20]), ("still", 20, [10, 20])]  # each run trained in its own process, as set
    assert (prepared / "runs/ttl-still-1/pretrain/timings.json").is_file()
    assert base["target_val_loss"] == [round(runs[0]["final_val_loss"], 4)] and base["time_ratio"] == [1.0]
    assert base["reach_step"] == [20.0]  # the learnable text's loss falls at every check
    assert still["reach_step"] == [None] and still["final_val_loss"] > base["target_val_loss"]  # no steps taken


def test_time_to_loss_reads_each_round_against_its_own_baseline_between_checks(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    ttl = importlib.import_module("time_to_loss")

    def run(curve, steps_s):
        return {"val_curve": curve, "final_val_loss": curve[-1][1], "steps": curve[-1][0], "ms_per_step": 0,
                "timings": {"parts_s": {"steps": steps_s}}, "command_s": 0}

    base = [run([[10, 6.0], [20, 5.0]], 20.0), run([[10, 6.0], [20, 4.0]], 40.0)]
    fast = [run([[10, 5.5], [20, 4.5]], 10.0), run([[10, 5.0], [20, 3.0]], 10.0)]
    b, f = ttl.summary({"base": base, "fast": fast})
    assert b["target_val_loss"] == [5.0, 4.0] and b["reach_step"] == [20.0, 20.0] and b["time_ratio"] == [1.0, 1.0]
    # round 1: 5.5 -> 4.5 passes 5.0 halfway, step 15 at 0.5 s a step; round 2: 4.0 at step 15 of 20
    assert f["reach_step"] == [15.0, 15.0] and f["reach_s"] == [7.5, 7.5] and f["time_ratio"] == [0.375, 0.188]
    assert ttl.reach([[10, 3.0], [20, 2.0]], 4.0) == 10.0 and ttl.reach([[10, 6.0], [20, 5.5]], 5.0) is None


def test_kernel_timeline_counts_overlap_once_and_time_alone_per_kernel(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    gpu_kernels = importlib.import_module("gpu_kernels")
    # a: 0-10 alone 0-4; b: 4-6 inside a; c: 12-15 after a gap; d: 14-20 overlapping c
    busy, alone = gpu_kernels.timeline([(0, 10), (4, 6), (12, 15), (14, 20)])
    assert busy == 18  # 0-10 and 12-20: the gap and the overlaps counted once
    assert alone == [8, 0, 2, 5]
    assert gpu_kernels.timeline([]) == (0.0, [])
    assert gpu_kernels.timeline([(3, 5), (3, 5)]) == (2, [0, 0])  # two kernels at once: neither alone


def test_idle_gaps_are_the_stretches_no_kernel_covers_with_the_kernels_around_them(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    gpu_kernels = importlib.import_module("gpu_kernels")
    # 0: 0-10; 1: 2-12 reaches past 0; 2: 15-16 after a gap of 3; 3: 16-17 touching, no gap; 4: 20-21
    spans = [(0, 10), (2, 12), (15, 16), (16, 17), (20, 21)]
    assert gpu_kernels.idle_gaps(spans) == [(12, 15, 1, 2), (17, 20, 3, 4)]
    assert gpu_kernels.idle_gaps(list(reversed(spans))) == [(12, 15, 3, 2), (17, 20, 1, 0)]
    assert gpu_kernels.idle_gaps([(0, 5), (1, 2)]) == [] and gpu_kernels.idle_gaps([]) == []


def test_app_stages_times_each_stage_from_its_key_in_one_app(prepared):
    out = subprocess.run([sys.executable, "bench/app_stages.py", "-c", str(prepared / "acm.toml"), "--rounds", "1",
                          "--ready", "wait"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout)
    assert row["ready"] == "wait" and row["readied"].startswith("pretrain step readied in ") and row["ready_s"] >= 0
    pre, fine = row["pretrain"], row["finetune"]
    assert pre["run"] == fine["run"]  # the fine-tune went on from the app's own pretrain
    run = prepared / "runs" / pre["run"]
    assert (run / "pretrain/checkpoints/step-0000040").is_dir() and (run / "finetune/checkpoints/step-0000010").is_dir()
    for stage in (pre, fine):
        assert stage["stage_s"] >= stage["timings"]["wall_s"]  # the trainer's wall lies inside the key-to-end time
        assert stage["around_step_share"] >= stage["around_step_share_in_trainer"] > 0
    assert row["process_s"] > row["app_start_s"] + row["ready_s"] + pre["stage_s"] + fine["stage_s"]


def test_pipeline_stages_times_each_stage_from_its_heading_with_the_readying_on_and_off(trained):
    """From the shards on, a fresh `acm pipeline run` per mode on a copy of the project (its own
    shards and runs left as they were)."""
    from core import config

    cfg = config.load(trained / "acm.toml")
    for stage, steps in (("pretrain", 8), ("finetune", 4)):
        sc = getattr(cfg.train, stage)
        sc.seq_len, sc.batch_size, sc.steps, sc.warmup_steps, sc.eval_every, sc.eval_batches = 32, 4, steps, 2, 4, 2
    cfg.model.compute_dtype, cfg.eval.samples, cfg.eval.max_tokens = "float32", 1, 8
    config.save(cfg, trained / "acm.toml")
    out = subprocess.run([sys.executable, "bench/pipeline_stages.py", "-c", str(trained / "acm.toml"), "--rounds", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    on, off = map(json.loads, out.stdout.splitlines())
    assert (on["mode"], off["mode"]) == ("on", "off") and on["readied"][1].startswith("pretrain step readied in ")
    assert off["readied"] is None
    for row in (on, off):
        assert list(row["stages_s"]) == ["prepare", "pretrain", "finetune", "evaluate"]
        assert row["command_s"] > sum(row["stages_s"].values())
        for stage in ("pretrain", "finetune"):  # the trainer's wall lies inside the stage's headings
            assert row["stages_s"][stage] >= row[stage]["timings"]["wall_s"] and 0 < row[stage]["around_step"] < 1
    assert not (trained / "runs").exists() and not cfg.locations.shards_manifest("language").exists()


def test_load_cost_times_loads_with_and_without_the_weights_check_and_leaves_it_in_place(with_model):
    out = bench("load_cost.py", str(with_model / "acm.toml"), "1")
    assert [(r["round"], r["checked"]) for r in out["rounds"]] == [(0, True), (0, False)]
    assert all(r["s"] > 0 for r in out["rounds"]) and out["largest"] > 0 and out["preset"] == "nano"
