"""deploy/: the container image definition and the Kubernetes job stay consistent with the package
(no container tool or cluster is available here, so they are not built or applied): every command
they run parses with the package's own parsers, every path they copy exists and is what the
Makefile builds, every environment variable they set is one Esper reads; and the job's command runs
for real on this machine, 2 ranks under torchrun, with a local NATS server and S3 store."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_urza_s3 import ACCESS, SECRET, S3Server, free_port

from esper import cli, oona
from esper.urza import Urza

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
MANIFESTS = list(yaml.safe_load_all((DEPLOY / "k8s" / "esper-job.yaml").read_text()))


def containers() -> list[dict[str, Any]]:
    return [c for doc in MANIFESTS if doc["kind"] in ("Deployment", "Job")
            for c in doc["spec"]["template"]["spec"]["containers"]]


def train_parser() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_train", DEPLOY / "train.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parser()


def env_names() -> set[str]:
    """Every variable the image and the manifests set."""
    names = set(re.findall(r"^\s*(?:ENV\s+)?([A-Z][A-Z0-9_]+)=", DOCKERFILE, re.M))
    for doc in MANIFESTS:
        if doc["kind"] == "ConfigMap":
            names |= set(doc["data"])
    return names


def sources() -> str:
    """The package's Python and Go sources (the readers of the variables), tests excluded."""
    files = [*(ROOT / "python" / "esper").rglob("*.py"), *[p for d in ("capi", "core") for p in (ROOT / d).rglob("*.go")
                                                            if not p.name.endswith("_test.go")]]
    return "\n".join(p.read_text() for p in files)


def test_commands_parse_with_the_package() -> None:
    scripts = (ROOT / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^ENTRYPOINT \["esper"\]', DOCKERFILE, re.M)
    assert 'esper = "esper.cli:main"' in scripts and callable(cli.main)
    seen = set()
    for c in containers():
        cmd = c["command"]
        seen.add(cmd[0])
        if cmd[0] == "esper":
            args = cli.build_parser().parse_args(cmd[1:])
            assert args.fn is not None
            if cmd[1:3] == ["oona", "serve"]:
                # What `esper oona serve` would exec: accepted (a non-loopback host needs --allow-remote).
                oona.serve_command(args.host, args.port, args.store, args.allow_remote)
        elif cmd[0] == "torchrun":
            script = next(a for a in cmd[1:] if a.endswith(".py"))
            assert f"COPY deploy/train.py {script}" in DOCKERFILE
            train_parser().parse_args(cmd[cmd.index(script) + 1:])
        else:
            pytest.fail(f"unexpected command {cmd}")
    assert seen == {"esper", "torchrun"}
    # A wrong argument is caught (the check can fail).
    with pytest.raises(SystemExit):
        train_parser().parse_args(["--epochz", "3"])


def test_image_copies_what_the_build_makes() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in re.search(r"RUN make ([\w -]+)", DOCKERFILE).group(1).split():
        assert re.search(rf"^{target}:", makefile, re.M), f"make {target} is not a Makefile target"
    assert "NATS_SERVER := build/bin/esper-nats" in makefile
    assert "COPY --from=go /src/build/bin/esper-nats" in DOCKERFILE
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), f"the Dockerfile copies {path}, which is not in the repository"
    assert re.search(r"ESPER_NATS_SERVER=/usr/local/bin/esper-nats", DOCKERFILE)


def test_every_variable_is_one_esper_reads() -> None:
    names = env_names()
    assert {"ESPER_URZA_URL", "ESPER_S3_ENDPOINT", "ESPER_NATS_URL", "ESPER_NATS_SERVER", "ESPER_HOME"} <= names
    code = sources()
    for name in names:
        assert f'"{name}"' in code or f"`{name}`" in code, f"{name} is set by deploy/ but read nowhere in the package"
    secret_keys = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # from the esper-s3 Secret
    assert all(f'"{k}"' in code for k in secret_keys)
    assert any(r.get("secretRef", {}).get("name") == "esper-s3" for c in containers() for r in c.get("envFrom", []))
    # A misspelt variable is caught (the check can fail).
    assert '"ESPER_URZA_ULR"' not in code


@pytest.mark.slow
def test_the_jobs_command_runs_two_ranks_with_nats_and_s3(tmp_path: Path, esper_home: Path) -> None:
    """The Job's torchrun command with the ConfigMap's variables, its service addresses replaced by
    local servers: 2 ranks train, rank 0 records to the S3 store, both ranks publish to NATS."""
    s3 = S3Server(tmp_path / "s3")
    s3.start()
    nats_port = free_port()
    nats = subprocess.Popen(oona.serve_command("127.0.0.1", nats_port, tmp_path / "js"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        job = next(c for c in containers() if c["command"][0] == "torchrun")
        config = next(d for d in MANIFESTS if d["kind"] == "ConfigMap")["data"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ESPER_URZA", "ESPER_S3"))}
        env.update(config, ESPER_S3_ENDPOINT=s3.endpoint, ESPER_NATS_URL=f"nats://127.0.0.1:{nats_port}",
                   AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET, ESPER_HOME=str(esper_home),
                   PYTHONPATH=str(ROOT / "python"), OMP_NUM_THREADS="1")
        args = job["command"][1:]
        script = next(a for a in args if a.endswith(".py"))
        args = [str(DEPLOY / "train.py") if a == script else a for a in args]
        args[args.index("--checkpoint") + 1] = str(tmp_path / "ckpt" / "ckpt.pt")
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--master-port", str(free_port()),
                              *args], env=env, capture_output=True, text=True, timeout=400)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        epochs = int(args[args.index("--epochs") + 1])  # the Job's own length: Tamiyo plans with it
        assert f"epoch {epochs - 1}:" in run.stdout
        assert (tmp_path / "ckpt" / "ckpt.pt").exists()
        # The ranks' events reached NATS: JetStream holds Esper's stream.
        assert any(p.is_dir() for p in (tmp_path / "js").rglob("ESPER_EVENTS")), "no ESPER_EVENTS stream on NATS"
        # Rank 0's outcome records and builds are in the S3 store named by the ConfigMap.
        bucket, prefix = config["ESPER_URZA_URL"].removeprefix("s3://").split("/", 1)
        stored = tmp_path / "s3" / bucket / prefix
        assert (stored / "index.json").exists() and (stored / "outcomes").is_dir(), run.stdout[-2000:]
        os.environ.update(ESPER_S3_ENDPOINT=s3.endpoint, AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET)
        try:
            with Urza(config["ESPER_URZA_URL"]) as store:
                assert store.runs() and store.verify()["bad"] == []
        finally:
            for k in ("ESPER_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                os.environ.pop(k, None)
    finally:
        nats.kill()
        nats.wait(timeout=10)
        s3.kill()
