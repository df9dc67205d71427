"""The deployment files, checked statically: compose, Dockerfiles, the Dagster instance and
workspace, the Helm values, Prometheus and Grafana. No Docker, no network.

Each container's environment is put through `Settings` the way the container would see it
(the Dockerfile's ENV, then compose's `environment` with `${VAR...}` resolved against dummy
secrets), so a service name, a port or a profile that drifts apart fails here.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import json
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from dagster_platform.settings import REPO_ROOT, Settings

DOCKER = REPO_ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_GPU = DOCKER / "compose.gpu.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DAGSTER_YAML = DOCKER / "dagster.yaml"
WORKSPACE = DOCKER / "workspace.yaml"
VALUES = DOCKER / "k8s" / "values.yaml"
PROMETHEUS = DOCKER / "prometheus" / "prometheus.yml"
GRAFANA = DOCKER / "grafana"
DOCKERFILES = {
    "docker/Dockerfile": DOCKER / "Dockerfile",
    "docker/Dockerfile.gpu": DOCKER / "Dockerfile.gpu",
}
DEPLOYMENT_DOC = REPO_ROOT / "docs" / "deployment.md"

# compose file sets as deployed: (name, files, profiles passed with --profile)
VARIANTS = [
    ("cpu", (COMPOSE,), ()),
    ("cpu+demo", (COMPOSE,), ("demo",)),
    ("gpu", (COMPOSE, COMPOSE_GPU), ()),
    ("gpu+demo", (COMPOSE, COMPOSE_GPU), ("demo",)),
]
VARIANT_IDS = [v[0] for v in VARIANTS]

# what each platform service talks to (beyond what it resolves): it must start after them
USES = {
    "dagster-code": {"postgres", "kafka", "kafka-topics", "chroma", "mlflow"},
    "dagster-webserver": {"postgres", "dagster-code"},
    "dagster-daemon": {"postgres", "dagster-code"},
    "api": {"kafka", "kafka-topics", "chroma", "mlflow"},
    "simulator": {"kafka", "kafka-topics"},
    "kafka-topics": {"kafka"},
    "mlflow": {"postgres"},
}


# --- compose: loading, interpolation, merging ----------------------------------------------

_REFERENCE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_]\w*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.DOTALL)


@dataclass(frozen=True)
class Reference:
    name: str
    op: str | None  # None, "-", ":-", "?", ":?", "+", ":+"
    arg: str

    @property
    def required(self) -> bool:
        return self.op in ("?", ":?")

    @property
    def has_default(self) -> bool:
        return self.op in ("-", ":-")


class MissingVariable(KeyError):
    pass


def references(text: str) -> Iterator[Reference]:
    for match in _REFERENCE.finditer(text):
        if match["escaped"]:
            continue
        if match["plain"]:
            yield Reference(match["plain"], None, "")
            continue
        braced = _BRACED.fullmatch(match["braced"])
        assert braced, f"malformed interpolation ${{{match['braced']}}} in {text!r}"
        yield Reference(braced["name"], braced["op"], braced["arg"] or "")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, ${VAR+alt}."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["plain"]:
            return env.get(match["plain"], "")
        braced = _BRACED.fullmatch(match["braced"])
        assert braced, f"malformed interpolation in {text!r}"
        name, op, arg = braced["name"], braced["op"], braced["arg"] or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op == ":?":
            if not value:
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op == "?":
            if value is None:
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op == ":+":
            return arg if value else ""
        if op == "+":
            return arg if value is not None else ""
        return value or ""

    return _REFERENCE.sub(replace, text)


def _walk_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from _walk_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_strings(value)


def _interpolated(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, Mapping):
        return {key: _interpolated(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolated(value, env) for value in node]
    return node


def _merge(base: Any, override: Any) -> Any:
    """Compose's override merge, for what these files use: mappings merge key by key,
    anything else is replaced."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return override


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def raw_compose(files: tuple[Path, ...]) -> dict[str, Any]:
    model: dict[str, Any] = {}
    for path in files:
        model = _merge(model, _load_yaml(path))
    return model


def example_env() -> dict[str, str]:
    """docker/.env.example as `docker compose --env-file` would read it after the operator
    filled in every empty secret with a dummy value."""
    env = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        env[name.strip()] = value.strip() or f"dummy-{name.strip().lower()}-0123456789abcdef"
    return env


def compose(files: tuple[Path, ...]) -> dict[str, Any]:
    return _interpolated(raw_compose(files), example_env())


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def active(service: Mapping[str, Any], profiles: tuple[str, ...]) -> bool:
    wanted = service.get("profiles") or []
    return not wanted or bool(set(wanted) & set(profiles))


def active_with(target: Mapping[str, Any], source: Mapping[str, Any]) -> bool:
    """`target` runs whenever `source` does."""
    target_profiles = set(target.get("profiles") or [])
    source_profiles = set(source.get("profiles") or [])
    return not target_profiles or (bool(source_profiles) and source_profiles <= target_profiles)


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def transitive_dependencies(services: Mapping[str, Any], name: str) -> set[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        for dep in depends_on(services[todo.pop()]):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def dockerfile_of(service: Mapping[str, Any]) -> str | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        build = {"context": build}
    context = (DOCKER / build.get("context", ".")).resolve()
    assert context == REPO_ROOT, f"build context {context} is not the repository root"
    return build.get("dockerfile", "Dockerfile")


def platform_services(model: Mapping[str, Any]) -> dict[str, Any]:
    return {n: s for n, s in model["services"].items() if dockerfile_of(s) is not None}


def exposed_ports(service: Mapping[str, Any]) -> set[int]:
    return {int(str(port).split("/")[0]) for port in service.get("expose") or []}


def volume_mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """Target path -> source (named volume or bind path) of the short volume syntax."""
    mounts = {}
    for spec in service.get("volumes") or []:
        source, target = spec.split(":")[:2]
        mounts[target] = source
    return mounts


# --- Dockerfiles ----------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        lines.append(current)
        current = ""
    instructions = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions(path):
        if keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def dockerfile_args(path: Path) -> dict[str, str]:
    return dict(
        rest.partition("=")[::2]
        for keyword, rest in dockerfile_instructions(path)
        if keyword == "ARG"
    )


def dockerignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignore_match(candidate: str, pattern: str) -> bool:
    if pattern.startswith("**/"):
        parts = candidate.split("/")
        rest = pattern.removeprefix("**/")
        return any(fnmatch.fnmatchcase("/".join(parts[i:]), rest) for i in range(len(parts)))
    return fnmatch.fnmatchcase(candidate, pattern)


def dockerignored(relative: str) -> bool:
    """Whether `relative` (or a folder above it) is left out of the build context; the last
    matching pattern decides, `!` re-includes."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in dockerignore_patterns():
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(_ignore_match(candidate, pattern) for candidate in candidates):
            ignored = not negate
    return ignored


# --- CLIs -----------------------------------------------------------------------------------


def cli(executable: str) -> Any:
    """The click command behind a console script this project installs, or None."""
    if executable == "dagster-platform":
        import typer.main

        from dagster_platform.cli import app

        return typer.main.get_command(app)
    if executable == "dagster":
        from dagster._cli import create_dagster_cli

        return create_dagster_cli()
    if executable == "dagster-webserver":
        from dagster_webserver.cli import cli as webserver_cli

        return webserver_cli
    if executable == "dagster-daemon":
        from dagster._daemon.cli import create_dagster_daemon_cli

        return create_dagster_daemon_cli()
    if executable == "mlflow":
        from mlflow.cli import cli as mlflow_cli

        return mlflow_cli
    return None


def _is_group(command: Any) -> bool:
    # typer ships its own copy of click, so duck typing rather than isinstance
    return isinstance(getattr(command, "commands", None), Mapping)


def check_command(argv: list[str]) -> None:
    """Every subcommand and option of `argv` exists in the installed CLI."""
    command = cli(argv[0])
    assert command is not None, f"{argv[0]} is not a console script of this project"
    assert argv[0] in {ep.name for ep in importlib.metadata.entry_points(group="console_scripts")}
    args = list(argv[1:])
    path = [argv[0]]
    while _is_group(command) and args and not args[0].startswith("-"):
        name = args.pop(0)
        sub = command.commands.get(name)
        assert sub is not None, (
            f"`{' '.join(path)}` has no subcommand {name!r}: {sorted(command.commands)}"
        )
        command, path = sub, [*path, name]
    assert not _is_group(command), f"`{' '.join(path)}` needs a subcommand"
    options = {o: p for p in command.params for o in (*p.opts, *p.secondary_opts)}
    takes_arguments = any(p.param_type_name == "argument" for p in command.params)
    expects_value = False
    for arg in args:
        if arg.startswith("-") and not arg.lstrip("-").replace(".", "").isdigit():
            name = arg.split("=", 1)[0]
            assert name in options, f"`{' '.join(path)}` has no option {name}: {sorted(options)}"
            param = options[name]
            expects_value = "=" not in arg and not (param.is_flag or param.count)
        elif expects_value:
            expects_value = False
        else:
            assert takes_arguments, f"`{' '.join(path)}` takes no argument {arg!r}"


def service_commands(service: Mapping[str, Any]) -> Iterator[list[str]]:
    """The exec-form command lines a service runs: its command and its healthcheck."""
    entrypoint = service.get("entrypoint")
    command = service.get("command")
    if command is not None and not entrypoint:
        yield command if isinstance(command, list) else shlex.split(command)
    test = (service.get("healthcheck") or {}).get("test")
    if isinstance(test, list) and test[0] == "CMD":
        yield test[1:]


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker_instance() -> dict[str, Any]:
    return _load_yaml(DAGSTER_YAML)


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return _load_yaml(VALUES)


@pytest.fixture(scope="module")
def user_deployment(values: dict[str, Any]) -> dict[str, Any]:
    deployments = values["dagster-user-deployments"]["deployments"]
    assert len(deployments) == 1
    return deployments[0]


@pytest.fixture(scope="module")
def k8s_launcher(values: dict[str, Any]) -> dict[str, Any]:
    return values["runLauncher"]["config"]["k8sRunLauncher"]


def settings_for(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> Settings:
    """Settings as a process with exactly the platform variables of `env` reads them."""
    for name in [*Settings.model_fields, "DAGSTER_PLATFORM_STATE"]:
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def container_env(service: Mapping[str, Any]) -> dict[str, str]:
    return {**dockerfile_env(REPO_ROOT / dockerfile_of(service)), **environment(service)}


# --- tests: the files parse -----------------------------------------------------------------


def test_every_deployment_file_parses() -> None:
    for path in (COMPOSE, COMPOSE_GPU, DAGSTER_YAML, WORKSPACE, VALUES, PROMETHEUS):
        assert isinstance(_load_yaml(path), dict), path
    for path in (GRAFANA / "provisioning").rglob("*.yaml"):
        assert isinstance(_load_yaml(path), dict), path
    dashboards = list((GRAFANA / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        assert json.loads(path.read_text(encoding="utf-8"))["panels"], path
    for name, files, profiles in VARIANTS:
        services = compose(files)["services"]
        assert any(active(s, profiles) for s in services.values()), name


def test_interpolation_helper_follows_compose() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("a$$b ${SET} $SET ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d}", env) == "a$b x x d d "
    assert interpolate("${SET:+alt}${UNSET:+alt}", env) == "alt"
    with pytest.raises(MissingVariable, match="EMPTY: give it"):
        interpolate("${EMPTY:?give it}", env)
    assert [r.name for r in references("$$NOT ${A:?x} $B ${C:-${D}}")][:3] == ["A", "B", "C"]


def test_a_missing_secret_stops_compose() -> None:
    env = example_env()
    env.pop("DAGSTER_POSTGRES_PASSWORD")
    with pytest.raises(MissingVariable, match="DAGSTER_POSTGRES_PASSWORD"):
        _interpolated(raw_compose((COMPOSE,)), env)


# --- tests: images and Dockerfiles ----------------------------------------------------------


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, COMPOSE_GPU)], ids=["cpu", "gpu"])
def test_images_are_built_here_or_pinned(files: tuple[Path, ...]) -> None:
    for name, service in compose(files)["services"].items():
        image = service.get("image")
        assert image, f"{name} names no image"
        repository, _, tag = image.rpartition(":")
        assert repository and tag, f"{name}: image {image!r} has no tag"
        dockerfile = dockerfile_of(service)
        if dockerfile is not None:
            assert dockerfile in DOCKERFILES, (
                f"{name} builds {dockerfile}, not a docker/ Dockerfile"
            )
            assert DOCKERFILES[dockerfile].is_file()
            assert "/" not in repository, f"{name}: local image {image!r} looks like a registry's"
            continue
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: {image!r} is not pinned"


def test_one_image_name_per_dockerfile() -> None:
    images: dict[str, set[str]] = {}
    for service in raw_compose((COMPOSE, COMPOSE_GPU))["services"].values():
        if dockerfile_of(service) is not None:
            images.setdefault(dockerfile_of(service), set()).add(service["image"])
    assert set(images) == set(DOCKERFILES)
    assert all(len(names) == 1 for names in images.values()), images


def test_third_party_versions_match_the_installed_clients() -> None:
    services = compose((COMPOSE, COMPOSE_GPU))["services"]
    assert (
        services["chroma"]["image"] == f"chromadb/chroma:{importlib.metadata.version('chromadb')}"
    )
    # the GPU image's vLLM engine and the vLLM server are one version
    vllm_version = dockerfile_args(DOCKER / "Dockerfile.gpu")["VLLM_VERSION"]
    assert services["vllm"]["image"] == f"vllm/vllm-openai:v{vllm_version}"
    # the CPU image's torch is the one the project is tested with
    torch = importlib.metadata.version("torch").split("+")[0]
    assert dockerfile_args(DOCKER / "Dockerfile")["TORCH_VERSION"] == torch


@pytest.mark.parametrize("dockerfile", sorted(DOCKERFILES))
def test_dockerfile_copies_what_the_context_holds(dockerfile: str) -> None:
    instructions = dockerfile_instructions(DOCKERFILES[dockerfile])
    bases = [rest.split()[0] for keyword, rest in instructions if keyword == "FROM"]
    assert bases
    for base in bases:
        name, _, tag = base.rpartition(":")
        assert name and tag != "latest" and re.search(r"\d", tag), f"base {base} is not pinned"
    copies = [rest for keyword, rest in instructions if keyword in ("COPY", "ADD")]
    assert copies
    for rest in copies:
        parts = [p for p in shlex.split(rest) if not p.startswith("--")]
        assert not rest.startswith("--from"), rest
        for source in parts[:-1]:
            matches = list(REPO_ROOT.glob(source)) if source != "." else [REPO_ROOT]
            assert matches, f"{dockerfile}: COPY source {source} does not exist"
            if source != ".":
                assert not dockerignored(source), f"{dockerfile}: {source} is in .dockerignore"
    # files the image refers to under /app (the copied repository) are in the context
    text = DOCKERFILES[dockerfile].read_text(encoding="utf-8")
    for path in re.findall(r"/app/([\w./-]+)", text):
        assert (REPO_ROOT / path).exists() and not dockerignored(path), path
    for relative in re.findall(r"\b(docker/[\w./-]+)", text):
        assert (REPO_ROOT / relative.rstrip(".")).exists(), relative
    assert "models prepare" in text and "ENTRYPOINT" in text


def test_dockerignore_keeps_secrets_and_state_out() -> None:
    for path in ("docker/.env", ".env", ".venv", ".state/models", ".git", "tests/conftest.py"):
        assert dockerignored(path), path
    for path in (
        "docker/.env.example",
        "docker/entrypoint.sh",
        "data/sample",
        "pyproject.toml",
        "dagster_platform/settings.py",
        "benchmarks",
    ):
        assert not dockerignored(path), path


@pytest.mark.models
def test_images_bake_the_models_where_the_entrypoint_links_them(
    tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    docker_state = settings_for(monkeypatch, {"DAGSTER_PLATFORM_PROFILE": "docker"}).state_dir
    for path in DOCKERFILES.values():
        env = dockerfile_env(path)
        baked = env["DAGSTER_PLATFORM_BAKED_MODELS"]
        text = path.read_text(encoding="utf-8")
        build_state = re.search(
            r"DAGSTER_PLATFORM_STATE=(\S+) dagster-platform models prepare", text
        )
        assert build_state, f"{path.name} does not prepare the models at build time"
        assert Settings(state_dir=build_state[1]).models_dir == Path(baked)
        # the image's state default is the docker profile's, where the volume is mounted
        assert env["DAGSTER_PLATFORM_STATE"] == str(docker_state)
    # the entrypoint makes <state>/models the baked folder and runs the command
    baked, state = tmp_path / "baked", tmp_path / "state"
    baked.mkdir()
    result = subprocess.run(
        ["sh", str(DOCKER / "entrypoint.sh"), "sh", "-c", "echo ran"],
        env={"PATH": "/usr/bin:/bin", "DAGSTER_PLATFORM_STATE": str(state),
             "DAGSTER_PLATFORM_BAKED_MODELS": str(baked)},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert result.stdout.strip() == "ran"
    assert Settings(state_dir=state).models_dir.resolve() == baked.resolve()


# --- tests: services find each other --------------------------------------------------------


def _host_port(value: str, default_port: int | None = None) -> tuple[str, int | None]:
    parts = urlsplit(value if "//" in value else f"//{value}")
    return parts.hostname or "", parts.port or default_port


@pytest.mark.parametrize(("name", "files", "profiles"), VARIANTS, ids=VARIANT_IDS)
def test_platform_settings_resolve_to_compose_services(
    name: str,
    files: tuple[Path, ...],
    profiles: tuple[str, ...],
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = compose(files)["services"]
    platform = {n: s for n, s in platform_services(compose(files)).items() if active(s, profiles)}
    assert {"dagster-code", "dagster-webserver", "dagster-daemon", "api"} <= set(platform)
    assert ("simulator" in platform) == ("demo" in profiles)
    for service_name, service in platform.items():
        env = container_env(service)
        assert env.get("DAGSTER_PLATFORM_PROFILE") == "docker", service_name
        settings = settings_for(monkeypatch, env)
        targets = {
            "kafka": _host_port(settings.bootstrap_servers),
            "chroma": _host_port(settings.chroma_host or ""),
            "mlflow": _host_port(settings.resolved_mlflow_tracking_uri, 80),
        }
        if settings.llm_backend == "vllm-server":
            targets["vllm"] = _host_port(settings.vllm_base_url or "", 80)
        for what, (host, port) in targets.items():
            where = f"{name}: {service_name} resolves {what} to {host}:{port}"
            assert host in services, f"{where}, not a compose service"
            assert active_with(services[host], service), f"{where}, not in the same profile"
            assert port in exposed_ports(services[host]), f"{where}; {host} exposes another port"
        state_mounts = {t for t, s in volume_mounts(service).items() if s == "state"}
        assert state_mounts in (set(), {str(settings.state_dir)}), service_name


@pytest.mark.parametrize(("name", "files", "profiles"), VARIANTS, ids=VARIANT_IDS)
def test_bring_up_order(name: str, files: tuple[Path, ...], profiles: tuple[str, ...]) -> None:
    services = compose(files)["services"]
    gpu = COMPOSE_GPU in files
    for service_name, service in services.items():
        if not active(service, profiles):
            continue
        for dep, condition in depends_on(service).items():
            assert dep in services, f"{service_name} depends on unknown {dep}"
            assert active_with(services[dep], service), f"{service_name} needs {dep} in its profile"
            if condition == "service_healthy":
                assert services[dep].get("healthcheck"), f"{dep} has no healthcheck to wait for"
            elif condition == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{dep} is not a one-shot job"
            else:
                pytest.fail(f"{service_name} waits for {dep} to be merely started")
        assert service_name not in transitive_dependencies(services, service_name), "cycle"
    for service_name, used in USES.items():
        wanted = used | ({"vllm"} if gpu and service_name in ("dagster-code", "api") else set())
        missing = wanted - transitive_dependencies(services, service_name)
        assert not missing, f"{name}: {service_name} may start before {missing}"
    # every long-running platform service restarts; every one-shot does not
    for service_name, service in services.items():
        one_shot = service_name in ("kafka-topics", "vllm-model")
        assert (service.get("restart") == "no") == one_shot, service_name


# services whose command or healthcheck runs a program that is not this project's CLI
THIRD_PARTY_COMMANDS = {
    "postgres", "kafka", "chroma", "prometheus", "grafana", "vllm", "ui-proxy",
    "mlflow", "dagster-webserver", "api",
}  # fmt: skip


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, COMPOSE_GPU)], ids=["cpu", "gpu"])
def test_commands_exist(files: tuple[Path, ...]) -> None:
    checked = 0
    for service_name, service in compose(files)["services"].items():
        for argv in service_commands(service):
            if cli(argv[0]) is not None:
                check_command(argv)
                checked += 1
            else:
                assert service_name in THIRD_PARTY_COMMANDS, f"{service_name} runs {argv[0]}"
    assert checked >= 8
    for dockerfile in DOCKERFILES.values():
        cmd = [rest for keyword, rest in dockerfile_instructions(dockerfile) if keyword == "CMD"]
        check_command(json.loads(cmd[-1]))


def test_command_checker_catches_typos() -> None:
    check_command(["dagster-platform", "serve", "--host", "0.0.0.0", "--port", "8080"])
    with pytest.raises(AssertionError, match="no subcommand 'serv'"):
        check_command(["dagster-platform", "serv"])
    with pytest.raises(AssertionError, match="no option --hots"):
        check_command(["dagster-platform", "serve", "--hots", "0.0.0.0"])
    with pytest.raises(AssertionError, match="no option --grpc"):
        check_command(["dagster", "code-server", "start", "--grpc", "1"])


def test_dagster_containers_share_one_instance_and_workspace(docker_instance: dict) -> None:
    services = compose((COMPOSE,))["services"]
    workspace = _load_yaml(WORKSPACE)["load_from"]
    assert len(workspace) == 1
    server = workspace[0]["grpc_server"]
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    code = services[server["host"]]
    command = code["command"]
    assert command[:3] == ["dagster", "code-server", "start"]
    assert command[command.index("-p") + 1] == str(server["port"])
    assert command[command.index("-m") + 1] == pyproject["tool"]["dagster"]["module_name"]
    assert server["location_name"] == pyproject["tool"]["dagster"]["code_location_name"]
    assert server["port"] in exposed_ports(code)
    # the webserver and daemon read this workspace from the image's copy of the repository
    for name in ("dagster-webserver", "dagster-daemon"):
        argv = services[name]["command"]
        assert argv[argv.index("-w") + 1] == "/app/docker/workspace.yaml", name
    # the instance config's env vars are set wherever the instance is loaded (runs: dagster-code)
    referenced = {v["env"] for v in _walk_env_refs(docker_instance)}
    assert referenced >= {"DAGSTER_POSTGRES_HOST", "DAGSTER_POSTGRES_PASSWORD"}
    for name in ("dagster-code", "dagster-webserver", "dagster-daemon"):
        env = container_env(services[name])
        assert referenced <= set(env), f"{name} lacks {referenced - set(env)}"
        assert env["DAGSTER_POSTGRES_HOST"] in services
        assert int(env["DAGSTER_POSTGRES_PORT"]) in exposed_ports(services["postgres"])
        home = Path(env["DAGSTER_HOME"])
        assert home.is_absolute()
    dockerfile = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    assert 'ln -s /app/docker/dagster.yaml "$DAGSTER_HOME/dagster.yaml"' in dockerfile


def _walk_env_refs(node: Any) -> Iterator[dict]:
    if isinstance(node, Mapping):
        if set(node) == {"env"}:
            yield node
        for value in node.values():
            yield from _walk_env_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_env_refs(value)


def test_docker_instance_config_loads(
    docker_instance: dict, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster._core.instance.config import dagster_instance_config

    for name, value in {
        "DAGSTER_POSTGRES_HOST": "postgres",
        "DAGSTER_POSTGRES_PORT": "5432",
        "DAGSTER_POSTGRES_USER": "dagster",
        "DAGSTER_POSTGRES_PASSWORD": "dummy",
        "DAGSTER_POSTGRES_DB": "dagster",
    }.items():
        monkeypatch.setenv(name, value)
    config, custom_class = dagster_instance_config(str(DOCKER))
    assert custom_class is None
    assert config["run_launcher"]["class"] == "DefaultRunLauncher"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["pools"]["default_limit"] == 1
    state = str(settings_for(monkeypatch, {"DAGSTER_PLATFORM_PROFILE": "docker"}).state_dir)
    for section in ("compute_logs", "local_artifact_storage"):
        assert config[section]["config"]["base_dir"].startswith(state + "/"), section


def test_postgres_init_creates_what_the_clients_use() -> None:
    services = compose((COMPOSE,))["services"]
    postgres = services["postgres"]
    script_target = "/docker-entrypoint-initdb.d/10-init-databases.sh"
    source = volume_mounts(postgres)[script_target]
    script = (DOCKER / source).read_text(encoding="utf-8")
    env = container_env(services["dagster-code"])
    mlflow_uri = next(a.split("=", 1)[1] for a in services["mlflow"]["command"]
                      if a.startswith("--backend-store-uri="))  # fmt: skip
    parts = urlsplit(mlflow_uri)
    assert parts.password is None, "the MLflow backend URI carries a password"
    for user, db in ((env["DAGSTER_POSTGRES_USER"], env["DAGSTER_POSTGRES_DB"]),
                     (parts.username, parts.path.lstrip("/"))):  # fmt: skip
        assert f"CREATE ROLE {user} LOGIN" in script
        assert f"CREATE DATABASE {db} OWNER {user}" in script
    assert parts.hostname == "postgres"
    assert (
        environment(services["mlflow"])["PGPASSWORD"] == example_env()["MLFLOW_POSTGRES_PASSWORD"]
    )
    for variable in re.findall(r"\$\{(\w+):\?", script):
        assert variable in environment(postgres), f"postgres does not pass {variable} to the script"


def test_bind_mounts_exist() -> None:
    for files in ((COMPOSE,), (COMPOSE, COMPOSE_GPU)):
        model = compose(files)
        named = set(model.get("volumes") or {})
        for name, service in model["services"].items():
            for source in volume_mounts(service).values():
                if source.startswith((".", "/")):
                    assert (DOCKER / source).exists(), f"{name}: {source} does not exist"
                else:
                    assert source in named, f"{name}: volume {source} is not declared"


# --- tests: secrets and exposure ------------------------------------------------------------


def test_every_variable_is_documented_or_defaulted() -> None:
    example = ENV_EXAMPLE.read_text(encoding="utf-8")
    set_lines = dict(
        line.split("=", 1) for line in example.splitlines() if re.match(r"^[A-Z_]+=", line)
    )
    documented = set(set_lines) | set(re.findall(r"^# ([A-Z][A-Z0-9_]+)=", example, re.M))
    seen = []
    for path in (COMPOSE, COMPOSE_GPU):
        for text in _walk_strings(_load_yaml(path)):
            for reference in references(text):
                seen.append(reference)
                if reference.required:
                    assert set_lines.get(reference.name) == "", (
                        f"secret {reference.name} is not an empty line of .env.example"
                    )
                else:
                    assert reference.has_default or reference.name in documented, reference
    required = {r.name for r in seen if r.required}
    assert {"POSTGRES_PASSWORD", "DAGSTER_POSTGRES_PASSWORD", "MLFLOW_POSTGRES_PASSWORD",
            "DAGSTER_PLATFORM_API_KEYS", "GF_SECURITY_ADMIN_PASSWORD", "VLLM_API_KEY",
            "DAGSTER_UI_PASSWORD"} <= required  # fmt: skip
    # nothing in the example is a real value for a secret
    assert all(set_lines[name] == "" for name in required)


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, COMPOSE_GPU)], ids=["cpu", "gpu"])
def test_secrets_go_only_where_they_are_used(files: tuple[Path, ...]) -> None:
    raw = raw_compose(files)["services"]
    for name, service in raw.items():
        assert "env_file" not in service, f"{name} gets every variable of the env file"
        for key, value in (service.get("environment") or {}).items():
            for reference in references(str(value)):
                if reference.required and "PASSWORD" in reference.name:
                    assert reference.name in key or key == "PGPASSWORD", (name, key)


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, COMPOSE_GPU)], ids=["cpu", "gpu"])
def test_only_loopback_is_published_and_the_ui_needs_a_login(files: tuple[Path, ...]) -> None:
    services = compose(files)["services"]
    assert not services["dagster-webserver"].get("ports"), "the Dagster UI is published"
    for name, service in services.items():
        for port in service.get("ports") or []:
            host_ip, _, container_port = str(port).split(":")
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond the host by default"
            assert int(container_port) in exposed_ports(service), name
    proxy = services["ui-proxy"]
    assert "dagster-webserver" in depends_on(proxy)
    caddyfile = compose(files)["configs"]["ui-proxy-caddyfile"]["content"]
    assert "basic_auth" in caddyfile
    webserver_port = exposed_ports(services["dagster-webserver"])
    assert f"reverse_proxy dagster-webserver:{webserver_port.pop()}" in caddyfile
    assert "{$DAGSTER_UI_PASSWORD_HASH}" in caddyfile and "hash-password" in proxy["command"][0]


# --- tests: GPU override --------------------------------------------------------------------


def test_gpu_override_serves_adapters_the_platform_trains(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster_platform.finetune.recipe import Recipe

    services = compose((COMPOSE, COMPOSE_GPU))["services"]
    vllm, code = services["vllm"], services["dagster-code"]
    args = vllm["entrypoint"] + vllm["command"]
    assert args[:2] == ["vllm", "serve"]
    flags = dict(a.split("=", 1) if "=" in a else (a, "") for a in args[3:])
    assert "--enable-lora" in flags
    recipe = Recipe.load(REPO_ROOT / "data" / "finetune" / "recipe.yaml")
    assert int(flags["--max-lora-rank"]) >= recipe.lora_r
    assert int(flags["--max-loras"]) >= 2  # champion and challenger at once
    assert environment(vllm)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert environment(vllm)["VLLM_API_KEY"] == environment(code)["VLLM_API_KEY"]
    assert int(flags["--port"]) in exposed_ports(vllm)
    # the adapter paths the platform sends are paths in vLLM's container too
    settings = settings_for(monkeypatch, container_env(code))
    assert volume_mounts(vllm)[str(settings.state_dir)] == "state"
    # vLLM loads the base model folder seeded from the GPU image the code server trains in
    model_dir = args[2]
    seed = services["vllm-model"]
    seeded_volume = volume_mounts(seed)["/models"]
    assert volume_mounts(vllm)["/models"] == seeded_volume
    assert model_dir == "/models/SmolLM2-135M-Instruct"
    assert f"dst={model_dir}" in seed["command"][0]
    assert seed["image"] == code["image"] and dockerfile_of(code) == "docker/Dockerfile.gpu"
    assert "vllm-model" in depends_on(vllm)
    for name in ("vllm", "dagster-code"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"], name
    # the CPU stack answers in process and has no vLLM
    cpu = compose((COMPOSE,))["services"]
    assert "vllm" not in cpu
    assert (
        settings_for(monkeypatch, container_env(cpu["dagster-code"])).llm_backend == "transformers"
    )


# --- tests: metrics -------------------------------------------------------------------------


def test_prometheus_scrapes_the_api() -> None:
    from dagster_platform.api.app import METRICS_PATH

    services = compose((COMPOSE,))["services"]
    jobs = _load_yaml(PROMETHEUS)["scrape_configs"]
    assert jobs
    for job in jobs:
        assert job.get("metrics_path", "/metrics") == METRICS_PATH
        for group in job["static_configs"]:
            for target in group["targets"]:
                host, port = _host_port(target)
                assert host in services, f"scrape target {target} is not a compose service"
                assert port in exposed_ports(services[host]), target
    api = services["api"]["command"]
    assert any(t == f"api:{api[api.index('--port') + 1]}" for j in jobs
               for g in j["static_configs"] for t in g["targets"])  # fmt: skip
    mounts = volume_mounts(services["prometheus"])
    assert (DOCKER / mounts["/etc/prometheus/prometheus.yml"]).resolve() == PROMETHEUS.resolve()


def test_grafana_provisioning_fits_together() -> None:
    services = compose((COMPOSE,))["services"]
    mounts = volume_mounts(services["grafana"])
    datasources = _load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")
    source = datasources["datasources"][0]
    host, port = _host_port(source["url"])
    assert host in services and port in exposed_ports(services[host])
    provider = _load_yaml(GRAFANA / "provisioning" / "dashboards" / "dagster-platform.yaml")
    path = provider["providers"][0]["options"]["path"]
    assert (DOCKER / mounts[path]).resolve() == (GRAFANA / "dashboards").resolve()
    assert (DOCKER / mounts["/etc/grafana/provisioning"]).resolve() == (
        GRAFANA / "provisioning"
    ).resolve()
    # the dashboard queries the provisioned data source and metrics the platform records
    metrics_source = (REPO_ROOT / "dagster_platform" / "lib" / "metrics.py").read_text(
        encoding="utf-8"
    )
    recorded = set(re.findall(r'f"\{PREFIX\}(\w+)"', metrics_source))
    assert recorded
    dashboard_file = GRAFANA / "dashboards" / "dagster-platform.json"
    dashboard = json.loads(dashboard_file.read_text(encoding="utf-8"))
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source["uid"]
        for target in panel["targets"]:
            for metric in re.findall(r"dagster_platform_(\w+)", target["expr"]):
                queried.add(re.sub(r"_(total|bucket|sum|count)$", "", metric))
    assert queried and queried <= recorded, queried - recorded


# --- tests: Helm values -----------------------------------------------------------------------

# Field names of the dagster chart's values schema (helm/dagster/schema in dagster-io/dagster):
# a misspelt key is silently ignored by Helm, so the values may use these only.
CHART_TOP_LEVEL = {
    "global", "nameOverride", "fullnameOverride", "rbacEnabled", "imagePullSecrets",
    "dagsterWebserver", "dagster-user-deployments", "postgresql",
    "generatePostgresqlPasswordSecret", "generateCeleryConfigSecret", "rabbitmq", "redis",
    "flower", "ingress", "computeLogManager", "scheduler", "runLauncher", "pythonLogs",
    "dagsterDaemon", "busybox", "migrate", "telemetry", "serviceAccount", "retention",
    "additionalInstanceConfig", "concurrency", "extraManifests",
}  # fmt: skip
CHART_FIELDS = {
    ("dagster-user-deployments",): {"enabled", "enableSubchart", "imagePullSecrets", "deployments"},
    ("dagster-user-deployments", "deployments"): {
        "name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns",
        "port", "env", "envConfigMaps", "envSecrets", "annotations", "nodeSelector", "affinity",
        "tolerations", "podSecurityContext", "securityContext", "resources", "livenessProbe",
        "readinessProbe", "startupProbe", "labels", "volumeMounts", "volumes", "schedulerName",
        "initContainers", "sidecarContainers", "deploymentStrategy", "service",
    },
    ("runLauncher", "config", "k8sRunLauncher"): {
        "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile",
        "envConfigMaps", "envSecrets", "envVars", "volumeMounts", "volumes", "labels",
        "failPodOnRunFailure", "resources", "schedulerName", "securityContext", "runK8sConfig",
    },
    ("runLauncher", "config", "k8sRunLauncher", "runK8sConfig"): {
        "containerConfig", "podSpecConfig", "podTemplateSpecMetadata", "jobSpecConfig",
        "jobMetadata",
    },
    ("dagsterDaemon",): {
        "enabled", "image", "runCoordinator", "heartbeatTolerance", "env", "envConfigMaps",
        "envSecrets", "deploymentLabels", "labels", "nodeSelector", "affinity", "tolerations",
        "podSecurityContext", "securityContext", "resources", "livenessProbe", "readinessProbe",
        "startupProbe", "annotations", "runMonitoring", "runRetries", "sensors", "schedules",
        "schedulerName", "volumeMounts", "volumes",
    },
    ("dagsterWebserver",): {
        "dbStatementTimeout", "dbPoolRecycle", "logLevel", "schedulerName", "volumeMounts",
        "volumes", "pathPrefix", "replicaCount", "image", "nameOverride", "service", "workspace",
        "env", "envConfigMaps", "envSecrets", "deploymentLabels", "labels", "nodeSelector",
        "affinity", "tolerations", "podSecurityContext", "securityContext", "resources",
        "readinessProbe", "livenessProbe", "startupProbe", "annotations", "enableReadOnly",
    },
    ("postgresql",): {
        "image", "enabled", "postgresqlHost", "postgresqlUsername", "postgresqlPassword",
        "postgresqlDatabase", "postgresqlParams", "postgresqlScheme", "service",
    },
    ("concurrency",): {"enabled", "pools", "runs"},
    ("concurrency", "pools"): {"defaultLimit", "granularity", "opGranularityRunBuffer"},
    ("concurrency", "runs"): {"maxConcurrentRuns", "tagConcurrencyLimits"},
    ("ingress",): {"enabled", "apiVersion", "labels", "annotations", "ingressClassName",
                   "dagsterWebserver", "readOnlyDagsterWebserver", "flower"},
}  # fmt: skip


def test_helm_values_use_the_charts_keys(values: dict[str, Any]) -> None:
    assert set(values) <= CHART_TOP_LEVEL, set(values) - CHART_TOP_LEVEL
    for path, fields in CHART_FIELDS.items():
        node: Any = values
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        for item in node if isinstance(node, list) else [node] if node is not None else []:
            assert set(item) <= fields, (path, set(item) - fields)


def test_helm_values_run_the_platform_with_the_k8s_profile(
    values: dict[str, Any],
    user_deployment: dict[str, Any],
    k8s_launcher: dict[str, Any],
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = user_deployment["env"]
    env = env if isinstance(env, Mapping) else {e["name"]: e["value"] for e in env}
    assert env["DAGSTER_PLATFORM_PROFILE"] == "k8s"
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    launcher_env = dict(item.partition("=")[::2] for item in k8s_launcher["envVars"])
    assert launcher_env["DAGSTER_PLATFORM_PROFILE"] == "k8s"
    # the code server and every run pod carry the same secrets and the state volume
    assert user_deployment["envSecrets"] == k8s_launcher["envSecrets"]
    assert user_deployment["envConfigMaps"] == k8s_launcher["envConfigMaps"]
    assert user_deployment["volumes"] == k8s_launcher["volumes"]
    settings = settings_for(monkeypatch, {"DAGSTER_PLATFORM_PROFILE": "k8s"})
    state = str(settings.state_dir)
    assert settings.llm_backend == "vllm-server"
    for mounts in (user_deployment["volumeMounts"], k8s_launcher["volumeMounts"],
                   values["dagsterWebserver"]["volumeMounts"]):  # fmt: skip
        assert [m["mountPath"] for m in mounts] == [state]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in user_deployment["volumes"]}
    assert len(claims) == 1
    doc = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    assert f"name: {claims.pop()}" in doc and "ReadWriteMany" in doc
    assert "ReadWriteMany" in VALUES.read_text(encoding="utf-8")
    # run pods are configured by the launcher alone, as uid 10001 like the images' user
    assert user_deployment["includeConfigInLaunchedRuns"] == {"enabled": False}
    pod = user_deployment["podSecurityContext"]
    container = k8s_launcher["securityContext"]
    assert container["runAsUser"] == pod["runAsUser"] == pod["fsGroup"] == 10001
    assert "useradd --uid 10001" in (DOCKER / "Dockerfile.gpu").read_text(encoding="utf-8")
    # the code server serves this project's code location
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    # the chart runs `dagster api grpc -h 0.0.0.0 -p PORT ARGS...`
    args = user_deployment["dagsterApiGrpcArgs"]
    check_command(
        ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", str(user_deployment["port"]), *args]
    )
    module = args[args.index("-m") + 1]
    assert module == pyproject["tool"]["dagster"]["module_name"]
    assert importlib.util.find_spec(module) is not None
    image = user_deployment["image"]
    assert image["tag"] and image["tag"] != "latest"
    assert image["repository"].endswith("dagster-platform-gpu")


def test_helm_values_keep_the_docker_instance_limits(
    values: dict[str, Any], docker_instance: dict[str, Any]
) -> None:
    docker = docker_instance["concurrency"]
    helm = values["concurrency"]
    assert helm["enabled"] is True
    assert helm["pools"]["defaultLimit"] == docker["pools"]["default_limit"]
    assert helm["runs"]["maxConcurrentRuns"] == docker["runs"]["max_concurrent_runs"]
    assert helm["runs"]["tagConcurrencyLimits"] == docker["runs"]["tag_concurrency_limits"]
    # the chart refuses limits set both here and in the run coordinator's config
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] is True and coordinator["type"] == "QueuedRunCoordinator"
    queued = coordinator["config"]["queuedRunCoordinator"] or {}
    assert not {"maxConcurrentRuns", "tagConcurrencyLimits"} & set(queued)
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    docker_monitoring = docker_instance["run_monitoring"]
    assert monitoring["enabled"] is docker_monitoring["enabled"]
    assert (
        monitoring["freeSlotsAfterRunEndSeconds"]
        == docker_monitoring["free_slots_after_run_end_seconds"]
    )
    # compute logs and artifacts on the shared volume, as in docker/dagster.yaml
    logs = values["computeLogManager"]["config"]["customComputeLogManager"]
    assert logs["class"] == docker_instance["compute_logs"]["class"]
    assert logs["config"] == docker_instance["compute_logs"]["config"]
    artifacts = values["additionalInstanceConfig"]["local_artifact_storage"]
    assert artifacts == docker_instance["local_artifact_storage"]


def test_helm_values_protect_the_ui_and_the_database(values: dict[str, Any]) -> None:
    assert values["dagsterWebserver"]["service"]["type"] == "ClusterIP"
    ingress = values["ingress"]
    assert "nginx.ingress.kubernetes.io/auth-url" in ingress["annotations"]
    assert ingress["dagsterWebserver"]["tls"]["enabled"] is True
    # no password in the values: the chart reads it from a secret made beforehand
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["postgresql"]["postgresqlPassword"] == ""
    assert values["global"]["postgresqlSecretName"]


def test_docs_install_the_chart_of_the_installed_dagster() -> None:
    version = importlib.metadata.version("dagster")
    for path in (DEPLOYMENT_DOC, VALUES):
        text = path.read_text(encoding="utf-8")
        assert "helm repo add dagster https://dagster-io.github.io/helm" in text
        assert re.findall(r"--version (\S+)", text) == [version], path
        assert "-f docker/k8s/values.yaml" in text
