"""Cluster job files: a Slurm job array or a Kubernetes Indexed Job for the corpus shards, then one
assemble job that runs `corpus assemble`, trains and bundles (`ensemble-kit pipeline` adopting the run).

Every task runs `ensemble-kit corpus --shard K/N` into one run directory on a shared filesystem; K is
the array index ($SLURM_ARRAY_TASK_ID) or the completion index ($JOB_COMPLETION_INDEX), N is written
into the file (not $SLURM_ARRAY_TASK_COUNT: a retry of one index, `sbatch --array=3`, has a count of 1).
Shard K takes grid cells K, K+N, K+2N, ... (`kit.corpus.grid.shard_cells`), so N tasks cover every cell
exactly once. Every task must plan the same grid, so the encoders are always named (a node's default
set depends on its hardware), and the assemble step refuses while a cell is missing.

The files are rendered from templates; every value is quoted for its language (shlex for the shell,
JSON strings for YAML, `$$` for Kubernetes' `$(VAR)` expansion), and `kit.cli.deploy` checks them
with `bash -n` / the YAML parser in the tests. See docs/cluster.md.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from kit import __version__
from kit.core.console import printable
from kit.core.errors import BadInput
from kit.core.fsio import write_text
from kit.corpus import encoders as enc_table
from kit.env.fingerprint import IMAGE_DIGEST_ENV

# Flags the job files set themselves (a --pipeline-args value may not set them again).
OWNED_FLAGS = ("--out-dir", "--ref-dir", "--demo", "--demo-size", "--demo-frames", "--encoders", "--cqs", "--jobs",
               "--width", "--height", "--pix-fmt", "--fps", "--fresh", "--shard")
DIGEST_RE = re.compile(r"@(sha256:[0-9a-f]{64})$")
K8S_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")  # DNS-1123 label, short enough for pod names
# Exit codes a retry cannot fix (kit.core.errors): bad input and missing prerequisites fail the index at once.
NO_RETRY_EXIT_CODES = (2, 3)


class Expanded(str):
    """A piece of a command line that the shell (or Kubernetes) must expand: never quoted."""


@dataclass(frozen=True)
class CorpusJob:
    """What every shard and the assemble job run: the same references, encoders and cqs."""

    out_dir: str  # the run directory, as the nodes see it (absolute)
    shards: int
    encoders: tuple[str, ...]
    cqs: tuple[int, ...] | None = None
    ref_dir: str | None = None  # None: the demo clips
    demo_size: str | None = None
    demo_frames: int | None = None
    raw_geometry: dict[str, Any] = field(default_factory=dict)  # --width/--height/--pix-fmt/--fps given
    pipeline_args: tuple[str, ...] = ()  # extra `ensemble-kit pipeline` flags for the assemble job

    def check(self) -> None:
        """Mistakes are bad input naming the flag, found before any file is written."""
        if self.shards < 1:
            raise BadInput(f"--shards {self.shards}: need at least 1", hint="e.g. --shards 16")
        if not self.encoders:
            raise BadInput("--encoders is required for a cluster run: every task must plan the same grid, and a "
                           "node's default encoders depend on its hardware", hint="e.g. --encoders libx264,libx265")
        for name in self.encoders:
            encoder = enc_table.get(name)
            for cq in self.cqs or ():
                encoder.check_cq(cq)
        for flag, value in (("--out-dir", self.out_dir), ("--ref-dir", self.ref_dir)):
            if value is not None and not PurePosixPath(value).is_absolute():
                raise BadInput(f"{flag} {value} is relative", hint="give the absolute path every node sees on the shared filesystem")
        for arg in self.pipeline_args:
            if arg.split("=", 1)[0] in OWNED_FLAGS:
                raise BadInput(f"--pipeline-args: {arg.split('=', 1)[0]} is set by the job files themselves",
                               hint="pass it as a flag of `ensemble-kit cluster` instead")

    def reference_args(self) -> list[str]:
        """The flags that decide the grid, identical for every shard and the assemble job."""
        refs = ["--ref-dir", self.ref_dir] if self.ref_dir is not None else ["--demo"]
        if self.ref_dir is None and self.demo_size:
            refs += ["--demo-size", self.demo_size]
        if self.ref_dir is None and self.demo_frames:
            refs += ["--demo-frames", str(self.demo_frames)]
        for key, value in sorted(self.raw_geometry.items()):
            if value is not None:
                refs += [f"--{key.replace('_', '-')}", str(value)]
        refs += ["--encoders", ",".join(self.encoders)]
        if self.cqs:
            refs += ["--cqs", ",".join(map(str, self.cqs))]
        return refs

    def corpus_argv(self, index: str, jobs: str) -> list[str]:
        return ["corpus", *self.reference_args(), "--shard", Expanded(f"{index}/{self.shards}"), "--out-dir", self.out_dir,
                "--jobs", Expanded(jobs), "--quiet"]

    def assemble_argv(self) -> list[str]:
        return ["corpus", "assemble", "--out-dir", self.out_dir]

    def pipeline_argv(self, jobs: str) -> list[str]:
        return ["pipeline", *self.reference_args(), "--out-dir", self.out_dir, "--jobs", Expanded(jobs), "--quiet",
                *self.pipeline_args]


def image_digest(image: str) -> str:
    """The `sha256:...` of an image reference pinned by digest; BadInput for a tag (not reproducible)."""
    found = DIGEST_RE.search(image)
    if not found:
        raise BadInput(f"--image {image} is not pinned by digest",
                       hint="use REPO@sha256:<digest> (after pushing: skopeo inspect --format '{{.Digest}}' docker://REPO:TAG)")
    return found.group(1)


def _sh(args: Sequence[str]) -> str:
    return " ".join(a if isinstance(a, Expanded) else shlex.quote(a) for a in args)


def _yaml(value: Any) -> str:
    """A YAML scalar: JSON strings and numbers are valid YAML 1.2 flow scalars."""
    return json.dumps(value)


def _k8s_arg(arg: str) -> str:
    """Kubernetes expands $(VAR) in args; a literal `$(` is written `$$(`."""
    return _yaml(arg if isinstance(arg, Expanded) else arg.replace("$(", "$$("))


def _header(kind: str, command: str) -> str:
    return (f"# ensemble-kit {__version__}: {kind}, written by\n#   {printable(command)}\n"
            "# Regenerate instead of editing where you can; docs/cluster.md explains every line.\n")


def _write_all(dest: Path, files: dict[str, str], *, force: bool, executable: Sequence[str]) -> list[Path]:
    """Write the job files; an existing file with other content is kept unless --force (it may hold edits)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = dest / name
        if path.is_file() and path.read_text(encoding="utf-8") != text and not force:
            raise BadInput(f"{path} exists with other content (edited by hand, or another run's)",
                           hint="pass --force to overwrite it, or another --dest")
    written = []
    for name, text in files.items():
        path = dest / name
        write_text(path, text)
        if name in executable:
            path.chmod(0o755)
        written.append(path)
    return written


# ---- Slurm ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlurmOptions:
    name: str = "ensemble-kit"
    partition: str | None = None
    account: str | None = None
    time: str = "04:00:00"
    cpus_per_task: int = 8
    mem: str = "16G"
    gres: str | None = None  # e.g. gpu:1 for NVENC nodes
    max_parallel: int | None = None  # the array's %M throttle
    extra_sbatch: tuple[str, ...] = ()  # more `#SBATCH` lines, e.g. --qos=high
    kit_command: str = "ensemble-kit"  # a venv or pixi env on the shared filesystem, e.g. "pixi run ensemble-kit"
    apptainer_image: str | None = None  # a .sif, or docker://REPO@sha256:...: run inside it


SLURM_ARRAY, SLURM_ASSEMBLE, SLURM_SUBMIT = "corpus-array.sbatch", "assemble.sbatch", "submit.sh"


def _sbatch_lines(opts: SlurmOptions, *, job: str, output: str, cpus: int) -> str:
    lines = [f"--job-name={opts.name}-{job}", f"--output={output}", f"--cpus-per-task={cpus}", f"--mem={opts.mem}",
             f"--time={opts.time}"]
    lines += [f"--{k}={v}" for k, v in (("partition", opts.partition), ("account", opts.account)) if v]
    if opts.gres and job == "corpus":
        lines.append(f"--gres={opts.gres}")
    lines += list(opts.extra_sbatch)
    for line in lines:
        if "\n" in line or not line.startswith("--"):
            raise BadInput(f"--sbatch-arg {line!r} is not one sbatch flag", hint="e.g. --sbatch-arg=--qos=high")
    return "".join(f"#SBATCH {line}\n" for line in lines)


def _slurm_kit(job: CorpusJob, opts: SlurmOptions) -> list[str]:
    """How a task starts the kit: the command on PATH, or inside the Apptainer image with the shared dirs bound."""
    if not opts.apptainer_image:
        return [Expanded(" ".join(shlex.quote(w) for w in shlex.split(opts.kit_command)))]
    binds = sorted({d for d in (str(PurePosixPath(job.out_dir).parent), job.ref_dir) if d})
    digest = DIGEST_RE.search(opts.apptainer_image)
    env = ["--env", f"{IMAGE_DIGEST_ENV}={digest.group(1)}"] if digest else []
    return ["apptainer", "exec", "--cleanenv", *env, "--bind", ",".join(binds), opts.apptainer_image, "ensemble-kit"]


def slurm_files(job: CorpusJob, opts: SlurmOptions, *, logs: Path, command: str) -> dict[str, str]:
    job.check()
    kit = _slurm_kit(job, opts)
    throttle = f"%{opts.max_parallel}" if opts.max_parallel else ""
    array = (
        "#!/bin/bash\n" + _header(f"Slurm job array, {job.shards} corpus shard(s)", command)
        + f"#SBATCH --array=0-{job.shards - 1}{throttle}\n"
        + _sbatch_lines(opts, job="corpus", output=f"{logs}/corpus-%A_%a.log", cpus=opts.cpus_per_task)
        + "#\n"
        "# Task K computes shard K/N of the grid into the run directory; finished cells are kept, so a\n"
        "# retried task only computes what is missing. Retry one failed index (then resubmit assemble.sbatch):\n"
        f"#   sbatch --array=<K> {SLURM_ARRAY}\n"
        "#   sbatch --dependency=afterok:<that job id> " + SLURM_ASSEMBLE + "\n"
        "set -euo pipefail\n"
        ': "${SLURM_ARRAY_TASK_ID:?submit with sbatch (or set SLURM_ARRAY_TASK_ID to run one shard by hand)}"\n'
        f"# N is fixed here, not $SLURM_ARRAY_TASK_COUNT: a retry of one index has a count of 1.\n"
        f"exec {_sh([*kit, *job.corpus_argv('${SLURM_ARRAY_TASK_ID}', '${SLURM_CPUS_PER_TASK:-1}')])}\n"
    )
    assemble = (
        "#!/bin/bash\n" + _header("Slurm assemble job (after every array task succeeded)", command)
        + _sbatch_lines(opts, job="assemble", output=f"{logs}/assemble-%j.log", cpus=opts.cpus_per_task)
        + "# A failed array task cancels this job instead of leaving it pending forever:\n"
        "#SBATCH --kill-on-invalid-dep=yes\n"
        "#\n"
        "# corpus assemble refuses (exit 4, naming the missing cells and their shards) while any cell is missing;\n"
        "# the pipeline then adopts the run directory: it reuses every cell, trains, decides and bundles.\n"
        "set -euo pipefail\n"
        f"{_sh([*kit, *job.assemble_argv()])}\n"
        "rc=0\n"
        f"{_sh([*kit, *job.pipeline_argv('${SLURM_CPUS_PER_TASK:-1}')])} || rc=$?\n"
        "# 0 PROMOTE and 1 HOLD are both results (the bundle is written); anything else failed.\n"
        'if [ "$rc" -le 1 ]; then exit 0; fi\n'
        'exit "$rc"\n'
    )
    submit = (
        "#!/bin/bash\n" + _header("submits the array, then the assemble job after it", command)
        + "set -euo pipefail\n"
        'cd "$(dirname "$0")"\n'
        f"mkdir -p {shlex.quote(str(logs))} {shlex.quote(job.out_dir)}\n"
        f"array=$(sbatch --parsable {SLURM_ARRAY})\n"
        'array=${array%%;*}  # --parsable prints "jobid[;cluster]"\n'
        f'assemble=$(sbatch --parsable --dependency=afterok:"$array" {SLURM_ASSEMBLE})\n'
        f'echo "corpus array job $array ({job.shards} tasks), then assemble job ${{assemble%%;*}}"\n'
        f"echo logs: {shlex.quote(str(logs))} results: {shlex.quote(job.out_dir)}\n"
    )
    return {SLURM_ARRAY: array, SLURM_ASSEMBLE: assemble, SLURM_SUBMIT: submit}


def write_slurm(job: CorpusJob, opts: SlurmOptions, dest: Path, *, command: str, force: bool = False) -> list[Path]:
    dest = dest.resolve()
    files = slurm_files(job, opts, logs=dest / "logs", command=command)
    return _write_all(dest, files, force=force, executable=tuple(files))


# ---- Kubernetes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class K8sOptions:
    image: str  # REPO@sha256:... (by digest: the fingerprint records it)
    pvc: str  # the shared volume: a ReadWriteMany PersistentVolumeClaim holding refs and runs
    name: str = "ensemble-kit"
    namespace: str | None = None
    mount: str = "/data"  # where the PVC is mounted in every pod
    cpu: int = 4
    memory: str = "8Gi"
    parallelism: int | None = None  # pods at once (default: every shard)
    backoff_limit_per_index: int = 2
    gpu_resource: str | None = None  # e.g. nvidia.com/gpu or gpu.intel.com/i915
    supplemental_groups: tuple[int, ...] = ()  # the host's render group for /dev/dri
    run_as_user: int = 1000

    def check(self, job: CorpusJob) -> None:
        image_digest(self.image)
        if not K8S_NAME_RE.match(self.name):
            raise BadInput(f"--name {self.name!r} is not a Kubernetes name",
                           hint="lower-case letters, digits and '-', at most 40 characters")
        mount = PurePosixPath(self.mount)
        for flag, value in (("--out-dir", job.out_dir), ("--ref-dir", job.ref_dir)):
            if value is not None and not PurePosixPath(value).is_relative_to(mount):
                raise BadInput(f"{flag} {value} is not on the shared volume (mounted at {self.mount})",
                               hint=f"put it under {self.mount}/, or pass --mount")


K8S_CORPUS, K8S_ASSEMBLE, K8S_SUBMIT = "corpus-job.yaml", "assemble-job.yaml", "submit.sh"
STATE_JSONPATH = 'jsonpath={.status.conditions[?(@.status=="True")].type}'


def _pod_spec(job: CorpusJob, opts: K8sOptions, *, container: str, args: Sequence[str], command: Sequence[str] = (),
              gpu: bool) -> str:
    """The pod template both Jobs share: non-root, read-only root, the PVC and a writable /tmp."""
    groups = f"\n        supplementalGroups: [{', '.join(map(str, opts.supplemental_groups))}]" if opts.supplemental_groups else ""
    limits = f"\n              {_yaml(opts.gpu_resource)}: 1" if gpu and opts.gpu_resource else ""
    cmd = ("\n          command: [" + ", ".join(map(_yaml, command)) + "]") if command else ""
    return f"""\
    spec:
      restartPolicy: Never
      securityContext:
        runAsNonRoot: true
        runAsUser: {opts.run_as_user}
        runAsGroup: {opts.run_as_user}
        fsGroup: {opts.run_as_user}{groups}
      containers:
        - name: {container}
          image: {_yaml(opts.image)}{cmd}
          args: [{", ".join(map(_k8s_arg, args))}]
          env:
            # the image cannot hold its own digest: the launcher says which image this is (host fingerprint)
            - {{name: {IMAGE_DIGEST_ENV}, value: {_yaml(image_digest(opts.image))}}}
            - {{name: XDG_CACHE_HOME, value: "/tmp/cache"}}
            - {{name: MPLCONFIGDIR, value: "/tmp/matplotlib"}}
          resources:
            requests: {{cpu: {_yaml(str(opts.cpu))}, memory: {_yaml(opts.memory)}}}
            limits:
              memory: {_yaml(opts.memory)}{limits}
          securityContext:
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities: {{drop: ["ALL"]}}
          volumeMounts:
            - {{name: shared, mountPath: {_yaml(opts.mount)}}}
            - {{name: tmp, mountPath: "/tmp"}}
      volumes:
        - name: shared
          persistentVolumeClaim: {{claimName: {_yaml(opts.pvc)}}}
        - name: tmp
          emptyDir: {{}}
"""


def _metadata(opts: K8sOptions, name: str) -> str:
    ns = f"\n  namespace: {_yaml(opts.namespace)}" if opts.namespace else ""
    return (f"metadata:\n  name: {_yaml(name)}{ns}\n  labels:\n    app.kubernetes.io/name: ensemble-kit\n"
            f"    ensemble-kit/run: {_yaml(opts.name)}\n")


def k8s_files(job: CorpusJob, opts: K8sOptions, *, command: str) -> dict[str, str]:
    job.check()
    opts.check(job)
    corpus_name, assemble_name = f"{opts.name}-corpus", f"{opts.name}-assemble"
    parallelism = min(opts.parallelism or job.shards, job.shards)
    corpus = (
        _header(f"Kubernetes Indexed Job, {job.shards} corpus shard(s)", command)
        + "# Index K runs shard K/N ($(JOB_COMPLETION_INDEX), which the Job controller sets) into the run\n"
        "# directory on the shared volume. A failed index is retried up to backoffLimitPerIndex times while\n"
        "# the others go on; exit 2 (bad input) or 3 (prerequisites) fails the index at once (a retry cannot\n"
        "# fix it). To retry failed indexes later: kubectl delete -f " + K8S_CORPUS + " && kubectl apply -f "
        + K8S_CORPUS + "\n# (finished cells are reused, so only the missing ones are computed).\n"
        "apiVersion: batch/v1\nkind: Job\n" + _metadata(opts, corpus_name)
        + f"spec:\n  completionMode: Indexed\n  completions: {job.shards}\n  parallelism: {parallelism}\n"
        f"  backoffLimitPerIndex: {opts.backoff_limit_per_index}\n"
        f"  maxFailedIndexes: {job.shards}\n"
        "  podFailurePolicy:\n    rules:\n      - action: FailIndex\n        onExitCodes:\n"
        f"          containerName: corpus\n          operator: In\n          values: [{', '.join(map(str, NO_RETRY_EXIT_CODES))}]\n"
        "  template:\n    metadata:\n      labels:\n        app.kubernetes.io/name: ensemble-kit\n"
        f"        ensemble-kit/run: {_yaml(opts.name)}\n"
        + _pod_spec(job, opts, container="corpus", args=job.corpus_argv("$(JOB_COMPLETION_INDEX)", str(opts.cpu)), gpu=True)
    )
    script = (f"{_sh(['ensemble-kit', *job.assemble_argv()])}\nrc=0\n"
              f"{_sh(['ensemble-kit', *job.pipeline_argv(str(opts.cpu))])} || rc=$?\n"
              '# 0 PROMOTE and 1 HOLD are both results (the bundle is written)\nif [ "$rc" -le 1 ]; then exit 0; fi\nexit "$rc"\n')
    assemble = (
        _header("Kubernetes assemble Job (apply after the corpus Job completed)", command)
        + "# corpus assemble refuses (exit 4, naming the missing cells and their shards) while any cell is\n"
        "# missing; the pipeline then adopts the run directory: it reuses every cell, trains and bundles.\n"
        "apiVersion: batch/v1\nkind: Job\n" + _metadata(opts, assemble_name)
        + "spec:\n  backoffLimit: 1\n  template:\n    metadata:\n      labels:\n        app.kubernetes.io/name: ensemble-kit\n"
        f"        ensemble-kit/run: {_yaml(opts.name)}\n"
        + _pod_spec(job, opts, container="assemble", command=["/bin/sh", "-ec"], args=[script], gpu=False)
    )
    ns = ["--namespace", opts.namespace] if opts.namespace else []
    submit = (
        "#!/bin/bash\n" + _header("applies the corpus Job, waits for it, then applies the assemble Job", command)
        + "set -euo pipefail\n"
        'cd "$(dirname "$0")"\n'
        f"{_sh(['kubectl', *ns, 'apply', '-f', K8S_CORPUS])}\n"
        "# wait until the Job is Complete (every index succeeded) or Failed (an index used up its retries)\n"
        "while :; do\n"
        f"  state=$({_sh(['kubectl', *ns, 'get', 'job/' + corpus_name, '-o', STATE_JSONPATH])})\n"
        '  case " $state " in\n'
        f"    *' Complete '*) {_sh(['kubectl', *ns, 'apply', '-f', K8S_ASSEMBLE])}; exit 0 ;;\n"
        "    *' Failed '*)\n"
        f"      echo \"corpus job failed; failed indexes: $({_sh(['kubectl', *ns, 'get', 'job/' + corpus_name, '-o', 'jsonpath={.status.failedIndexes}'])})\" >&2\n"
        f"      echo 'retry: kubectl delete -f {K8S_CORPUS} && ./{K8S_SUBMIT} (finished cells are reused)' >&2\n"
        "      exit 1 ;;\n"
        "  esac\n"
        "  sleep 30\n"
        "done\n"
    )
    return {K8S_CORPUS: corpus, K8S_ASSEMBLE: assemble, K8S_SUBMIT: submit}


def write_k8s(job: CorpusJob, opts: K8sOptions, dest: Path, *, command: str, force: bool = False) -> list[Path]:
    files = k8s_files(job, opts, command=command)
    return _write_all(dest.resolve(), files, force=force, executable=(K8S_SUBMIT,))
