"""What the deployment tests (docker-compose.yml, deploy/k8s) share: the Dockerfile's stages, and the Triton APIs the
gateway calls, which a deployment must leave open when it restricts the others."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"

# Triton 2.51's protocol groups, as --grpc-restricted-protocol and --http-restricted-api name them.
TRITON_PROTOCOLS = frozenset(
    {
        "health",
        "metadata",
        "inference",
        "shared-memory",
        "model-config",
        "model-repository",
        "statistics",
        "trace",
        "logging",
    }
)
# tritonclient's InferenceServerClient methods → the protocol group of the RPC each sends (None: no RPC).
CLIENT_METHOD_PROTOCOLS: dict[str, str | None] = {
    "is_server_live": "health",
    "is_server_ready": "health",
    "is_model_ready": "health",
    "get_server_metadata": "metadata",
    "get_model_metadata": "metadata",
    "infer": "inference",
    "async_infer": "inference",
    "start_stream": "inference",
    "stream_infer": "inference",
    "get_model_config": "model-config",
    "get_model_repository_index": "model-repository",
    "load_model": "model-repository",
    "unload_model": "model-repository",
    "get_inference_statistics": "statistics",
    "get_trace_settings": "trace",
    "update_trace_settings": "trace",
    "get_log_settings": "logging",
    "update_log_settings": "logging",
    "get_system_shared_memory_status": "shared-memory",
    "register_system_shared_memory": "shared-memory",
    "unregister_system_shared_memory": "shared-memory",
    "get_cuda_shared_memory_status": "shared-memory",
    "register_cuda_shared_memory": "shared-memory",
    "unregister_cuda_shared_memory": "shared-memory",
    "close": None,
}


def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, str]:
    """Stage name → its instructions (the text up to the next FROM)."""
    stages: dict[str, str] = {}
    current = None
    for line in path.read_text().splitlines():
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, flags=re.IGNORECASE)
        if match:
            current = match.group(1)
            stages[current] = ""
        elif current is not None:
            stages[current] += line + "\n"
    return stages


def stage_uid(stage: str) -> int:
    """The uid of the user a stage ends with (`USER name`, created there by `useradd --uid N name`)."""
    users = re.findall(r"^USER\s+(\S+)", stage, flags=re.MULTILINE)
    assert users, "the stage sets no USER: it runs as root"
    created = {name: int(uid) for uid, name in re.findall(r"useradd\b[^\n]*--uid (\d+) (\w+)", stage)}
    user = users[-1]
    return int(user) if user.isdigit() else created[user]


def gateway_triton_protocols() -> set[str]:
    """The Triton protocol groups of the calls the gateway makes (gateway/triton/client.py, where every call goes)."""
    source = (REPO_ROOT / "gateway" / "triton" / "client.py").read_text()
    methods = set(re.findall(r"\bclient\.(\w+)\(", source))
    assert "infer" in methods, "no Triton call found in gateway/triton/client.py"
    unknown = methods - set(CLIENT_METHOD_PROTOCOLS)
    assert not unknown, (
        f"gateway/triton/client.py calls {unknown}: add their protocol groups to CLIENT_METHOD_PROTOCOLS"
    )
    return {protocol for method in methods if (protocol := CLIENT_METHOD_PROTOCOLS[method]) is not None}


def restricted_protocols(arguments: list[str], flag: str) -> dict[str, str]:
    """Protocol → `header=key` from every ``--grpc-restricted-protocol`` / ``--http-restricted-api`` argument."""
    restricted: dict[str, str] = {}
    for argument in arguments:
        if not argument.startswith(f"{flag}="):
            continue
        protocols, separator, setting = argument.removeprefix(f"{flag}=").partition(":")
        assert separator and "=" in setting, f"{argument}: not <protocols>:<header>=<key>"
        for protocol in protocols.split(","):
            assert protocol in TRITON_PROTOCOLS, f"{argument}: Triton has no protocol {protocol!r}"
            assert protocol not in restricted, f"{protocol} in two groups: Triton refuses to start"
            restricted[protocol] = setting
    return restricted
