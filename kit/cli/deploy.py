"""`ensemble-kit cluster slurm|k8s` (job files for the corpus shards and the assemble job) and
`ensemble-kit image build` (OCI images, no daemon)."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kit.cli.options import (
    EPILOG_EXIT_CODES,
    demo_options,
    encoder_options,
    encoders_and_cqs,
    geometry,
    geometry_options,
    json_option,
    references,
)
from kit.cli.output import emit, note
from kit.cli.pipeline import pipeline_cmd
from kit.core.errors import BadInput


def _job_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The corpus every task computes and where the files go (shared by slurm and k8s)."""
    for decorator in reversed((
        click.option("--ref-dir", help="Reference clips, as an absolute path the nodes see."),
        demo_options(demo_help="Use the built-in demo clips (each node makes the same ones)."),
        geometry_options(),
        encoder_options(encoders_help="Comma-separated encoders (required: every task must plan the same grid)."),
        click.option("--shards", type=click.IntRange(min=1), required=True,
                     help="Number of tasks N; task K computes shard K/N (cells K, K+N, ...)."),
        click.option("--out-dir", required=True, help="The run directory on the shared filesystem (absolute path)."),
        click.option("--pipeline-args", default="", help="Extra `ensemble-kit pipeline` flags for the assemble job, "
                     "e.g. '--seeds 0-4 --epochs 200'."),
        click.option("--dest", type=click.Path(path_type=Path), default=Path("cluster"), show_default=True,
                     help="Folder to write the job files into."),
        click.option("--force", is_flag=True, help="Overwrite job files that exist with other content."),
        json_option("Print the written files as JSON."),
    )):
        fn = decorator(fn)
    return fn


def _corpus_job(kw: dict[str, Any]) -> Any:
    from kit.deploy.cluster import CorpusJob  # light, but only these commands need it

    ref_dir = references(kw.pop("demo"), kw.pop("ref_dir"), demo_by_default=False)
    names, cqs = encoders_and_cqs(kw.pop("encoders"), kw.pop("cqs"))
    extra = tuple(shlex.split(kw.pop("pipeline_args") or ""))
    try:  # the assemble job's pipeline flags are checked now, not hours later on the cluster
        pipeline_cmd.make_context("pipeline", ["--out-dir", "x", *extra], resilient_parsing=False)
    except click.ClickException as exc:
        raise BadInput(f"--pipeline-args: {exc.format_message()}", hint="see `ensemble-kit pipeline --help`") from None
    return CorpusJob(out_dir=kw.pop("out_dir"), shards=kw.pop("shards"), encoders=names or (), cqs=cqs,
                     ref_dir=str(ref_dir) if ref_dir is not None else None, demo_size=kw.pop("demo_size"),
                     demo_frames=kw.pop("demo_frames"),
                     raw_geometry={k: v for k, v in geometry(kw.pop("width"), kw.pop("height"), kw.pop("pix_fmt"),
                                                             kw.pop("fps")).items() if v is not None},
                     pipeline_args=extra)


def _command_line() -> str:
    return "ensemble-kit " + shlex.join(sys.argv[1:])


def _report(paths: list[Path], as_json: bool, submit: str) -> None:
    emit({"files": [str(p) for p in paths]}, as_json, text=[str(p) for p in paths])
    if not as_json:
        note(f"submit with: {submit}  (docs/cluster.md: shared filesystem, retries)")


@click.group("cluster")
def cluster_group() -> None:
    """Job files that run the corpus as N shards on a cluster, then assemble, train and bundle once."""


@cluster_group.command("slurm", epilog=EPILOG_EXIT_CODES)
@_job_options
@click.option("--partition", help="#SBATCH --partition.")
@click.option("--account", help="#SBATCH --account.")
@click.option("--time", "time_limit", default="04:00:00", show_default=True, help="Time limit per task.")
@click.option("--cpus-per-task", type=click.IntRange(min=1), default=8, show_default=True,
              help="Cores per task (the corpus runs one cell per core).")
@click.option("--mem", default="16G", show_default=True, help="Memory per task.")
@click.option("--gres", help="Generic resources of each array task, e.g. gpu:1 for NVENC.")
@click.option("--max-parallel", type=click.IntRange(min=1), help="Array tasks running at once (the %M throttle).")
@click.option("--sbatch-arg", "sbatch_args", multiple=True, help="Another #SBATCH line, e.g. --sbatch-arg=--qos=high.")
@click.option("--kit-command", default="ensemble-kit", show_default=True,
              help="How nodes start the kit, e.g. 'pixi run --manifest-path /shared/ek/pixi.toml ensemble-kit'.")
@click.option("--apptainer", "apptainer_image", help="Run inside this image: a .sif, or docker://REPO@sha256:...")
def slurm_cmd(partition: str | None, account: str | None, time_limit: str, cpus_per_task: int, mem: str,
              gres: str | None, max_parallel: int | None, sbatch_args: tuple[str, ...], kit_command: str,
              apptainer_image: str | None, dest: Path, force: bool, as_json: bool, **kw: Any) -> None:
    """Write a Slurm job array (one task per shard) and an assemble job that runs after it (afterok).

    \b
    Example:
      ensemble-kit cluster slurm --ref-dir /shared/refs --encoders libx264,libx265 --shards 16 \\
          --out-dir /shared/runs/r1 --partition cpu --dest slurm/
      slurm/submit.sh
    """
    from kit.deploy import cluster  # the lock data and fingerprint constants: only when writing job files

    job = _corpus_job(kw)
    opts = cluster.SlurmOptions(partition=partition, account=account, time=time_limit, cpus_per_task=cpus_per_task,
                                mem=mem, gres=gres, max_parallel=max_parallel, extra_sbatch=sbatch_args,
                                kit_command=kit_command, apptainer_image=apptainer_image)
    paths = cluster.write_slurm(job, opts, dest, command=_command_line(), force=force)
    _report(paths, as_json, str(dest / cluster.SLURM_SUBMIT))


@cluster_group.command("k8s", epilog=EPILOG_EXIT_CODES)
@_job_options
@click.option("--image", required=True, help="The kit's image by digest: REPO@sha256:... (ensemble-kit image build, pushed).")
@click.option("--pvc", required=True, help="A ReadWriteMany PersistentVolumeClaim holding the references and runs.")
@click.option("--mount", default="/data", show_default=True, help="Where the PVC is mounted in every pod.")
@click.option("--name", default="ensemble-kit", show_default=True, help="Prefix of the Job names.")
@click.option("--namespace", help="Kubernetes namespace.")
@click.option("--cpu", type=click.IntRange(min=1), default=4, show_default=True, help="Cores per pod.")
@click.option("--memory", default="8Gi", show_default=True, help="Memory per pod.")
@click.option("--parallelism", type=click.IntRange(min=1), help="Pods at once (default: every shard).")
@click.option("--backoff-limit-per-index", type=click.IntRange(min=0), default=2, show_default=True,
              help="Retries of a failed index before it counts as failed.")
@click.option("--gpu-resource", help="One of this resource per corpus pod, e.g. nvidia.com/gpu or gpu.intel.com/i915.")
@click.option("--supplemental-group", "groups", type=int, multiple=True,
              help="Extra group id of the pods, e.g. the nodes' render group for /dev/dri (Intel).")
@click.option("--run-as-user", type=click.IntRange(min=1), default=1000, show_default=True, help="Non-root uid (and gid).")
def k8s_cmd(image: str, pvc: str, mount: str, name: str, namespace: str | None, cpu: int, memory: str,
            parallelism: int | None, backoff_limit_per_index: int, gpu_resource: str | None, groups: tuple[int, ...],
            run_as_user: int, dest: Path, force: bool, as_json: bool, **kw: Any) -> None:
    """Write a Kubernetes Indexed Job (one index per shard) and the assemble Job.

    \b
    Example:
      ensemble-kit cluster k8s --ref-dir /data/refs --encoders libx264 --shards 8 --out-dir /data/runs/r1 \\
          --image registry.example/ensemble-kit@sha256:<digest> --pvc ek-shared --dest k8s/
      k8s/submit.sh
    """
    from kit.deploy import cluster  # the lock data and fingerprint constants: only when writing job files

    job = _corpus_job(kw)
    opts = cluster.K8sOptions(image=image, pvc=pvc, mount=mount, name=name, namespace=namespace, cpu=cpu,
                              memory=memory, parallelism=parallelism, backoff_limit_per_index=backoff_limit_per_index,
                              gpu_resource=gpu_resource, supplemental_groups=groups, run_as_user=run_as_user)
    paths = cluster.write_k8s(job, opts, dest, command=_command_line(), force=force)
    _report(paths, as_json, str(dest / cluster.K8S_SUBMIT))


@click.group("image")
def image_group() -> None:
    """OCI images of the kit, built from the locks without a daemon (docs/cluster.md)."""


@image_group.command("build", epilog=EPILOG_EXIT_CODES)
@click.option("--env", "env", type=click.Choice(["cpu", "nvidia", "intel"]), default="cpu", show_default=True,
              help="cpu; nvidia (NVENC through the host driver); intel (VA-API/oneVPL runtime inside).")
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("images"), show_default=True,
              help="Folder for the image and its record (ensemble-kit-<env>.oci or .tar, ensemble-kit-<env>.json).")
@click.option("--format", "fmt", type=click.Choice(["oci", "docker-archive"]), default="oci", show_default=True,
              help="An OCI layout folder (skopeo/podman/buildah load it) or a docker-archive tarball (docker load).")
@click.option("--source", type=click.Path(path_type=Path), help="The kit's git checkout to build from (default: this one).")
@click.option("--rootfs", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A Debian rootfs tarball made earlier (default: the cached one, else mmdebstrap makes it).")
@click.option("--rebuild-rootfs", is_flag=True, help="Run mmdebstrap again (picks up Debian point releases).")
@json_option("Print digests, sizes and step times as JSON.")
def image_build_cmd(env: str, out: Path, fmt: str, source: Path | None, rootfs: Path | None, rebuild_rootfs: bool,
                    as_json: bool) -> None:
    """Build the kit's image reproducibly: mmdebstrap + buildah + skopeo, no daemon, no registry.

    The same checkout, locks and rootfs give the same digest. The image carries the digest of its
    inputs; pass its own digest when you run it (-e ENSEMBLE_KIT_IMAGE_DIGEST=...), so results record
    which image made them.

    \b
    Examples:
      ensemble-kit image build --out images/
      ensemble-kit image build --env intel --format docker-archive --out images/
      podman run --rm -v $PWD/runs:/work/runs oci:images/ensemble-kit-cpu.oci:cpu pipeline --demo --out-dir runs/demo
    """
    from kit.deploy import image  # heavy tools and the lock data: only for this command

    result = image.build_image(env, out, fmt=fmt, source=source, rootfs=rootfs, rebuild_rootfs=rebuild_rootfs,
                               say=lambda line: None if as_json else note(f"image: {line}"))
    emit(result.to_json(), as_json, text=[f"{result.env} image {result.manifest_digest} (config {result.config_digest})",
                                         *(f"  {k}: {v} ({result.sizes[k] / 1e6:.0f} MB)" for k, v in result.outputs.items()),
                                         f"  inputs {result.inputs_digest}; record {result.record}; "
                                         f"{result.seconds.get('total', 0):.0f} s"])


COMMANDS = (cluster_group, image_group)
