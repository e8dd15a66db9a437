"""A real single-node SLURM (slurmctld + slurmd + munged on localhost, started here): sweeps, requeue, DDP.

Skipped where Debian's slurm-wlm and munge are not installed or we are not root; .ci/run installs them.
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers import BIN, TINY, read_summary, run_cli

SCRIPT = Path(__file__).resolve().parents[1] / "scripts/slurm_local.sh"
pytestmark = [
    pytest.mark.slow,  # real SLURM jobs: subprocesses
    pytest.mark.skipif(
        not (shutil.which("slurmctld") and shutil.which("munged")) or os.geteuid() != 0,
        reason="needs Debian's slurm-wlm and munge, and root (.ci/run installs them)",
    ),
]
# The preset's trainer.devices follows hydra.launcher.tasks_per_node: keep TINY's devices=1 out of it.
TINY = [o for o in TINY if not o.startswith("trainer.devices")]
LAUNCHER = ["+cluster=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "trainer.accelerator=cpu"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slurm")
    subprocess.run(["bash", SCRIPT, "start", folder], check=True, start_new_session=True, timeout=120)
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf"), "PYTHONPATH": str(Path(__file__).parent)}
    yield env
    subprocess.run(["bash", SCRIPT, "stop", folder], check=False)


def _start_when_requeued(job: str, env: dict, cli: subprocess.Popen) -> None:
    """SLURM holds a requeued job back for a while (BeginTime); let it start now, as a quiet cluster would."""
    deadline = time.time() + 60
    while time.time() < deadline and cli.poll() is None:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True, env=env)
        if "PENDING" in state.stdout:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False, env=env)
            return
        time.sleep(0.5)


def _interrupted_trial(env: dict, sweep: Path, epochs: int, interrupt: list[str]) -> tuple[Path, str]:
    """A one-trial SLURM sweep; once it has a checkpoint, run ``interrupt + [job id]``, let the requeued job start
    and wait for it to finish. Returns the run folder and the job id."""
    run = sweep / "0"
    cli = subprocess.Popen(
        [
            BIN / "transferlab-train",
            *TINY,
            *LAUNCHER,
            f"trainer.max_epochs={epochs}",
            "test=false",
            # Tiny epochs take half a second: keep the job running until the interrupt has landed.
            "+callbacks.slow._target_=helpers.SlowEpochs",
            "+callbacks.slow.seconds=1",
            f"hydra.sweep.dir={sweep}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    deadline = time.time() + 180
    while not (run / "checkpoints/last.ckpt").exists():
        assert time.time() < deadline and cli.poll() is None, "the job wrote no checkpoint"
        time.sleep(0.5)
    job = read_summary(run)["slurm_job_id"]
    subprocess.run([*interrupt, job], check=True, env=env)
    _start_when_requeued(job, env, cli)
    output, _ = cli.communicate(timeout=300)
    assert cli.returncode == 0, output[-3000:]
    return run, job


def test_two_trial_sweep_runs_as_slurm_jobs(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "transferlab-train",
        *TINY,
        *LAUNCHER,
        "optimizer.lr=1e-3,2e-3",
        f"hydra.sweep.dir={sweep}",
        env=slurm,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [read_summary(sweep / job) for job in ("0", "1")]
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    job_ids = {s["slurm_job_id"] for s in summaries}
    assert len(job_ids) == 2 and None not in job_ids  # one SLURM job per trial


def test_requeued_job_resumes_from_its_last_checkpoint(slurm, tmp_path):
    run, job = _interrupted_trial(slurm, tmp_path / "sweep", epochs=6, interrupt=["scontrol", "requeue"])
    summary = read_summary(run)
    assert summary["status"] == "completed" and summary["slurm_job_id"] == job
    assert summary["resumed_from"] == str(run / "checkpoints/last.ckpt")
    assert summary["epochs"] == 6  # the history came back with the checkpoint: every epoch counted once
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["epoch"] == 5


def test_one_trial_as_two_tasks_with_ddp(slurm, tmp_path):
    sweep, weights = tmp_path / "sweep", tmp_path / "weights"
    result = run_cli(
        "transferlab-train",
        *TINY,
        *LAUNCHER,
        "hydra.launcher.tasks_per_node=2",
        "trainer.strategy=ddp",
        "schedule=gradual",
        "trainer.max_epochs=2",
        "+callbacks.save._target_=helpers.SaveEpochWeights",
        f"+callbacks.save.dirpath={weights}",
        f"hydra.sweep.dir={sweep}",
        env=slurm,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_summary(sweep / "0")["status"] == "completed"
    ranks = [torch.load(weights / f"rank{r}_epoch1.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    first = torch.load(weights / "rank0_epoch0.pt", weights_only=True)
    key = "backbone.layer4.0.conv1.weight"  # unfrozen at epoch 1 by the gradual schedule
    assert not torch.equal(ranks[0][key], first[key])


def test_time_limit_signal_checkpoints_requeues_and_resumes(slurm, tmp_path):
    """SIGUSR1, as SLURM sends it signal_delay_s before the time limit: Lightning saves hpc_ckpt_1.ckpt and
    requeues the job itself; the job starts again in its folder and resumes from that checkpoint."""
    run, job = _interrupted_trial(slurm, tmp_path / "sweep", epochs=8, interrupt=["scancel", "--signal=USR1"])
    summary = read_summary(run)
    assert summary["status"] == "completed" and summary["slurm_job_id"] == job
    assert summary["resumed_from"] == str(run / "hpc_ckpt_1.ckpt")
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["epoch"] == 7
