"""`ensemble-kit cluster slurm|k8s`: the job files, parsed (bash -n, YAML) and run for real with local
processes standing in for array tasks / completion indexes."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from kit.cli import main
from kit.core.errors import ExitCode
from kit.core.rundir import RunDir
from kit.corpus import engine, sources, table
from kit.deploy import cluster

DIGEST = "sha256:" + "ab" * 32
IMAGE = f"registry.example/ensemble-kit@{DIGEST}"
KIT = f"{shlex.quote(sys.executable)} -m kit"  # the test's interpreter stands in for `ensemble-kit` on PATH


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_KIT_CACHE", str(tmp_path / "cache"))


def _cli(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    return result


def _slurm(dest: Path, n: int, *extra: str, refs: str = "/shared/refs", out: str = "/shared/runs/r1"):
    return _cli("cluster", "slurm", "--ref-dir", refs, "--encoders", "libx264,libx265", "--cqs", "25,37",
                "--shards", str(n), "--out-dir", out, "--partition", "cpu", "--dest", str(dest), *extra)


def _k8s(dest: Path, n: int, *extra: str):
    return _cli("cluster", "k8s", "--ref-dir", "/data/refs", "--encoders", "libx264", "--shards", str(n),
                "--out-dir", "/data/runs/r1", "--image", IMAGE, "--pvc", "ek-shared", "--dest", str(dest), *extra)


def _sbatch_directives(text: str) -> dict[str, str]:
    """The #SBATCH flags sbatch reads: those before the first command line."""
    found = {}
    for line in text.splitlines()[1:]:
        if line.startswith("#SBATCH "):
            key, _, value = line[len("#SBATCH "):].partition("=")
            found[key] = value
        elif line.strip() and not line.startswith("#"):
            break
    return found


@pytest.mark.parametrize("n", [1, 2, 7])
def test_slurm_files_parse_and_cover_every_shard(tmp_path, n):
    r = _slurm(tmp_path, n, "--max-parallel", "4", "--gres", "gpu:1", "--sbatch-arg=--qos=high",
               "--pipeline-args", "--seeds 0-4 --epochs 200")
    assert r.exit_code == 0, r.output
    for name in (cluster.SLURM_ARRAY, cluster.SLURM_ASSEMBLE, cluster.SLURM_SUBMIT):
        subprocess.run(["bash", "-n", str(tmp_path / name)], check=True)
    array_text = (tmp_path / cluster.SLURM_ARRAY).read_text()
    array = _sbatch_directives(array_text)
    assert array["--array"] == f"0-{n - 1}%4" and array["--cpus-per-task"] == "8" and array["--partition"] == "cpu"
    assert array["--output"] == f"{tmp_path}/logs/corpus-%A_%a.log"  # one log per task
    assert array["--gres"] == "gpu:1" and array["--qos"] == "high" and array["--time"] and array["--mem"]
    assert "sbatch --array=<K>" in array_text  # how to retry one failed index
    command = array_text.strip().splitlines()[-1]
    assert f"--shard ${{SLURM_ARRAY_TASK_ID}}/{n} " in command and "SLURM_ARRAY_TASK_COUNT" not in command
    assert "--encoders libx264,libx265 --cqs 25,37" in command and "--out-dir /shared/runs/r1" in command
    assemble_text = (tmp_path / cluster.SLURM_ASSEMBLE).read_text()
    assemble = _sbatch_directives(assemble_text)
    assert assemble["--kill-on-invalid-dep"] == "yes" and "--array" not in assemble and "--gres" not in assemble
    assert "corpus assemble --out-dir /shared/runs/r1\n" in assemble_text
    assert re.search(r"pipeline --ref-dir /shared/refs .*--out-dir /shared/runs/r1 .*--seeds 0-4 --epochs 200", assemble_text)
    submit = (tmp_path / cluster.SLURM_SUBMIT).read_text()
    assert "--dependency=afterok:\"$array\" assemble.sbatch" in submit and "sbatch --parsable corpus-array.sbatch" in submit


def test_slurm_quotes_paths_and_refuses_what_would_split_the_grid(tmp_path):
    odd = "/shared/runs/it's $(rm -rf ~) `x`"
    r = _slurm(tmp_path / "a", 2, out=odd)
    assert r.exit_code == 0, r.output
    for name in (cluster.SLURM_ARRAY, cluster.SLURM_ASSEMBLE, cluster.SLURM_SUBMIT):
        text = (tmp_path / "a" / name).read_text()
        lines = [line for line in text.splitlines() if "/shared/runs/it" in line and not line.startswith("#")]
        assert lines and all(odd in shlex.split(line) for line in lines)  # one word each time, nothing expanded
    no_encoders = _cli("cluster", "slurm", "--demo", "--shards", "2", "--out-dir", "/x", "--dest", str(tmp_path / "b"))
    assert no_encoders.exit_code == ExitCode.BAD_INPUT and "--encoders is required" in no_encoders.output
    relative = _slurm(tmp_path / "c", 2, out="runs/x")
    assert relative.exit_code == ExitCode.BAD_INPUT and "relative" in relative.output
    owned = _slurm(tmp_path / "d", 2, "--pipeline-args", "--out-dir /elsewhere")
    assert owned.exit_code == ExitCode.BAD_INPUT and "--pipeline-args" in owned.output
    typo = _slurm(tmp_path / "e", 2, "--pipeline-args", "--epochs many")
    assert typo.exit_code == ExitCode.BAD_INPUT and "--epochs" in typo.output
    assert _slurm(tmp_path / "a", 2).exit_code == ExitCode.BAD_INPUT  # another run's files: kept unless --force
    assert _slurm(tmp_path / "a", 2, "--force").exit_code == 0


@pytest.mark.parametrize("n", [1, 2, 7])
def test_k8s_indexed_job_and_assemble_job(tmp_path, n):
    r = _k8s(tmp_path, n, "--gpu-resource", "gpu.intel.com/i915", "--supplemental-group", "109")
    assert r.exit_code == 0, r.output
    job = yaml.safe_load((tmp_path / cluster.K8S_CORPUS).read_text())
    spec = job["spec"]
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert spec["completionMode"] == "Indexed" and spec["completions"] == n and spec["parallelism"] == n
    assert spec["backoffLimitPerIndex"] == 2 and spec["podFailurePolicy"]["rules"][0]["action"] == "FailIndex"
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["supplementalGroups"] == [109]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE and container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["ENSEMBLE_KIT_IMAGE_DIGEST"] == DIGEST and env["XDG_CACHE_HOME"].startswith("/tmp")
    args = container["args"]
    assert args[0] == "corpus" and args[args.index("--shard") + 1] == f"$(JOB_COMPLETION_INDEX)/{n}"
    assert container["resources"]["limits"]["gpu.intel.com/i915"] == 1
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts == {"shared": "/data", "tmp": "/tmp"} and volumes["shared"]["persistentVolumeClaim"]["claimName"] == "ek-shared"
    assemble = yaml.safe_load((tmp_path / cluster.K8S_ASSEMBLE).read_text())
    (container,) = assemble["spec"]["template"]["spec"]["containers"]
    assert "completionMode" not in assemble["spec"] and container["image"] == IMAGE
    script = container["args"][0]
    subprocess.run(["bash", "-n", "-c", script], check=True)
    assert script.startswith("ensemble-kit corpus assemble --out-dir /data/runs/r1\n") and "ensemble-kit pipeline" in script
    assert "gpu.intel.com/i915" not in container["resources"]["limits"]
    subprocess.run(["bash", "-n", str(tmp_path / cluster.K8S_SUBMIT)], check=True)


def test_k8s_refuses_a_tag_and_paths_off_the_volume(tmp_path):
    tag = _cli("cluster", "k8s", "--ref-dir", "/data/refs", "--encoders", "libx264", "--shards", "2", "--out-dir",
               "/data/r", "--image", "registry.example/ek:latest", "--pvc", "p", "--dest", str(tmp_path))
    assert tag.exit_code == ExitCode.BAD_INPUT and "not pinned by digest" in tag.output
    off = _cli("cluster", "k8s", "--ref-dir", "/elsewhere/refs", "--encoders", "libx264", "--shards", "2", "--out-dir",
               "/data/r", "--image", IMAGE, "--pvc", "p", "--dest", str(tmp_path))
    assert off.exit_code == ExitCode.BAD_INPUT and "not on the shared volume" in off.output
    odd = _cli("cluster", "k8s", "--ref-dir", "/data/$(HOME)", "--encoders", "libx264", "--shards", "2", "--out-dir",
               "/data/r", "--image", IMAGE, "--pvc", "p", "--dest", str(tmp_path))
    assert odd.exit_code == 0, odd.output
    args = yaml.safe_load((tmp_path / cluster.K8S_CORPUS).read_text())["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "/data/$$(HOME)" in args  # Kubernetes would expand $(HOME); $$ keeps it literal


def test_slurm_array_run_by_local_processes_then_assemble(tmp_path, tiny_refs, kit_ffmpeg):
    """The generated array script itself, run as N local processes (SLURM_ARRAY_TASK_ID set by hand)."""
    out, n = tmp_path / "run", 3
    r = _cli("cluster", "slurm", "--ref-dir", str(tiny_refs), "--encoders", "libx264", "--cqs", "25,37", "--shards",
             str(n), "--out-dir", str(out), "--kit-command", KIT, "--dest", str(tmp_path / "slurm"))
    assert r.exit_code == 0, r.output
    script = tmp_path / "slurm" / cluster.SLURM_ARRAY
    tasks = [subprocess.Popen(["bash", str(script)], env={"PATH": "/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": str(k),
                                                          "SLURM_CPUS_PER_TASK": "1", "ENSEMBLE_KIT_CACHE": str(tmp_path / "cache")},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for k in range(n)]
    for task in tasks:
        _, err = task.communicate(timeout=180)
        assert task.returncode == 0, err
    rd = RunDir(out)
    assert not rd.corpus.exists()  # no task assembles
    assert sum(json.loads(rd.corpus_summary((k, n)).read_text())["planned"] for k in range(n)) == 4
    done = _cli("corpus", "assemble", "--out-dir", str(out), "--json")
    assert done.exit_code == 0, done.output
    single = RunDir(tmp_path / "single")
    engine.run_corpus(single, sources.discover(tiny_refs, ff=kit_ffmpeg), ["libx264"], [25, 37], ff=kit_ffmpeg)
    assert json.loads(done.stdout)["corpus_sha256"] == table.corpus_sha256(pd.read_parquet(single.corpus))


@pytest.mark.slow
def test_k8s_indexes_then_the_assemble_job_reproduce_a_single_box_pipeline(tmp_path, tiny_pipeline_args):
    """The Indexed Job's args (with $(JOB_COMPLETION_INDEX) expanded as the kubelet does) as local processes, then
    the assemble Job's script (corpus assemble + pipeline adopting the run): compare says REPRODUCED."""
    single = tmp_path / "single"
    assert _cli("pipeline", *tiny_pipeline_args, "--out-dir", str(single)).exit_code == 0
    opts = dict(zip(tiny_pipeline_args[::2], tiny_pipeline_args[1::2], strict=True))
    train = [a for k, v in opts.items() if k not in ("--demo-size", "--demo-frames", "--encoders", "--cqs") for a in (k, v)]
    out = tmp_path / "data" / "run"
    r = _cli("cluster", "k8s", "--demo", "--demo-size", opts["--demo-size"], "--demo-frames", opts["--demo-frames"],
             "--encoders", opts["--encoders"], "--cqs", opts["--cqs"], "--shards", "2", "--out-dir", str(out),
             "--image", IMAGE, "--pvc", "p", "--mount", str(tmp_path / "data"), "--cpu", "1",
             "--pipeline-args", shlex.join(train), "--dest", str(tmp_path / "k8s"))
    assert r.exit_code == 0, r.output
    job = yaml.safe_load((tmp_path / "k8s" / cluster.K8S_CORPUS).read_text())
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    pods = [subprocess.Popen([sys.executable, "-m", "kit", *(a.replace("$(JOB_COMPLETION_INDEX)", str(k)) for a in args)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for k in range(2)]
    for pod in pods:
        _, err = pod.communicate(timeout=300)
        assert pod.returncode == 0, err
    assemble = yaml.safe_load((tmp_path / "k8s" / cluster.K8S_ASSEMBLE).read_text())
    script = assemble["spec"]["template"]["spec"]["containers"][0]["args"][0]
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "ensemble-kit").write_text(f"#!/bin/sh\nexec {KIT} \"$@\"\n")
    (shim / "ensemble-kit").chmod(0o755)
    done = subprocess.run(["sh", "-ec", script], env={"PATH": f"{shim}:/usr/bin:/bin",
                                                      "ENSEMBLE_KIT_CACHE": str(tmp_path / "cache")},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (bundle,) = out.glob("ensemble-results-*.tar.gz")
    compared = _cli("compare", str(single), str(bundle))
    assert compared.exit_code == 0 and "REPRODUCED" in compared.output, compared.output
    shutil.rmtree(tmp_path / "data", ignore_errors=True)


def test_the_pipeline_adopts_a_corpus_run_but_nothing_else(tmp_path):
    """What the assemble job relies on: `pipeline` may start in a directory the shards filled."""
    from kit import pipeline
    from kit.core.errors import BadInput

    shards = RunDir(tmp_path / "shards")
    shards.cells_dir.mkdir(parents=True)
    shards.grid_json.write_text("{}")
    shards.corpus.write_bytes(b"assembled")
    rd, resumed = pipeline.prepare_run_dir(pipeline.PipelineOptions(out_dir=shards.root), {}, {}, "fp")
    assert not resumed and rd.run_json.is_file()
    other = tmp_path / "other"
    (other / "corpus" / "cells").mkdir(parents=True)  # cells but no grid.json: not a corpus run
    with pytest.raises(BadInput, match="holds no pipeline run"):
        pipeline.prepare_run_dir(pipeline.PipelineOptions(out_dir=other), {}, {}, "fp")
    (tmp_path / "mixed" / "corpus").mkdir(parents=True)
    (tmp_path / "mixed" / "corpus" / "grid.json").write_text("{}")
    (tmp_path / "mixed" / "notes.txt").write_text("mine")
    with pytest.raises(BadInput, match="notes.txt"):
        pipeline.prepare_run_dir(pipeline.PipelineOptions(out_dir=tmp_path / "mixed"), {}, {}, "fp")
